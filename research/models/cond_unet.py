"""A text-conditioned U-Net in the layout of diffusers' `UNet2DConditionModel` (Rombach et al. 2022).

    model, params = cond_unet.load_hf("stable-diffusion-v1-5/unet")   # or CondUNet(CondUNetConfig(...))
    eps = model.apply({"params": params}, x, t, context)   # x (B, H, W, C) NHWC, t (B,), context (B, L, D)
    cond_unet.save_hf(model, params, "out/unet")            # diffusers' from_pretrained loads it

The latent-diffusion denoiser, top-down as diffusers builds it:
  (1) time: sinusoidal features of t (diffusers' `Timesteps`: block_out_channels[0] features,
      flip_sin_to_cos, freq_shift) through Linear -> SiLU -> Linear (`TimestepEmbedding`);
  (2) conv_in, then one down block per level: `DownBlock2D` (ResNet blocks) or
      `CrossAttnDownBlock2D` (each ResNet block followed by a spatial transformer), and a
      stride-2 conv between levels; every block output is kept as a skip;
  (3) the mid block `UNetMidBlock2DCrossAttn`: ResNet, transformer, ResNet;
  (4) one up block per level (`UpBlock2D`, `CrossAttnUpBlock2D`): layers_per_block + 1 ResNet
      blocks, each on the concatenation of the running features and a skip, nearest-neighbour
      x2 upsampling and a conv between levels;
  (5) conv_norm_out (GroupNorm), SiLU, conv_out.
ResNet block (`ResnetBlock2D`): GroupNorm, SiLU, 3x3 conv, + a projection of SiLU(time embedding),
GroupNorm, SiLU, dropout, 3x3 conv, + the (1x1-projected) input. Spatial transformer
(`Transformer2DModel`): GroupNorm, proj_in (a 1x1 conv, or a linear map with
use_linear_projection), transformer blocks over the H x W tokens, proj_out, + the input.
Transformer block (`BasicTransformerBlock`): LayerNorm -> self-attention, LayerNorm ->
cross-attention to the context, LayerNorm -> GEGLU feed-forward (x4), each residual; the query,
key and value projections have no biases. Attention is research/models/attention.py's.

A fresh model zero-initialises what the original latent-diffusion code does (each ResNet
block's second conv, each transformer's proj_out and conv_out), so it starts as a function
that outputs 0; loaded weights replace all of it.

With the samplers of research/models/diffusion.py, whose denoiser is `denoise_fn(x_t, t)`, close
over the parameters and the contexts; classifier-free guidance takes the contexts as its labels
and an empty caption's context, (1, L, D), as the null label, broadcast over the batch:

    cond_fn = lambda x_t, t, c: model.apply({"params": params}, x_t, t, c)
    denoise_fn = diffusion.classifier_free_guidance(cond_fn, context, empty_context, scale)
    latents = diffusion.sample_ddim(schedule, denoise_fn, key, (B, H, W, C), taus)

Config fields carry diffusers' names and defaults, except `num_attention_heads`, which is
diffusers' `attention_head_dim` (the number of heads there too, a naming slip diffusers keeps
for old checkpoints). The fields Stable Diffusion 1.x and 2.x U-Nets set are supported; a
config that sets another diffusers option away from its default is refused, naming the field.
Weights are read in diffusers' layout (a pipeline's `unet/` folder), not the original
single-file latent-diffusion checkpoints.
"""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import attention as attention_lib
from research.models import embeddings
from research.models import hf
from research.models import layers

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)
TRANSFORMER_GROUPNORM_EPS = 1e-6  # Transformer2DModel's GroupNorm, whatever the U-Net's norm_eps
TRANSFORMER_LAYERNORM_EPS = 1e-5  # BasicTransformerBlock's LayerNorms (Transformer2DModel's norm_eps default)
FF_MULT = 4  # the feed-forward's hidden width / the transformer width


