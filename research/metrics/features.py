"""Feature spaces: the networks sample metrics are measured in (research/metrics/fid.py).

    space = FeatureSpace("digits_mlp_v1", DigitsNet().apply, params, (8, 8, 1), num_classes=10)
    feats = space.features(images)      # (N, F): what FID, KID and precision/recall compare
    labels = space.predict(images)      # (N,) int: what class shares count (classifiers only)

A dataset brings its own feature network: any function `apply(params, images) -> (logits,
features)` of float32 images in [0, 1], trained however it is (the digits classifier is a
model of research/models/ trained by its task and cached, research/tasks/classifier.py).
A space's `name` says which network it is: scores measured in different spaces, or with
different versions of one network, are not comparable, and research.metrics.fid refuses to
compare samples with a reference seen through another space.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Features are computed in chunks of this many images, padded to it: one compiled program for any N.
CHUNK = 1024


class FeatureSpace:
  """A feature network that scores images: features for FID and precision/recall, predictions for class shares.

  Attributes:
    name: the network and its version; references and samples are compared only within one space.
    params: the network's parameters.
    image_shape: (H, W, C) of the images it reads.
    num_classes: classes of its logits; 0 for a network without a class head (no class shares).
    num_features: F, the width of its features.
    info: what is known of it, e.g. how it was trained and its test accuracy.
  """

  def __init__(self, name: str, apply: Callable, params, image_shape, num_classes: int = 0, info: dict | None = None):
    """Wraps a network.

    Args:
      name: see the attributes.
      apply: `apply(params, images) -> (logits (B, num_classes) or None, features (B, F))` of
        (B, H, W, C) float32 images in [0, 1]; compiled once here, for chunks of CHUNK images.
      params: its parameters.
      image_shape: (H, W, C) of the images it reads.
      num_classes: see the attributes.
      info: see the attributes.
    """
    self.name = name
    self.params = params
    self.image_shape = tuple(int(d) for d in image_shape)
    self.num_classes = int(num_classes)
    self.info = dict(info or {})
    self._apply = jax.jit(apply)
    _, feats = jax.eval_shape(self._apply, params, jax.ShapeDtypeStruct((CHUNK, *self.image_shape), jnp.float32))
    self.num_features = int(feats.shape[-1])

  def to_unit_images(self, images) -> jax.Array:
    """Checks the shape and scales images to float32 in [0, 1].

    Args:
      images: (N, H, W, C) uint8 in 0..255, or float in [0, 1]; float values outside [0, 1]
        are clipped, as saving them as an image would.

    Returns:
      (N, H, W, C) float32 in [0, 1].

    Raises:
      ValueError: for images of another shape than the network reads.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != self.image_shape:
      shape = ", ".join(map(str, self.image_shape))
      raise ValueError(f"the {self.name} feature network reads images of shape (N, {shape}), got {images.shape}")
    if images.dtype == np.uint8:
      return jnp.asarray(images, jnp.float32) / 255.0
    return jnp.clip(jnp.asarray(images, jnp.float32), 0.0, 1.0)

  def outputs(self, images) -> tuple[np.ndarray | None, np.ndarray]:
    """(logits (N, num_classes) or None without a class head, features (N, F)) of images, in one pass."""
    x = self.to_unit_images(images)
    n = x.shape[0]
    logits, feats = [], []
    for start in range(0, n, CHUNK):
      chunk = x[start:start + CHUNK]
      rows = chunk.shape[0]
      chunk = jnp.pad(chunk, ((0, CHUNK - rows), (0, 0), (0, 0), (0, 0)))  # (CHUNK, H, W, C)
      chunk_logits, chunk_feats = self._apply(self.params, chunk)
      if chunk_logits is not None:
        logits.append(np.asarray(chunk_logits[:rows]))
      feats.append(np.asarray(chunk_feats[:rows]))
    feats = np.concatenate(feats) if feats else np.zeros((0, self.num_features), np.float32)
    if not self.num_classes:
      return None, feats
    return (np.concatenate(logits) if logits else np.zeros((0, self.num_classes), np.float32)), feats

  def features(self, images) -> np.ndarray:
    """The network's features of images.

    Args:
      images: (N, H, W, C) uint8 in 0..255, or float in [0, 1].

    Returns:
      (N, F) float32.
    """
    return self.outputs(images)[1]

  def logits(self, images) -> np.ndarray:
    """The class logits of images, (N, num_classes) float32.

    Raises:
      ValueError: for a network without a class head.
    """
    if not self.num_classes:
      raise ValueError(f"the {self.name} feature network has no class head")
    return self.outputs(images)[0]

  def predict(self, images) -> np.ndarray:
    """The most likely class of each image, (N,) int32 (see `logits`)."""
    return np.argmax(self.logits(images), -1).astype(np.int32)
