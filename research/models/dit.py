"""DiT: Diffusion Transformers (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023).

    cfg = dit.config("DiT-S/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    model = dit.DiT(cfg)
    out = model.apply(variables, x, t, y)   # x (N, H, W, C) NHWC, t (N,) ints, y (N,) ints

The model, top-down as the paper builds it (section 3.2):
  (1) patchify: a p x p, stride-p convolution turns (H, W, C) into T = (H/p)(W/p) tokens of
      width D, plus the fixed 2-D sin-cos position embedding (no learned positions);
  (2) conditioning: a sinusoidal timestep embedding through a 2-layer MLP, and a class
      embedding with one extra "null" row (index num_classes) for classifier-free guidance;
      label dropout (`drop_labels`) replaces labels by the null class during training;
  (3) N transformer blocks conditioned on c = t_emb + y_emb in one of four ways (Figure 3):
        adaln_zero       adaptive LayerNorm: shift/scale regressed from c, plus per-branch
                         gates alpha, the regression initialised to zero, so each block starts
                         as the identity (the paper's choice);
        adaln            the same without the gates and the zero init;
        cross_attention  a cross-attention layer after self-attention attends to the two
                         conditioning tokens [t_emb, y_emb];
        in_context       the two conditioning tokens are appended to the sequence and
                         dropped after the last block;
  (4) the final layer: a (adaptive) LayerNorm and a linear map to p x p x C' per token
      (C' = 2C with `learn_sigma`: the noise and the variance interpolation), zero-initialised,
      then unpatchify back to (H, W, C').
Names "DiT-{S,B,L,XL}/{2,4,8}" are the paper's configs (Table 1); "DiT-T" and "DiT-XS" are
small ones for 8x8 digits on a CPU, with patch sizes 1, 2, 4 or 8.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import attention as attention_lib
from research.models import layers

CONDITIONINGS = ("adaln_zero", "adaln", "cross_attention", "in_context")
# name -> (depth, hidden size, heads): the paper's Table 1, then small ones of this codebase.
SIZES = {
    "DiT-XL": (28, 1152, 16),
    "DiT-L": (24, 1024, 16),
    "DiT-B": (12, 768, 12),
    "DiT-S": (12, 384, 6),
    "DiT-XS": (6, 128, 4),
    "DiT-T": (4, 64, 4),
}
PATCH_SIZES = (1, 2, 4, 8)
FREQUENCY_DIM = 256  # sinusoidal features of the timestep before its MLP


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """A DiT's sizes and options.

  Attributes:
    input_size: image height = width (latent size for the paper's latent DiT).
    in_channels: C of the input.
    patch_size: p; must divide input_size.
    hidden_size: D, the token width.
    depth: number of blocks.
    num_heads: attention heads (D must be divisible by them).
    mlp_ratio: MLP hidden width / D.
    num_classes: number of classes (0: unconditional, no label embedding).
    learn_sigma: output 2C channels (noise and variance) instead of C.
    conditioning: one of CONDITIONINGS.
    dtype: compute dtype (parameters stay float32).
  """

  input_size: int = 32
  in_channels: int = 4
  patch_size: int = 2
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  learn_sigma: bool = True
  conditioning: str = "adaln_zero"
  dtype: str = "float32"

  @property
  def out_channels(self) -> int:
    return 2 * self.in_channels if self.learn_sigma else self.in_channels

  @property
  def num_patches(self) -> int:
    return (self.input_size // self.patch_size) ** 2


def names() -> list[str]:
  """Every known config name, e.g. "DiT-XL/2"."""
  return [f"{size}/{p}" for size in SIZES for p in PATCH_SIZES]


def config(name: str, input_size: int = 32, in_channels: int = 4, num_classes: int = 1000,
           learn_sigma: bool = True, **overrides) -> DiTConfig:
  """The DiT named `name` ("DiT-S/2", ..., "DiT-XL/8", or the small "DiT-T/1", "DiT-XS/2", ...).

  Raises:
    ValueError: for an unknown name, a patch size that does not divide input_size, or an
      unknown conditioning.
  """
  size, _, patch = name.partition("/")
  if size not in SIZES or not patch.isdigit() or int(patch) not in PATCH_SIZES:
    raise ValueError(f"unknown DiT {name!r}; choose one of: {', '.join(names())}")
  depth, hidden, heads = SIZES[size]
  cfg = DiTConfig(input_size=input_size, in_channels=in_channels, patch_size=int(patch), hidden_size=hidden,
                  depth=depth, num_heads=heads, num_classes=num_classes, learn_sigma=learn_sigma)
  cfg = dataclasses.replace(cfg, **overrides)
  if cfg.input_size % cfg.patch_size:
    raise ValueError(f"patch size {cfg.patch_size} does not divide the input size {cfg.input_size}")
  if cfg.conditioning not in CONDITIONINGS:
    raise ValueError(f"unknown conditioning {cfg.conditioning!r}; choose one of: {', '.join(CONDITIONINGS)}")
  return cfg


# ---------------------------------------------------------------------------------------
# Embeddings.


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


def timestep_frequencies(t, dim: int = FREQUENCY_DIM, max_period: float = 10000.0):
  """Sinusoidal features of (possibly fractional) timesteps: (N,) -> (N, dim), [cos | sin]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # (half,)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]  # (N, half)
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def drop_labels(key, y, prob, num_classes: int):
  """Label dropout for classifier-free guidance: each label becomes the null class w.p. `prob`."""
  return jnp.where(jax.random.bernoulli(key, prob, y.shape), num_classes, y)


def _dense(features, name=None, init=nn.initializers.xavier_uniform(), axes=None, dtype="float32"):
  kernel_init = nn.with_logical_partitioning(init, axes) if axes else init
  return layers.Dense(features, name=name, kernel_init=kernel_init, dtype=dtype)


class TimestepEmbedder(nn.Module):
  """t -> sinusoidal features -> Linear -> SiLU -> Linear, (N,) -> (N, D)."""

  hidden_size: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, t):
    init = nn.initializers.normal(0.02)
    h = _dense(self.hidden_size, "fc1", init, dtype=self.dtype)(timestep_frequencies(t))
    return _dense(self.hidden_size, "fc2", init, dtype=self.dtype)(nn.silu(h))


