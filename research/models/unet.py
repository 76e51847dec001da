"""The DDPM U-Net (Ho et al. 2020, appendix B), scaled for small images.

    model = unet.UNet(unet.UNetConfig(channels=(32, 64), num_classes=10))
    eps = model.apply(variables, x, t, y)      # x (N, H, W, C) NHWC, t (N,), y (N,)

Top-down: a sinusoidal timestep embedding through a 2-layer MLP (plus, when conditional, a
class embedding whose extra row `num_classes` is the null class of classifier-free
guidance); an encoder of residual blocks (GroupNorm, SiLU, 3x3 conv, the time embedding
added between the convs, dropout) that halves the resolution between levels; a middle of
two residual blocks around self-attention at the lowest resolution; a decoder that mirrors
the encoder with skip connections; GroupNorm, SiLU and a zero-initialised 3x3 conv out. Levels named
in `attention_levels` also attend after each of their residual blocks, encoder and decoder (the
paper's CIFAR-10 model attends at 16x16: level 1 of four).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import attention as attention_lib
from research.models import embeddings


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Sizes and options of the U-Net.

  Attributes:
    channels: channels per resolution level; each level after the first halves H and W.
    blocks_per_level: residual blocks per level in the encoder (the decoder has one more).
    attention_heads: heads of every self-attention.
    attention_levels: levels (indices into `channels`) whose residual blocks are each followed by
      self-attention, in the encoder and the decoder; the middle attends whatever this holds.
    groups: GroupNorm groups (must divide every channel count).
    dropout: dropout rate inside residual blocks (training only).
    num_classes: 0 for an unconditional model; else a class embedding with a null row.
    out_channels: channels of the output (the image's C, or 2C to learn the variance).
    attention: the kernel of the self-attention, one of research.models.attention.IMPLEMENTATIONS
      ("reference" by default: the numbers of earlier runs; "auto" is the platform's).
    dtype: compute dtype (parameters stay float32).
  """

  channels: tuple[int, ...] = (32, 64)
  blocks_per_level: int = 1
  attention_heads: int = 4
  attention_levels: tuple[int, ...] = ()
  groups: int = 8
  dropout: float = 0.0
  num_classes: int = 0
  out_channels: int = 1
  attention: str = "reference"
  dtype: str = "float32"


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-dropout-conv, + (projected) input."""

  channels: int
  groups: int
  dropout: float
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, emb, train: bool):
    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(nn.silu(nn.GroupNorm(self.groups, dtype=self.dtype)(x)))
    h = h + nn.Dense(self.channels, dtype=self.dtype)(nn.silu(emb))[:, None, None]  # (N, H, W, ch)
    h = nn.silu(nn.GroupNorm(self.groups, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
    if x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1), dtype=self.dtype)(x)
    return x + h


class SelfAttention(nn.Module):
  """Multi-head self-attention over the H x W positions, residual, with a GroupNorm in front.

  The attention is the shared one in its "fused" layout, in this module's own scope: the
  parameters stay GroupNorm_0, DenseGeneral_0 (the (ch, 3, heads, d) query/key/value kernel)
  and DenseGeneral_1 (the zero-initialised output).
  """

  heads: int
  groups: int
  attention: str = "reference"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    n, height, width, ch = x.shape
    h = nn.GroupNorm(self.groups, dtype=self.dtype)(x).reshape(n, height * width, ch)  # (N, HW, ch)
    attn = attention_lib.MultiHeadAttention(num_heads=self.heads, implementation=self.attention, layout="fused",
                                            kernel_init=nn.linear.default_kernel_init,
                                            out_init=nn.initializers.zeros, dtype=self.dtype)
    nn.share_scope(self, attn)
    return x + attn(h).reshape(n, height, width, ch)


class UNet(nn.Module):
  """`apply(variables, x, t, y=None, train=False)` -> (N, H, W, out_channels); dropout needs rngs={'dropout'}."""

  cfg: UNetConfig

  @nn.compact
  def __call__(self, x, t, y=None, train: bool = False):
    cfg = self.cfg
    width = 4 * cfg.channels[0]
    emb = nn.Dense(width, dtype=cfg.dtype)(embeddings.timestep_frequencies(t, cfg.channels[0] * 2))
    emb = nn.Dense(width, dtype=cfg.dtype)(nn.silu(emb))  # (N, 4 * ch0)
    if cfg.num_classes > 0:
      emb = emb + nn.Embed(cfg.num_classes + 1, width, name="class_embedding")(y)
    if any(not 0 <= level < len(cfg.channels) for level in cfg.attention_levels):
      raise ValueError(f"attention_levels {cfg.attention_levels} must be levels of channels {cfg.channels} "
                       f"(0..{len(cfg.channels) - 1})")
    block = lambda ch: ResBlock(ch, cfg.groups, cfg.dropout, cfg.dtype)
    attend = lambda: SelfAttention(cfg.attention_heads, cfg.groups, cfg.attention, cfg.dtype)

    h = nn.Conv(cfg.channels[0], (3, 3), dtype=cfg.dtype)(x.astype(cfg.dtype))
    skips = [h]
    for level, ch in enumerate(cfg.channels):
      for _ in range(cfg.blocks_per_level):
        h = block(ch)(h, emb, train)
        if level in cfg.attention_levels:
          h = attend()(h)
        skips.append(h)
      if level < len(cfg.channels) - 1:
        h = nn.Conv(ch, (3, 3), strides=(2, 2), dtype=cfg.dtype)(h)  # (N, H/2, W/2, ch)
        skips.append(h)
    h = block(cfg.channels[-1])(h, emb, train)
    h = attend()(h)
    h = block(cfg.channels[-1])(h, emb, train)
    for level, ch in reversed(list(enumerate(cfg.channels))):
      for _ in range(cfg.blocks_per_level + 1):
        h = block(ch)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
        if level in cfg.attention_levels:
          h = attend()(h)
      if level > 0:
        n, height, width_, c = h.shape
        h = jax.image.resize(h, (n, 2 * height, 2 * width_, c), "nearest")
        h = nn.Conv(ch, (3, 3), dtype=cfg.dtype)(h)
    h = nn.silu(nn.GroupNorm(cfg.groups, dtype=cfg.dtype)(h))
    return nn.Conv(cfg.out_channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=cfg.dtype)(h).astype(
        jnp.float32)