@dataclasses.dataclass(frozen=True)
class CondUNetConfig:
  """Sizes and options of the U-Net; defaults are diffusers' (see CONFIGS for Stable Diffusion's).

  Attributes:
    sample_size: the latent height = width it was trained at (recorded, not enforced; None: unknown).
    in_channels, out_channels: C of the input and of the output.
    down_block_types, up_block_types: one of DOWN_BLOCKS / UP_BLOCKS per level.
    mid_block_type: one of MID_BLOCKS (None: no mid block).
    block_out_channels: channels per level; each level after the first halves H and W.
    layers_per_block: ResNet blocks per down level (the up levels have one more), one int or one per level.
    transformer_layers_per_block: transformer blocks per spatial transformer, one int or one per level.
    num_attention_heads: heads per level (diffusers' `attention_head_dim`), one int or one per level;
      each head is channels // heads wide.
    cross_attention_dim: the context's width D.
    norm_num_groups: GroupNorm groups of the ResNet blocks, transformers and conv_norm_out.
    norm_eps: epsilon of the ResNet blocks' GroupNorms and conv_norm_out.
    flip_sin_to_cos, freq_shift: the timestep features (see embeddings.timestep_frequencies).
    time_embedding_dim: width of the time embedding (None: 4 * block_out_channels[0]).
    center_input_sample: map the input x to 2x - 1 first.
    downsample_padding: padding of the stride-2 convs (1; or 0: one row and column on the far side).
    mid_block_scale_factor: the mid block's ResNet outputs are divided by it.
    use_linear_projection: proj_in / proj_out as linear maps (Stable Diffusion 2) instead of 1x1 convs.
    upcast_attention: recorded for diffusers; attention scores are float32 here in any case.
    dropout: dropout rate in the ResNet blocks (training only).
    attention: the kernel, one of research.models.attention.IMPLEMENTATIONS ("auto": the platform's).
    dtype: compute dtype (parameters stay float32).
  """

  sample_size: int | None = None
  in_channels: int = 4
  out_channels: int = 4
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                       "DownBlock2D")
  mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
  up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int | tuple[int, ...] = 2
  transformer_layers_per_block: int | tuple[int, ...] = 1
  num_attention_heads: int | tuple[int, ...] = 8
  cross_attention_dim: int = 1280
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: float = 0
  time_embedding_dim: int | None = None
  center_input_sample: bool = False
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  use_linear_projection: bool = False
  upcast_attention: bool = False
  dropout: float = 0.0
  attention: str = "auto"
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("down_block_types", "up_block_types", "block_out_channels"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    for name in ("layers_per_block", "transformer_layers_per_block", "num_attention_heads"):
      value = getattr(self, name)
      object.__setattr__(self, name, tuple(value) if isinstance(value, list) else value)
    n = len(self.block_out_channels)
    if n == 0 or len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError(f"block_out_channels, down_block_types and up_block_types need one entry per level; got "
                       f"{n}, {len(self.down_block_types)} and {len(self.up_block_types)}")
    for name in ("in_channels", "out_channels", "block_out_channels"):
      values = getattr(self, name)
      if not all(isinstance(v, int) and v > 0 for v in (values if isinstance(values, tuple) else (values,))):
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    if self.time_embedding_dim is not None and (not isinstance(self.time_embedding_dim, int)
                                                or self.time_embedding_dim < 1):
      raise ValueError(f"time_embedding_dim must be a positive integer or None, got {self.time_embedding_dim!r}")
    for name, value, choices in (("down_block_types", self.down_block_types, DOWN_BLOCKS),
                                 ("up_block_types", self.up_block_types, UP_BLOCKS)):
      for block in value:
        if block not in choices:
          raise ValueError(f"unsupported {name} entry {block!r}; choose from: {', '.join(choices)}")
    if self.mid_block_type not in MID_BLOCKS:
      raise ValueError(f"unsupported mid_block_type {self.mid_block_type!r}; choose UNetMidBlock2DCrossAttn or None")
    for name in ("layers_per_block", "transformer_layers_per_block", "num_attention_heads"):
      for value in self.per_level(name):
        if not isinstance(value, int) or value < 1:
          raise ValueError(f"{name} must be positive integers, one or one per level; got {getattr(self, name)!r}")
    if not isinstance(self.cross_attention_dim, int) or self.cross_attention_dim < 1:
      raise ValueError(f"cross_attention_dim must be one positive integer, got {self.cross_attention_dim!r}")
    if not isinstance(self.norm_num_groups, int) or self.norm_num_groups < 1:
      raise ValueError(f"norm_num_groups must be a positive integer, got {self.norm_num_groups!r}")
    for ch in self.block_out_channels:
      if ch % self.norm_num_groups:
        raise ValueError(f"norm_num_groups {self.norm_num_groups} does not divide block_out_channels {ch}")
    for level, (ch, heads) in enumerate(zip(self.block_out_channels, self.per_level("num_attention_heads"))):
      if heads > ch or (self.use_linear_projection and ch % heads):
        raise ValueError(f"{heads} attention heads do not fit level {level}'s {ch} channels")
    if self.downsample_padding not in (0, 1):
      raise ValueError(f"downsample_padding must be 0 or 1, got {self.downsample_padding!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.attention not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"unknown attention {self.attention!r}; choose one of: "
                       f"{', '.join(attention_lib.IMPLEMENTATIONS)}")

  def per_level(self, name: str) -> tuple:
    """An int-or-tuple field as one value per level."""
    value = getattr(self, name)
    if not isinstance(value, tuple):
      return (value,) * len(self.block_out_channels)
    if len(value) != len(self.block_out_channels):
      raise ValueError(f"{name} has {len(value)} entries for {len(self.block_out_channels)} levels")
    return value

  @property
  def time_embed_dim(self) -> int:
    return self.time_embedding_dim or 4 * self.block_out_channels[0]


# Stable Diffusion 1.x (CompVis v1-4, v1-5): a 64x64x4 latent, CLIP ViT-L/14's 768-wide text states.
CONFIGS = {"sd1": CondUNetConfig(sample_size=64, cross_attention_dim=768)}


# ---------------------------------------------------------------------------------------
# Modules.


def _group_norm(groups: int, eps: float, name: str, dtype):
  return nn.GroupNorm(groups, epsilon=eps, use_fast_variance=False, name=name, dtype=dtype)


def _conv(features: int, name: str, dtype, kernel: int = 3, strides: int = 1, padding=1, zero: bool = False):
  init = nn.initializers.zeros if zero else nn.linear.default_kernel_init
  pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=pad, kernel_init=init, name=name,
                 dtype=dtype)


