"""The feature networks of sample metrics: the digits' MLP and convolutional classifiers, and the shapes reader.

    model = DigitsNet()                      # or DigitsConvNet()
    logits, feats = model.apply(params, to_unit_images(batch["image"]))   # (B, 10), (B, features)
    loss = cross_entropy(logits, batch["label"])

The networks the digits samples of every generative family are scored with (FID, KID,
precision and recall on `feats`, class shares and confidence on `logits`; research/metrics/).
Two of different kinds, because an MLP's features average pixel noise away: Gaussian noise of
σ = 0.1 on real digits raises the MLP's FID by a fifth and the convolutional net's by more
than half. Their task trains them on the digits training split (research/tasks/classifier.py),
which caches the trained parameters.

    reader = ShapesReader(heads=(("colour", 7), ("shape", 3), ("size", 2), ("position", 9)))
    logits, feats = reader.apply(params, images)   # {attribute: (B, values)}, (B, READER_FEATURES)

The shapes reader reads back the four attributes a shapes caption names, one head each: what a
text-to-image run's prompt accuracy counts. Its features are the shapes' sample-metric space
(research/tasks/shapes_reader.py trains and caches it).
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


READER_FEATURES = 64  # width of the shapes reader's penultimate layer
READER_IMAGE_SHAPE = (32, 32, 3)


class ShapesReader(nn.Module):
  """Four 3x3 convolutions (8 channels at 32x32, then strided: 16 at 16x16, 32 at 8x8, 64 at 4x4), a dense feature
  layer and one linear head per attribute.

  The shapes are drawn in pure colours, so the maximum over the colour channels is the shape's
  coverage whatever its colour: the network reads it as a fourth channel, which lets the shape
  heads generalise to (colour, shape) pairs never seen together in training. The dense layer
  reads the 4x4 map, which keeps where the shape is (the 3x3 grid of positions), and the map's
  maximum and mean over positions, the same wherever the shape is: the mean carries the lit
  area, which alone tells the six (shape, size) pairs apart (a small triangle covers 32 px, a
  circle 50, a square 64; a large one four times that). About 1.2M multiply-adds per image.

  Attributes:
    heads: (attribute, number of values) of each head, in the order of the logits' dict.
    features: the penultimate width.
  """

  heads: tuple[tuple[str, int], ...]
  features: int = READER_FEATURES

  @nn.compact
  def __call__(self, images):
    """Maps (batch, 32, 32, 3) images in [0, 1] to ({attribute: logits (batch, values)}, features (batch, features))."""
    x = jnp.concatenate([images, jnp.max(images, axis=-1, keepdims=True)], -1) * 2.0 - 1.0  # (batch, 32, 32, 4)
    pooled = []
    for width in (8, 16, 32, 64):  # (batch, 32, 32, 8), (batch, 16, 16, 16), (batch, 8, 8, 32), (batch, 4, 4, 64)
      x = nn.relu(nn.Conv(width, (3, 3), strides=1 if width == 8 else 2)(x))
      pooled += [jnp.max(x, axis=(1, 2)), jnp.mean(x, axis=(1, 2))]  # (batch, width) each
    flat = jnp.concatenate([x.reshape(x.shape[0], -1)] + pooled, -1)  # (batch, 16 * 64 + 2 * 120)
    feats = nn.relu(nn.Dense(self.features)(flat))  # (batch, features)
    return {name: nn.Dense(values, name=f"head_{name}")(feats) for name, values in self.heads}, feats


def to_unit_images(images: jax.Array) -> jax.Array:
  """uint8 batches inside a compiled program -> float32 in [0, 1] (no host-side checks)."""
  return images.astype(jnp.float32) / 255.0


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy (nats) of (batch, classes) logits against (batch,) integer labels."""
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None].astype(jnp.int32), 1))