class LabelEmbedder(nn.Module):
  """y -> a learned embedding; row `num_classes` is the null class of classifier-free guidance."""

  num_classes: int
  hidden_size: int

  @nn.compact
  def __call__(self, y):
    return nn.Embed(self.num_classes + 1, self.hidden_size, embedding_init=nn.initializers.normal(0.02),
                    name="embedding_table")(y)


# ---------------------------------------------------------------------------------------
# Blocks.


def modulate(x, shift, scale):
  """adaLN: x * (1 + scale) + shift, with (N, D) conditioning broadcast over tokens."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
  """Multi-head attention of queries x over keys/values `context` (x itself for self-attention)."""

  hidden_size: int
  num_heads: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, context=None):
    context = x if context is None else context
    head_dim = self.hidden_size // self.num_heads
    init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "heads", "head_dim"))
    proj = lambda name, inputs: layers.DenseParams((self.num_heads, head_dim), name=name, kernel_init=init)(
        inputs.shape[-1])
    # DenseGeneral's parameters, the projections of one input as one product: in the DiT training
    # benchmark's step 3% faster than three on XLA:CPU. (N, T, heads, head_dim)
    if context is x:
      q, k, v = layers.dense_group(x, [proj("query", x), proj("key", x), proj("value", x)], dtype=self.dtype)
    else:
      (q,) = layers.dense_group(x, [proj("query", x)], dtype=self.dtype)
      k, v = layers.dense_group(context, [proj("key", context), proj("value", context)], dtype=self.dtype)
    # The reference's values with a backward from the saved probabilities: on CPU the fastest to
    # train (the DiT benchmark).
    out = attention_lib.dense_attention(q, k, v)  # (N, T, heads, head_dim)
    out_init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("heads", "head_dim", "embed"))
    return layers.DenseGeneral(self.hidden_size, axis=(-2, -1), name="out", kernel_init=out_init, dtype=self.dtype)(out)


class Mlp(nn.Module):
  hidden_size: int
  mlp_ratio: float
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    h = _dense(int(self.hidden_size * self.mlp_ratio), "fc1", axes=("embed", "mlp"), dtype=self.dtype)(x)
    return _dense(self.hidden_size, "fc2", axes=("mlp", "embed"), dtype=self.dtype)(nn.gelu(h, approximate=True))


def _layer_norm(name, affine: bool, dtype):
  return nn.LayerNorm(epsilon=1e-6, use_scale=affine, use_bias=affine, name=name, dtype=dtype)


class DiTBlock(nn.Module):
  """One transformer block conditioned on c (N, D) as `conditioning` says."""

  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, c, cond_tokens):
    cfg = self.cfg
    attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.dtype, name="attn")
    mlp = Mlp(cfg.hidden_size, cfg.mlp_ratio, cfg.dtype, name="mlp")
    if cfg.conditioning in ("adaln_zero", "adaln"):
      zero = cfg.conditioning == "adaln_zero"
      chunks = 6 if zero else 4
      init = nn.initializers.zeros if zero else nn.initializers.xavier_uniform()
      mod = nn.Dense(chunks * cfg.hidden_size, kernel_init=init, bias_init=nn.initializers.zeros,
                     name="adaLN_modulation", dtype=cfg.dtype)(nn.silu(c))  # (N, chunks * D)
      parts = jnp.split(mod, chunks, axis=-1)
      if zero:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = parts
      else:
        shift_msa, scale_msa, shift_mlp, scale_mlp = parts
        gate_msa = gate_mlp = jnp.ones_like(shift_msa)
      x = x + gate_msa[:, None] * attn(modulate(_layer_norm("norm1", False, cfg.dtype)(x), shift_msa, scale_msa))
      return x + gate_mlp[:, None] * mlp(modulate(_layer_norm("norm2", False, cfg.dtype)(x), shift_mlp, scale_mlp))
    x = x + attn(_layer_norm("norm1", True, cfg.dtype)(x))
    if cfg.conditioning == "cross_attention":
      cross = Attention(cfg.hidden_size, cfg.num_heads, cfg.dtype, name="cross_attn")
      x = x + cross(_layer_norm("norm_cross", True, cfg.dtype)(x), cond_tokens)
    return x + mlp(_layer_norm("norm2", True, cfg.dtype)(x))


class FinalLayer(nn.Module):
  """(adaptive) LayerNorm and a zero-initialised linear map to p * p * C' per token."""

  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, c):
    cfg = self.cfg
    if cfg.conditioning in ("adaln_zero", "adaln"):
      mod = nn.Dense(2 * cfg.hidden_size, kernel_init=nn.initializers.zeros, name="adaLN_modulation",
                     dtype=cfg.dtype)(nn.silu(c))
      shift, scale = jnp.split(mod, 2, axis=-1)
      x = modulate(_layer_norm("norm_final", False, cfg.dtype)(x), shift, scale)
    else:
      x = _layer_norm("norm_final", True, cfg.dtype)(x)
    return layers.Dense(cfg.patch_size * cfg.patch_size * cfg.out_channels, kernel_init=nn.initializers.zeros,
                    name="linear", dtype=cfg.dtype)(x)  # (N, T, p * p * C')