class ResnetBlock2D(nn.Module):
  """GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-dropout-conv, + the (1x1-projected) input."""

  channels: int
  groups: int
  eps: float
  dropout: float = 0.0
  output_scale_factor: float = 1.0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    h = nn.silu(_group_norm(self.groups, self.eps, "norm1", self.dtype)(x))
    h = _conv(self.channels, "conv1", self.dtype)(h)  # (B, H, W, ch)
    h = h + layers.Dense(self.channels, name="time_emb_proj", dtype=self.dtype)(nn.silu(emb))[:, None, None]
    h = nn.silu(_group_norm(self.groups, self.eps, "norm2", self.dtype)(h))
    h = layers.Dropout(self.dropout)(h, train)
    h = _conv(self.channels, "conv2", self.dtype, zero=True)(h)
    if x.shape[-1] != self.channels:
      x = _conv(self.channels, "conv_shortcut", self.dtype, kernel=1, padding=0)(x)
    return (x + h) / self.output_scale_factor


class FeedForward(nn.Module):
  """GEGLU (Shazeer 2020): (x W + b) split into [a | gate], a * GELU(gate) (exact), then a linear map back."""

  width: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    a, gate = jnp.split(layers.Dense(2 * FF_MULT * self.width, name="proj", dtype=self.dtype)(x), 2, axis=-1)
    return layers.Dense(self.width, name="out", dtype=self.dtype)(a * nn.gelu(gate, approximate=False))


class BasicTransformerBlock(nn.Module):
  """Self-attention, cross-attention to the context, GEGLU feed-forward; each pre-LayerNorm and residual."""

  heads: int
  attention: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, context):
    norm = lambda name: nn.LayerNorm(TRANSFORMER_LAYERNORM_EPS, use_fast_variance=False, name=name, dtype=self.dtype)
    attend = lambda name: attention_lib.MultiHeadAttention(
        num_heads=self.heads, implementation=self.attention, qkv_bias=False,
        kernel_init=nn.linear.default_kernel_init, out_init=nn.linear.default_kernel_init, dtype=self.dtype,
        name=name)
    x = x + attend("attn1")(norm("norm1")(x))  # (B, HW, inner)
    x = x + attend("attn2")(norm("norm2")(x), context.astype(x.dtype))
    return x + FeedForward(x.shape[-1], self.dtype, name="ff")(norm("norm3")(x))


