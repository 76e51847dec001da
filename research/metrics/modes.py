"""GAN mode coverage on Gaussian mixtures, as PacGAN (Lin et al., 2018) defines it.

A generated sample is *high quality* if it lies within `threshold` (3) standard
deviations of its nearest mode; a mode is *captured* if at least one high-quality
sample has it as nearest mode. VEEGAN (Srivastava et al., 2017) reports the same two
numbers for ring-8 and grid-25:

    coverage = mode_coverage(samples, modes, std)   # pure jnp: vmap over generators
    coverage.modes_captured, coverage.high_quality_fraction
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

# PacGAN: "high quality" means within three standard deviations of the nearest mode.
THRESHOLD_STDS = 3.0


class Coverage(NamedTuple):
  """Mode-coverage statistics of one set of samples.

  Attributes:
    modes_captured: number of modes with at least one high-quality sample (int32 scalar).
    high_quality_fraction: fraction of samples within the threshold of their nearest mode.
    counts: (modes,) number of high-quality samples per mode.
  """

  modes_captured: jax.Array
  high_quality_fraction: jax.Array
  counts: jax.Array


def mode_coverage(samples: jax.Array, modes: jax.Array, std: float,
                  threshold: float = THRESHOLD_STDS) -> Coverage:
  """Mode coverage of `samples` on a mixture with centres `modes` and per-coordinate `std`.

  Args:
    samples: (n, d) generated points.
    modes: (m, d) mixture centres.
    std: the components' (isotropic) standard deviation.
    threshold: a sample is high quality within `threshold * std` (Euclidean) of its
      nearest mode.

  Returns:
    Coverage(modes_captured, high_quality_fraction, counts).
  """
  samples = jnp.asarray(samples, jnp.float32)
  modes = jnp.asarray(modes, jnp.float32)
  sq_dist = jnp.sum(jnp.square(samples[:, None, :] - modes[None, :, :]), -1)  # (n, m)
  nearest = jnp.argmin(sq_dist, -1)  # (n,)
  high = jnp.sqrt(jnp.min(sq_dist, -1)) <= threshold * std  # (n,)
  counts = jnp.zeros(modes.shape[0], jnp.int32).at[nearest].add(high.astype(jnp.int32))  # (m,)
  return Coverage(modes_captured=jnp.sum(counts > 0).astype(jnp.int32),
                  high_quality_fraction=jnp.mean(high.astype(jnp.float32)), counts=counts)