class DiT(nn.Module):
  """The diffusion transformer: `apply(variables, x, t, y)` -> (N, H, W, C') NHWC.

  x: (N, H, W, C) noisy images; t: (N,) timesteps; y: (N,) class labels (num_classes = the
  null class), ignored by an unconditional model (num_classes = 0).
  """

  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, t, y=None):
    cfg = self.cfg
    n, p, grid = x.shape[0], cfg.patch_size, cfg.input_size // cfg.patch_size
    # (1) Patchify: (N, H, W, C) -> (N, T, D), plus the fixed position embedding.
    patch_init = nn.initializers.xavier_uniform()  # on the flattened (p*p*C, D) kernel, as the paper
    h = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", kernel_init=patch_init,
                name="x_embedder", dtype=cfg.dtype)(x.astype(cfg.dtype))  # (N, H/p, W/p, D)
    h = h.reshape(n, grid * grid, cfg.hidden_size) + sincos_2d(cfg.hidden_size, grid)[None]  # (N, T, D)
    # (2) Conditioning.
    t_emb = TimestepEmbedder(cfg.hidden_size, cfg.dtype, name="t_embedder")(t)  # (N, D)
    if cfg.num_classes > 0:
      y_emb = LabelEmbedder(cfg.num_classes, cfg.hidden_size, name="y_embedder")(y)  # (N, D)
    else:
      y_emb = jnp.zeros_like(t_emb)
    c = t_emb + y_emb
    cond_tokens = jnp.stack([t_emb, y_emb], axis=1)  # (N, 2, D)
    if cfg.conditioning == "in_context":
      h = jnp.concatenate([h, cond_tokens.astype(h.dtype)], axis=1)  # (N, T + 2, D)
    # (3) Blocks.
    for i in range(cfg.depth):
      h = DiTBlock(cfg, name=f"blocks_{i}")(h, c, cond_tokens)
    if cfg.conditioning == "in_context":
      h = h[:, :grid * grid]  # drop the conditioning tokens
    # (4) Final layer and unpatchify: (N, T, p*p*C') -> (N, H, W, C').
    h = FinalLayer(cfg, name="final_layer")(h, c)
    h = h.reshape(n, grid, grid, p, p, cfg.out_channels)
    h = jnp.transpose(h, (0, 1, 3, 2, 4, 5)).reshape(n, grid * p, grid * p, cfg.out_channels)
    return h.astype(jnp.float32)


def count_params(cfg: DiTConfig) -> int:
  """Number of parameters, from shapes alone (`jax.eval_shape`, nothing allocated)."""
  x = jnp.zeros((1, cfg.input_size, cfg.input_size, cfg.in_channels))
  shapes = jax.eval_shape(lambda: DiT(cfg).init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32),
                                                jnp.zeros((1,), jnp.int32)))
  return sum(math.prod(s.shape) for s in jax.tree.leaves(nn.unbox(shapes)))


def forward_flops(cfg: DiTConfig, batch: int = 1) -> float:
  """FLOPs of one forward pass of `batch` images from XLA's cost analysis (2 per multiply-add).

  The paper's Gflops count multiply-adds, so they compare with half of this number.
  """
  model = DiT(cfg)
  x = jax.ShapeDtypeStruct((batch, cfg.input_size, cfg.input_size, cfg.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), jnp.zeros(t.shape, jnp.int32),
                                             jnp.zeros(t.shape, jnp.int32)))
  lowered = jax.jit(model.apply).lower(params, x, t, t)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])