class Transformer2D(nn.Module):
  """GroupNorm, proj_in, transformer blocks over the H x W tokens, zero-initialised proj_out, + the input."""

  heads: int
  depth: int
  groups: int
  linear_projection: bool
  attention: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, context):
    b, height, width, ch = x.shape
    inner = self.heads * (ch // self.heads)  # diffusers' heads * (channels // heads)
    h = _group_norm(self.groups, TRANSFORMER_GROUPNORM_EPS, "norm", self.dtype)(x)
    if self.linear_projection:
      h = layers.Dense(inner, name="proj_in", dtype=self.dtype)(h.reshape(b, height * width, ch))
    else:
      h = _conv(inner, "proj_in", self.dtype, kernel=1, padding=0)(h).reshape(b, height * width, inner)
    for i in range(self.depth):
      h = BasicTransformerBlock(self.heads, self.attention, self.dtype, name=f"transformer_blocks_{i}")(h, context)
    if self.linear_projection:
      h = layers.Dense(ch, kernel_init=nn.initializers.zeros, name="proj_out", dtype=self.dtype)(h)
      h = h.reshape(b, height, width, ch)
    else:
      h = _conv(ch, "proj_out", self.dtype, kernel=1, padding=0, zero=True)(h.reshape(b, height, width, inner))
    return x + h


class Downsample2D(nn.Module):
  """A stride-2 3x3 conv: (B, H, W, C) -> (B, H/2, W/2, C)."""

  channels: int
  padding: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    pad = ((1, 1), (1, 1)) if self.padding == 1 else ((0, 1), (0, 1))  # 0: diffusers pads the far row and column
    return _conv(self.channels, "conv", self.dtype, strides=2, padding=pad)(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv: (B, H, W, C) -> (B, 2H, 2W, C)."""

  channels: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C)
    return _conv(self.channels, "conv", self.dtype)(x)


class TimestepEmbedding(nn.Module):
  """The timestep features through Linear -> SiLU -> Linear."""

  width: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, feats):
    h = nn.silu(layers.Dense(self.width, name="linear_1", dtype=self.dtype)(feats))
    return layers.Dense(self.width, name="linear_2", dtype=self.dtype)(h)


def _resnet(cfg: CondUNetConfig, channels: int, name: str, scale: float = 1.0) -> ResnetBlock2D:
  return ResnetBlock2D(channels, cfg.norm_num_groups, cfg.norm_eps, cfg.dropout, scale, cfg.dtype, name=name)


def _transformer(cfg: CondUNetConfig, heads: int, depth: int, name: str) -> Transformer2D:
  return Transformer2D(heads, depth, cfg.norm_num_groups, cfg.use_linear_projection, cfg.attention, cfg.dtype,
                       name=name)


class DownBlock(nn.Module):
  """Level `level`'s `DownBlock2D` or `CrossAttnDownBlock2D`: (x, emb, context) -> (x, the skips it keeps)."""

  cfg: CondUNetConfig
  level: int

  @nn.compact
  def __call__(self, x, emb, context, train: bool = False):
    cfg, i = self.cfg, self.level
    ch = cfg.block_out_channels[i]
    cross = cfg.down_block_types[i] == "CrossAttnDownBlock2D"
    skips = []
    for j in range(cfg.per_level("layers_per_block")[i]):
      x = _resnet(cfg, ch, f"resnets_{j}")(x, emb, train)
      if cross:
        x = _transformer(cfg, cfg.per_level("num_attention_heads")[i],
                         cfg.per_level("transformer_layers_per_block")[i], f"attentions_{j}")(x, context)
      skips.append(x)
    if i < len(cfg.block_out_channels) - 1:
      x = Downsample2D(ch, cfg.downsample_padding, cfg.dtype, name="downsamplers_0")(x)  # (B, H/2, W/2, ch)
      skips.append(x)
    return x, skips


class MidBlock(nn.Module):
  """`UNetMidBlock2DCrossAttn`: ResNet, spatial transformer, ResNet at the lowest resolution."""

  cfg: CondUNetConfig

  @nn.compact
  def __call__(self, x, emb, context, train: bool = False):
    cfg = self.cfg
    ch, scale = cfg.block_out_channels[-1], cfg.mid_block_scale_factor
    x = _resnet(cfg, ch, "resnets_0", scale)(x, emb, train)
    x = _transformer(cfg, cfg.per_level("num_attention_heads")[-1], cfg.per_level("transformer_layers_per_block")[-1],
                     "attentions_0")(x, context)
    return _resnet(cfg, ch, "resnets_1", scale)(x, emb, train)


class UpBlock(nn.Module):
  """Up level `index` (0: the lowest resolution)'s `UpBlock2D` or `CrossAttnUpBlock2D`; consumes its skips."""

  cfg: CondUNetConfig
  index: int

  @nn.compact
  def __call__(self, x, skips, emb, context, train: bool = False):
    cfg, i = self.cfg, self.index
    level = len(cfg.block_out_channels) - 1 - i  # the down level of the same resolution
    ch = cfg.block_out_channels[level]
    cross = cfg.up_block_types[i] == "CrossAttnUpBlock2D"
    for j in range(len(skips)):
      x = jnp.concatenate([x, skips[-1 - j]], axis=-1)  # (B, H, W, C + C_skip), the latest skip first
      x = _resnet(cfg, ch, f"resnets_{j}")(x, emb, train)
      if cross:
        x = _transformer(cfg, cfg.per_level("num_attention_heads")[level],
                         cfg.per_level("transformer_layers_per_block")[level], f"attentions_{j}")(x, context)
    if level > 0:
      x = Upsample2D(ch, cfg.dtype, name="upsamplers_0")(x)  # (B, 2H, 2W, ch)
    return x


class CondUNet(nn.Module):
  """`apply({"params": params}, x, t, context, train=False)` -> (B, H, W, out_channels).

  x: (B, H, W, in_channels) noisy latents, H and W divisible by 2^(levels - 1); t: (B,)
  timesteps; context: (B, L, cross_attention_dim), e.g. a text encoder's hidden states (an
  empty caption's for the unconditional half of classifier-free guidance). Dropout needs
  rngs={'dropout'}.
  """

  cfg: CondUNetConfig

  def _check(self, x, t, context):
    cfg = self.cfg
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f"expected x of shape (B, H, W, {cfg.in_channels}) (NHWC), got {x.shape}")
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"x's height and width {x.shape[1:3]} must be divisible by {factor} "
                       f"({len(cfg.block_out_channels)} levels)")
    if jnp.shape(t) != x.shape[:1]:
      raise ValueError(f"expected t of shape ({x.shape[0]},), one timestep per example, got {jnp.shape(t)}")
    if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.cross_attention_dim:
      raise ValueError(f"expected context of shape ({x.shape[0]}, L, {cfg.cross_attention_dim}), got {context.shape}")

  @nn.compact
  def __call__(self, x, t, context, train: bool = False):
    cfg = self.cfg
    self._check(x, t, context)
    x = x.astype(cfg.dtype)
    if cfg.center_input_sample:
      x = 2 * x - 1.0
    # (1) Time embedding.
    c0 = cfg.block_out_channels[0]
    feats = embeddings.timestep_frequencies(t, c0, freq_shift=cfg.freq_shift, flip_sin_to_cos=cfg.flip_sin_to_cos)
    emb = TimestepEmbedding(cfg.time_embed_dim, cfg.dtype, name="time_embedding")(feats)  # (B, time_embed_dim)
    context = context.astype(cfg.dtype)
    # (2) conv_in and the down blocks, keeping every block output as a skip.
    h = _conv(c0, "conv_in", cfg.dtype)(x)  # (B, H, W, c0)
    skips = [h]
    for i in range(len(cfg.block_out_channels)):
      h, kept = DownBlock(cfg, i, name=f"down_blocks_{i}")(h, emb, context, train)
      skips += kept
    # (3) The mid block.
    if cfg.mid_block_type is not None:
      h = MidBlock(cfg, name="mid_block")(h, emb, context, train)
    # (4) The up blocks, each taking the skips of its resolution (layers_per_block + 1 of them).
    for i, count in enumerate(reversed(cfg.per_level("layers_per_block"))):
      h = UpBlock(cfg, i, name=f"up_blocks_{i}")(h, skips[-(count + 1):], emb, context, train)
      skips = skips[:-(count + 1)]
    # (5) Out.
    h = nn.silu(_group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out", cfg.dtype)(h))
    return _conv(cfg.out_channels, "conv_out", cfg.dtype, zero=True)(h).astype(jnp.float32)


def _example_inputs(cfg: CondUNetConfig, batch: int = 1, context_len: int = 1):
  """Shapes of (x, t, context) at the smallest latent the levels allow."""
  side = 2 ** (len(cfg.block_out_channels) - 1)
  return (jax.ShapeDtypeStruct((batch, side, side, cfg.in_channels), jnp.float32),
          jax.ShapeDtypeStruct((batch,), jnp.int32),
          jax.ShapeDtypeStruct((batch, context_len, cfg.cross_attention_dim), jnp.float32))


def init_shapes(cfg: CondUNetConfig) -> dict:
  """The parameter tree's shapes and dtypes (`jax.eval_shape`: nothing is allocated)."""
  return nn.unbox(jax.eval_shape(lambda *a: CondUNet(cfg).init(jax.random.key(0), *a), *_example_inputs(cfg)))


def count_params(cfg: CondUNetConfig) -> int:
  """Number of parameters, from shapes alone."""
  return layers.count_params(CondUNet(cfg), *_example_inputs(cfg))


# ---------------------------------------------------------------------------------------
# Weights to and from diffusers: one explicit name table.


def _conv_rows(theirs: str, ours: tuple) -> list[hf.Tensor]:
  """A Conv2d: torch's (out, in, kh, kw) weight is flax's (kh, kw, in, out) kernel."""
  return [hf.Tensor(f"{theirs}.weight", ours + ("kernel",), lambda w: w.transpose(2, 3, 1, 0),
                    lambda k: k.transpose(3, 2, 0, 1)),
          hf.Tensor(f"{theirs}.bias", ours + ("bias",))]


def _linear_rows(theirs: str, ours: tuple) -> list[hf.Tensor]:
  """A Linear: torch's (out, in) weight is the transposed (in, out) kernel."""
  return [hf.Tensor(f"{theirs}.weight", ours + ("kernel",), lambda w: w.T, lambda k: k.T),
          hf.Tensor(f"{theirs}.bias", ours + ("bias",))]


def _norm_rows(theirs: str, ours: tuple) -> list[hf.Tensor]:
  return [hf.Tensor(f"{theirs}.weight", ours + ("scale",)), hf.Tensor(f"{theirs}.bias", ours + ("bias",))]


def _attention_rows(theirs: str, ours: tuple, heads: int) -> list[hf.Tensor]:
  """to_q/to_k/to_v (heads * d, in), without biases, as (in, heads, d) kernels; to_out.0 (out, heads * d) as
  (heads, d, out)."""
  split = lambda w: w.T.reshape(w.shape[1], heads, w.shape[0] // heads)
  merge = lambda k: k.reshape(k.shape[0], -1).T
  rows = [hf.Tensor(f"{theirs}.to_{a}.weight", ours + (b, "kernel"), split, merge)
          for a, b in (("q", "query"), ("k", "key"), ("v", "value"))]
  return rows + [hf.Tensor(f"{theirs}.to_out.0.weight", ours + ("out", "kernel"),
                           lambda w: w.T.reshape(heads, w.shape[1] // heads, w.shape[0]),
                           lambda k: k.reshape(-1, k.shape[-1]).T),
                 hf.Tensor(f"{theirs}.to_out.0.bias", ours + ("out", "bias"))]


def _resnet_rows(theirs: str, ours: tuple, in_channels: int, channels: int) -> list[hf.Tensor]:
  rows = (_norm_rows(f"{theirs}.norm1", ours + ("norm1",)) + _conv_rows(f"{theirs}.conv1", ours + ("conv1",))
          + _linear_rows(f"{theirs}.time_emb_proj", ours + ("time_emb_proj",))
          + _norm_rows(f"{theirs}.norm2", ours + ("norm2",)) + _conv_rows(f"{theirs}.conv2", ours + ("conv2",)))
  if in_channels != channels:
    rows += _conv_rows(f"{theirs}.conv_shortcut", ours + ("conv_shortcut",))
  return rows


def _transformer_rows(cfg: CondUNetConfig, theirs: str, ours: tuple, heads: int, depth: int) -> list[hf.Tensor]:
  projection = _linear_rows if cfg.use_linear_projection else _conv_rows
  rows = _norm_rows(f"{theirs}.norm", ours + ("norm",)) + projection(f"{theirs}.proj_in", ours + ("proj_in",))
  for k in range(depth):
    p, q = f"{theirs}.transformer_blocks.{k}", ours + (f"transformer_blocks_{k}",)
    for n in (1, 2):
      rows += _norm_rows(f"{p}.norm{n}", q + (f"norm{n}",)) + _attention_rows(f"{p}.attn{n}", q + (f"attn{n}",), heads)
    rows += (_norm_rows(f"{p}.norm3", q + ("norm3",)) + _linear_rows(f"{p}.ff.net.0.proj", q + ("ff", "proj"))
             + _linear_rows(f"{p}.ff.net.2", q + ("ff", "out")))
  return rows + projection(f"{theirs}.proj_out", ours + ("proj_out",))


def _hf_table(cfg: CondUNetConfig) -> list[hf.Tensor]:
  """Every tensor of a UNet2DConditionModel and its parameter, level by level as diffusers builds them."""
  chs, n = cfg.block_out_channels, len(cfg.block_out_channels)
  num_layers, heads = cfg.per_level("layers_per_block"), cfg.per_level("num_attention_heads")
  depth = cfg.per_level("transformer_layers_per_block")
  table = (_conv_rows("conv_in", ("conv_in",))
           + _linear_rows("time_embedding.linear_1", ("time_embedding", "linear_1"))
           + _linear_rows("time_embedding.linear_2", ("time_embedding", "linear_2")))
  skip_channels = [chs[0]]  # the channels of each skip, in the order the down path keeps them
  for i in range(n):
    theirs, ours = f"down_blocks.{i}", (f"down_blocks_{i}",)
    for j in range(num_layers[i]):
      table += _resnet_rows(f"{theirs}.resnets.{j}", ours + (f"resnets_{j}",), skip_channels[-1], chs[i])
      if cfg.down_block_types[i] == "CrossAttnDownBlock2D":
        table += _transformer_rows(cfg, f"{theirs}.attentions.{j}", ours + (f"attentions_{j}",), heads[i], depth[i])
      skip_channels.append(chs[i])
    if i < n - 1:
      table += _conv_rows(f"{theirs}.downsamplers.0.conv", ours + ("downsamplers_0", "conv"))
      skip_channels.append(chs[i])
  if cfg.mid_block_type is not None:
    for j in (0, 1):
      table += _resnet_rows(f"mid_block.resnets.{j}", ("mid_block", f"resnets_{j}"), chs[-1], chs[-1])
    table += _transformer_rows(cfg, "mid_block.attentions.0", ("mid_block", "attentions_0"), heads[-1], depth[-1])
  in_channels = chs[-1]
  for i in range(n):
    level = n - 1 - i
    theirs, ours = f"up_blocks.{i}", (f"up_blocks_{i}",)
    for j in range(num_layers[level] + 1):
      table += _resnet_rows(f"{theirs}.resnets.{j}", ours + (f"resnets_{j}",), in_channels + skip_channels.pop(),
                            chs[level])
      in_channels = chs[level]
      if cfg.up_block_types[i] == "CrossAttnUpBlock2D":
        table += _transformer_rows(cfg, f"{theirs}.attentions.{j}", ours + (f"attentions_{j}",), heads[level],
                                   depth[level])
    if level > 0:
      table += _conv_rows(f"{theirs}.upsamplers.0.conv", ours + ("upsamplers_0", "conv"))
  return table + _norm_rows("conv_norm_out", ("conv_norm_out",)) + _conv_rows("conv_out", ("conv_out",))


# diffusers' config name -> ours, for the options this U-Net has.
_FIELDS = {
    "sample_size": "sample_size", "in_channels": "in_channels", "out_channels": "out_channels",
    "down_block_types": "down_block_types", "mid_block_type": "mid_block_type", "up_block_types": "up_block_types",
    "block_out_channels": "block_out_channels", "layers_per_block": "layers_per_block",
    "transformer_layers_per_block": "transformer_layers_per_block",
    "attention_head_dim": "num_attention_heads",  # diffusers' name for the number of heads (see the module doc)
    "cross_attention_dim": "cross_attention_dim", "norm_num_groups": "norm_num_groups", "norm_eps": "norm_eps",
    "flip_sin_to_cos": "flip_sin_to_cos", "freq_shift": "freq_shift", "time_embedding_dim": "time_embedding_dim",
    "center_input_sample": "center_input_sample", "downsample_padding": "downsample_padding",
    "mid_block_scale_factor": "mid_block_scale_factor", "use_linear_projection": "use_linear_projection",
    "upcast_attention": "upcast_attention", "dropout": "dropout",
}
# diffusers' options this U-Net has only at their default: name -> that value.
_FIXED = {
    "act_fn": "silu", "only_cross_attention": False, "mid_block_only_cross_attention": None,
    "dual_cross_attention": False, "num_attention_heads": None, "reverse_transformer_layers_per_block": None,
    "class_embed_type": None, "num_class_embeds": None, "class_embeddings_concat": False,
    "projection_class_embeddings_input_dim": None, "addition_embed_type": None, "addition_time_embed_dim": None,
    "addition_embed_type_num_heads": 64, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional", "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default",
    "cross_attention_norm": None,
}


def _is_default(name: str, value) -> bool:
  if name == "only_cross_attention" and isinstance(value, (list, tuple)):
    return not any(value)  # one False per level
  if name == "mid_block_only_cross_attention":
    return value in (None, False)  # None: only_cross_attention's value, False
  return value == _FIXED[name]


def config_from_diffusers(saved: dict, **overrides) -> CondUNetConfig:
  """Our config from a UNet2DConditionModel's config.json dict (fields it lacks take diffusers' defaults).

  Raises:
    ValueError: naming the field, for an option this U-Net lacks or a field diffusers does not know.
  """
  kind = saved.get("_class_name", "UNet2DConditionModel")
  if kind != "UNet2DConditionModel":
    raise ValueError(f"config.json describes a {kind}, not a UNet2DConditionModel")
  fields = {}
  for name, value in saved.items():
    if name.startswith("_"):  # diffusers' bookkeeping: _class_name, _diffusers_version, _name_or_path
      continue
    if name in _FIELDS:
      fields[_FIELDS[name]] = tuple(value) if isinstance(value, list) else value
    elif name in _FIXED:
      if not _is_default(name, value):
        raise ValueError(f"unsupported UNet2DConditionModel option {name}={value!r}; this U-Net supports "
                         f"{name}={_FIXED[name]!r} only")
    else:
      raise ValueError(f"unknown UNet2DConditionModel config field {name!r}")
  return CondUNetConfig(**{**fields, **overrides})


def config_to_diffusers(cfg: CondUNetConfig) -> dict:
  """The config.json dict of a UNet2DConditionModel equal to this U-Net."""
  listed = lambda v: list(v) if isinstance(v, tuple) else v
  return {"_class_name": "UNet2DConditionModel", **{theirs: listed(getattr(cfg, ours)) for theirs, ours in
                                                     _FIELDS.items()}, **_FIXED}


def load_hf(path: str, **overrides) -> tuple[CondUNet, dict]:
  """Reads a directory saved by diffusers' UNet2DConditionModel (config.json + diffusion_pytorch_model.safetensors).

  Stable Diffusion's U-Net is the `unet/` folder of a diffusers pipeline; fp16 weights load as float32.

  Args:
    path: the directory.
    **overrides: CondUNetConfig fields to replace (attention, dtype, dropout).

  Returns:
    (CondUNet module, params), params the dict to pass as {"params": params}.

  Raises:
    ValueError: without the two files, for a config option this U-Net lacks (naming the field), or
      when a tensor is missing, unexpected or of another shape (naming the tensor).
  """
  saved, weights_path = hf.saved_config(path, "UNet2DConditionModel", "diffusion_pytorch_model.safetensors")
  cfg = config_from_diffusers(saved, **overrides)
  tensors = hf.load_weights(weights_path)
  table = _hf_table(cfg)
  unexpected = sorted(set(tensors) - {row.theirs for row in table})
  if unexpected:
    raise ValueError(f"tensor {unexpected[0]} of {weights_path} has no place in this config "
                     f"({len(unexpected)} unexpected tensors)")
  return CondUNet(cfg), hf.read(table, tensors, init_shapes(cfg)["params"], weights_path)


def save_hf(model: CondUNet, params, path: str) -> None:
  """Writes config.json + diffusion_pytorch_model.safetensors, which diffusers' UNet2DConditionModel.from_pretrained
  loads.

  Args:
    model: the CondUNet (its config is written).
    params: its parameters, the dict passed as {"params": params}.
    path: the directory (created if needed).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  tensors = hf.write(_hf_table(model.cfg), nn.unbox(params))
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_diffusers(model.cfg), f, indent=2)
