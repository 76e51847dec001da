"""Embeddings of diffusion models: timesteps, 2-D positions, class labels with a null class.

  timestep_frequencies   sinusoidal features of (possibly fractional) timesteps (the DDPM
                         U-Net's and the DiT's, after the Transformer's position encoding).
  TimestepEmbedder       those features through Linear -> SiLU -> Linear (the DiT's t embedder).
  sincos_2d              the fixed 2-D sin-cos position embedding of a grid of patches (MAE, DiT).
  LabelEmbedder          a learned class embedding whose extra row is the null class of
                         classifier-free guidance (Ho & Salimans 2022).
  drop_labels            label dropout: labels replaced by the null class during training.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import layers

FREQUENCY_DIM = 256  # the DiT's sinusoidal features of the timestep before its MLP


def timestep_frequencies(t, dim: int = FREQUENCY_DIM, max_period: float = 10000.0, *, freq_shift: float = 0.0,
                         flip_sin_to_cos: bool = True):
  """Sinusoidal features of (possibly fractional) timesteps: (N,) -> (N, dim), [cos | sin].

  The frequencies are exp(-log(max_period) i / (dim // 2 - freq_shift)), i < dim // 2; without
  flip_sin_to_cos the halves are [sin | cos]; an odd dim gets a last column of zeros. The
  options are those of diffusers' `Timesteps` (the defaults: its Stable Diffusion settings).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))  # (half,)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]  # (N, half)
  halves = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
  if dim % 2:
    halves.append(jnp.zeros_like(args[:, :1]))
  return jnp.concatenate(halves, axis=-1)


class TimestepEmbedder(nn.Module):
  """t -> sinusoidal features -> Linear -> SiLU -> Linear, (N,) -> (N, D), weights N(0, 0.02)."""

  hidden_size: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, t):
    init = nn.initializers.normal(0.02)
    h = layers.Dense(self.hidden_size, name="fc1", kernel_init=init, dtype=self.dtype)(timestep_frequencies(t))
    return layers.Dense(self.hidden_size, name="fc2", kernel_init=init, dtype=self.dtype)(nn.silu(h))


def sincos_2d(embed_dim: int, grid_size: int) -> np.ndarray:
  """The fixed 2-D sin-cos position embedding, (grid_size**2, embed_dim), row-major over the grid.

  Half the channels encode the row, half the column, each as sin and cos of the position
  times frequencies 1 / 10000^(2i / (embed_dim / 2)) (as in MAE and the DiT repository).
  """
  if embed_dim % 4:
    raise ValueError(f"the 2-D sin-cos embedding needs a width divisible by 4, got {embed_dim}")
  omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4))  # (D/4,)
  rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64),
                           indexing="ij")

  def one(pos):
    angles = pos.reshape(-1)[:, None] * omega[None]  # (T, D/4)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (T, D/2)

  # The DiT repository embeds the column coordinate first.
  return np.concatenate([one(cols), one(rows)], axis=1).astype(np.float32)  # (T, D)


class LabelEmbedder(nn.Module):
  """y -> a learned embedding; row `num_classes` is the null class of classifier-free guidance."""

  num_classes: int
  hidden_size: int

  @nn.compact
  def __call__(self, y):
    return nn.Embed(self.num_classes + 1, self.hidden_size, embedding_init=nn.initializers.normal(0.02),
                    name="embedding_table")(y)


def drop_labels(key, y, prob, num_classes: int):
  """Label dropout for classifier-free guidance: each label becomes the null class w.p. `prob`."""
  return jnp.where(jax.random.bernoulli(key, prob, y.shape), num_classes, y)
