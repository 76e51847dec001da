"""The digits feature networks: an MLP classifier and a convolutional one, whose features are two sample-metric spaces.

    model = DigitsNet()                      # or DigitsConvNet()
    logits, feats = model.apply(params, to_unit_images(batch["image"]))   # (B, 10), (B, features)
    loss = cross_entropy(logits, batch["label"])

The networks the digits samples of every generative family are scored with (FID, KID,
precision and recall on `feats`, class shares and confidence on `logits`; research/metrics/).
Two of different kinds, because an MLP's features average pixel noise away: Gaussian noise of
σ = 0.1 on real digits raises the MLP's FID by a fifth and the convolutional net's by more
than half. Their task trains them on the digits training split (research/tasks/classifier.py),
which caches the trained parameters.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

FEATURES = 64  # width of the penultimate layer: the feature space FID and precision/recall live in
HIDDEN = 256  # width of the first hidden layer
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


class DigitsNet(nn.Module):
  """Two hidden dense layers, the second one the features, before the class logits.

  An MLP rather than a CNN: on 8x8 images it is as accurate (about 98% on the test split)
  and trains several times faster on a CPU.
  """

  features: int = FEATURES

  @nn.compact
  def __call__(self, images):
    """Maps (batch, 8, 8, 1) images in [0, 1] to (logits (batch, 10), features (batch, features))."""
    x = images.reshape(images.shape[0], -1)  # (batch, 64)
    x = nn.relu(nn.Dense(HIDDEN)(x))  # (batch, HIDDEN)
    feats = nn.relu(nn.Dense(self.features)(x))  # (batch, features)
    return nn.Dense(NUM_CLASSES)(feats), feats


CONV_FEATURES = 64  # width of the convolutional net's penultimate layer


class DigitsConvNet(nn.Module):
  """Three 3x3 convolutions (16 channels at 8x8, 32 at 4x4, 64 at 2x2; strided) and a dense feature layer.

  A classifier of another kind than DigitsNet: its first filters read 3x3 neighbourhoods of
  pixels, so grey speckle on a black background moves its features where the MLP's average it
  away (research/tasks/classifier.py measures both on known cases). About 0.17M multiply-adds
  per image: it trains in a minute on a CPU.
  """

  features: int = CONV_FEATURES

  @nn.compact
  def __call__(self, images):
    """Maps (batch, 8, 8, 1) images in [0, 1] to (logits (batch, 10), features (batch, features))."""
    x = images * 2.0 - 1.0
    x = nn.relu(nn.Conv(16, (3, 3))(x))  # (batch, 8, 8, 16)
    x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))  # (batch, 4, 4, 32)
    x = nn.relu(nn.Conv(64, (3, 3), strides=2)(x))  # (batch, 2, 2, 64)
    feats = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))  # (batch, features)
    return nn.Dense(NUM_CLASSES)(feats), feats


def to_unit_images(images: jax.Array) -> jax.Array:
  """uint8 batches inside a compiled program -> float32 in [0, 1] (no host-side checks)."""
  return images.astype(jnp.float32) / 255.0


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy (nats) of (batch, classes) logits against (batch,) integer labels."""
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None].astype(jnp.int32), 1))
