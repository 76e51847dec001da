"""Importance-sampled test negative log-likelihood (Burda et al. 2016) and bits per dimension.

    nll = test_nll_nats(log_weights_fn, params, test_images, key, k=5000)

For each test image x (binarised once, dynamically: pixel ~ Bernoulli(intensity)), k
latents z_i ~ q(z|x) give importance weights w_i = p(x, z_i) / q(z_i|x) and

    -log p(x) ~= -log (1/k) sum_i w_i = -L_k(x),

an upper bound on -log p(x) in expectation that tightens as k grows. The estimate is
computed in chunks of images and of samples (merged with logaddexp, so chunking changes
only which random numbers are drawn, not the estimator), under one jit.
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Upper bound on image_chunk * sample_chunk: the rows one call of log_weights_fn sees.
MAX_ROWS_PER_CALL = 32_768


def to_unit_interval(images):
  """uint8 images in 0..255 -> float32 in [0, 1]; float images are returned as float32 unchanged."""
  if images.dtype == jnp.uint8 or images.dtype == np.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def binarize(key, x):
  """Dynamic binarisation: each pixel is 1 with probability its intensity x in [0, 1]."""
  return jax.random.bernoulli(key, x).astype(jnp.float32)


def bits_per_dim(nll_nats: float, num_dims: int) -> float:
  """Converts a per-example NLL in nats to bits per dimension."""
  return float(nll_nats) / (num_dims * math.log(2.0))


def _largest_divisor_at_most(n: int, bound: int) -> int:
  return max(d for d in range(1, min(n, max(bound, 1)) + 1) if n % d == 0)


@functools.partial(jax.jit, static_argnames=("log_weights_fn", "k", "image_chunk", "sample_chunk"))
def _per_image_nll(log_weights_fn, params, images, key, k: int, image_chunk: int, sample_chunk: int):
  k_binarize, k_samples = jax.random.split(key)
  x = binarize(k_binarize, to_unit_interval(images))  # (N, H, W, C)
  n = x.shape[0]
  num_chunks = -(-n // image_chunk)
  pad = num_chunks * image_chunk - n
  x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
  chunks = x.reshape((num_chunks, image_chunk) + x.shape[1:])  # (chunks, image_chunk, H, W, C)

  def one_chunk(args):
    x_chunk, chunk_key = args

    def add_samples(log_sum, sample_key):
      log_w = log_weights_fn(params, x_chunk, sample_key, sample_chunk)  # (sample_chunk, image_chunk)
      return jnp.logaddexp(log_sum, jax.nn.logsumexp(log_w, axis=0)), None

    start = jnp.full((image_chunk,), -jnp.inf, jnp.float32)
    log_sum, _ = jax.lax.scan(add_samples, start, jax.random.split(chunk_key, k // sample_chunk))
    return math.log(k) - log_sum  # (image_chunk,) = -log mean_i w_i

  nll = jax.lax.map(one_chunk, (chunks, jax.random.split(k_samples, num_chunks)))  # (chunks, image_chunk)
  return nll.reshape(-1)[:n]


def per_image_nll(log_weights_fn: Callable, params, images, key: jax.Array, k: int,
                  image_chunk: int = 100) -> jax.Array:
  """Importance-sampled NLL of each image, in nats.

  Args:
    log_weights_fn: `log_weights_fn(params, x, key, k) -> (k, batch)` log importance
      weights log p(x, z_i) - log q(z_i|x) of binary images x (batch, H, W, C); it must be
      hashable and stable (the same function object across calls reuses the compilation).
    params: the model's parameters.
    images: uint8 (N, H, W, C) in 0..255, or floats in [0, 1]; binarised inside.
    key: drives the binarisation and the samples.
    k: importance samples per image.
    image_chunk: images per chunk; the samples per call are chosen so that
      image_chunk * sample_chunk <= MAX_ROWS_PER_CALL (sample_chunk divides k).

  Returns:
    (N,) NLL estimates -L_k(x) in nats.
  """
  if k <= 0:
    raise ValueError(f"k must be > 0, got {k}")
  image_chunk = max(1, min(image_chunk, len(images)))
  sample_chunk = _largest_divisor_at_most(k, MAX_ROWS_PER_CALL // image_chunk)
  return _per_image_nll(log_weights_fn, params, jnp.asarray(images), key, k=k, image_chunk=image_chunk,
                        sample_chunk=sample_chunk)


def test_nll_nats(log_weights_fn: Callable, params, images, key: jax.Array, k: int, image_chunk: int = 100) -> float:
  """Mean importance-sampled test NLL in nats (Burda et al.'s evaluation with k samples).

  Args:
    log_weights_fn: `log_weights_fn(params, x, key, k) -> (k, batch)` log importance weights.
    params: the model's parameters.
    images: uint8 (N, H, W, C) in 0..255 (or floats in [0, 1]), dynamically binarised.
    key: drives the binarisation and the samples.
    k: importance samples per image (report it beside the number).
    image_chunk: images per chunk (bounds memory together with MAX_ROWS_PER_CALL).

  Returns:
    The mean over images of -L_k(x), in nats.
  """
  return float(jnp.mean(per_image_nll(log_weights_fn, params, images, key, k, image_chunk)))
