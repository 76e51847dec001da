"""DiT: Diffusion Transformers (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023).

    cfg = dit.config("DiT-S/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    model = dit.DiT(cfg)
    out = model.apply(variables, x, t, y)   # x (N, H, W, C) NHWC, t (N,) ints, y (N,) ints

    cfg = dit.config("DiT-XS/2", 8, 4, num_classes=0, conditioning="cross_attention", context_dim=768)
    out = dit.DiT(cfg).apply(variables, x, t, context)   # context (N, L, 768): a text encoder's states

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
                         conditioning tokens [t_emb, y_emb] (with `context_dim`, to t_emb and
                         the context's L tokens, see below);
        in_context       the two conditioning tokens are appended to the sequence and
                         dropped after the last block;
  (4) the final layer: a (adaptive) LayerNorm and a linear map to p x p x C' per token
      (C' = 2C with `learn_sigma`: the noise and the variance interpolation), zero-initialised,
      then unpatchify back to (H, W, C').
Names "DiT-{S,B,L,XL}/{2,4,8}" are the paper's configs (Table 1); "DiT-T" and "DiT-XS" are
small ones for 8x8 digits on a CPU, with patch sizes 1, 2, 4 or 8.

Text conditioning (`context_dim` > 0, the cross-attention variant without class labels): the
third argument is a context (N, L, context_dim), e.g. a text encoder's hidden states, as
research/models/cond_unet.py takes it; a linear `context_embedder` maps it to width D, and each
block's cross-attention attends to [t_emb, context tokens] (N, 1 + L, D). Its output projection
starts at zero, so every block starts as a plain transformer block that ignores the condition
tokens (in the adaLN-Zero spirit: nothing the model has not learned to use can disturb it); the
projection gets gradients once the zero-initialised final layer has moved. As the timestep
shares the cross-attention, the fresh model ignores it too. Classifier-free guidance passes an
empty caption's context as the unconditional one (research/models/diffusion.py's
`classifier_free_guidance` with labels = contexts, null_label = the empty caption's context).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import attention as attention_lib
from research.models import embeddings
from research.models import layers
# dit.drop_labels: the paper's label dropout for classifier-free guidance, kept with the embeddings.
from research.models.embeddings import drop_labels  # pylint: disable=unused-import

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
    context_dim: width of a (N, L, context_dim) context taken instead of labels (0: none); needs
      conditioning "cross_attention" and num_classes 0.
    learn_sigma: output 2C channels (noise and variance) instead of C.
    conditioning: one of CONDITIONINGS.
    attention: the kernel, one of research.models.attention.IMPLEMENTATIONS ("auto": the
      platform's).
    scan_layers: the blocks as one `nn.scan` (parameters "blocks" with a leading layer axis)
      instead of a Python loop ("blocks_0", "blocks_1", ...): one block to compile.
    remat: recompute in the backward pass: "none", "block" or "dots" (research.models.layers.REMATS).
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
  context_dim: int = 0
  learn_sigma: bool = True
  conditioning: str = "adaln_zero"
  attention: str = "auto"
  scan_layers: bool = False
  remat: str = "none"
  dtype: str = "float32"

  def __post_init__(self):
    layers.check_stacking(self.scan_layers, self.remat)
    if self.input_size % self.patch_size:
      raise ValueError(f"patch size {self.patch_size} does not divide the input size {self.input_size}")
    if self.conditioning not in CONDITIONINGS:
      raise ValueError(f"unknown conditioning {self.conditioning!r}; choose one of: {', '.join(CONDITIONINGS)}")
    if self.attention not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"unknown attention {self.attention!r}; choose one of: "
                       f"{', '.join(attention_lib.IMPLEMENTATIONS)}")
    if not isinstance(self.context_dim, int) or self.context_dim < 0:
      raise ValueError(f"context_dim must be a non-negative integer, got {self.context_dim!r}")
    if self.context_dim and (self.conditioning != "cross_attention" or self.num_classes):
      raise ValueError(f"a context (context_dim {self.context_dim}) conditions through cross-attention instead of "
                       f"labels: set conditioning='cross_attention' and num_classes=0 (got {self.conditioning!r} and "
                       f"{self.num_classes})")

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
      unknown conditioning, attention or remat.
  """
  size, _, patch = name.partition("/")
  if size not in SIZES or not patch.isdigit() or int(patch) not in PATCH_SIZES:
    raise ValueError(f"unknown DiT {name!r}; choose one of: {', '.join(names())}")
  depth, hidden, heads = SIZES[size]
  fields = dict(input_size=input_size, in_channels=in_channels, patch_size=int(patch), hidden_size=hidden,
                depth=depth, num_heads=heads, num_classes=num_classes, learn_sigma=learn_sigma)
  return DiTConfig(**{**fields, **overrides})


# ---------------------------------------------------------------------------------------
# Blocks (the embedders are research/models/embeddings.py's).


def _dense(features, name=None, init=nn.initializers.xavier_uniform(), axes=None, dtype="float32"):
  kernel_init = nn.with_logical_partitioning(init, axes) if axes else init
  return layers.Dense(features, name=name, kernel_init=kernel_init, dtype=dtype)


def modulate(x, shift, scale):
  """adaLN: x * (1 + scale) + shift, with (N, D) conditioning broadcast over tokens."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


def attention(cfg: DiTConfig, name: str, zero_out: bool = False) -> attention_lib.MultiHeadAttention:
  """The block's (self- or cross-) attention: Xavier-uniform projections, as the DiT repository's timm layers
  (with zero_out, the output projection starts at zero)."""
  init = nn.initializers.xavier_uniform()
  # The three projections of one input as one product even on CPUs: the DiT training benchmark's
  # step is 3% faster so on XLA:CPU at DiT-XS's width 128 (GPT-2's three are faster at 384).
  return attention_lib.MultiHeadAttention(num_heads=cfg.num_heads, implementation=cfg.attention, stack_qkv=True,
                                          kernel_init=init, out_init=nn.initializers.zeros if zero_out else init,
                                          dtype=cfg.dtype, name=name)


class Mlp(nn.Module):
  hidden_size: int
  mlp_ratio: float
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    h = _dense(int(self.hidden_size * self.mlp_ratio), "fc1", axes=("embed", "mlp"), dtype=self.dtype)(x)
    h = nn.with_logical_constraint(h, layers.ACTIVATION_MLP)
    return _dense(self.hidden_size, "fc2", axes=("mlp", "embed"), dtype=self.dtype)(nn.gelu(h, approximate=True))


def _layer_norm(name, affine: bool, dtype):
  return nn.LayerNorm(epsilon=1e-6, use_scale=affine, use_bias=affine, name=name, dtype=dtype)


class DiTBlock(nn.Module):
  """One transformer block conditioned on c (N, D) as `conditioning` says: (x, None) -> (x after it, None)."""

  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, unused=None, *, c, cond_tokens):
    del unused  # the signature of research.models.layers.blocks: the blocks take no per-layer input
    cfg = self.cfg
    attn = attention(cfg, "attn")
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
      x = x + gate_mlp[:, None] * mlp(modulate(_layer_norm("norm2", False, cfg.dtype)(x), shift_mlp, scale_mlp))
      return x, None
    x = x + attn(_layer_norm("norm1", True, cfg.dtype)(x))
    if cfg.conditioning == "cross_attention":
      cross_attn = attention(cfg, "cross_attn", zero_out=cfg.context_dim > 0)  # a context starts unheard
      x = x + cross_attn(_layer_norm("norm_cross", True, cfg.dtype)(x), cond_tokens)
    return x + mlp(_layer_norm("norm2", True, cfg.dtype)(x)), None


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
  null class), ignored by an unconditional model (num_classes = 0), or, with context_dim > 0,
  the context (N, L, context_dim).
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
    h = h.reshape(n, grid * grid, cfg.hidden_size) + embeddings.sincos_2d(cfg.hidden_size, grid)[None]  # (N, T, D)
    # (2) Conditioning.
    t_emb = embeddings.TimestepEmbedder(cfg.hidden_size, cfg.dtype, name="t_embedder")(t)  # (N, D)
    if cfg.context_dim:
      if y is None or y.ndim != 3 or y.shape[0] != n or y.shape[2] != cfg.context_dim:
        raise ValueError(f"expected a context of shape ({n}, L, {cfg.context_dim}), got "
                         f"{None if y is None else y.shape}")
      context = _dense(cfg.hidden_size, "context_embedder", dtype=cfg.dtype)(y.astype(cfg.dtype))  # (N, L, D)
      c = t_emb
      cond_tokens = jnp.concatenate([t_emb[:, None].astype(context.dtype), context], axis=1)  # (N, 1 + L, D)
    else:
      if cfg.num_classes > 0:
        y_emb = embeddings.LabelEmbedder(cfg.num_classes, cfg.hidden_size, name="y_embedder")(y)  # (N, D)
      else:
        y_emb = jnp.zeros_like(t_emb)
      c = t_emb + y_emb
      cond_tokens = jnp.stack([t_emb, y_emb], axis=1)  # (N, 2, D)
    if cfg.conditioning == "in_context":
      h = jnp.concatenate([h, cond_tokens.astype(h.dtype)], axis=1)  # (N, T + 2, D)
    # (3) Blocks.
    h, _ = layers.blocks(lambda: DiTBlock(cfg), cfg.depth, h, name="blocks", scan=cfg.scan_layers, remat=cfg.remat,
                         c=c, cond_tokens=cond_tokens)
    if cfg.conditioning == "in_context":
      h = h[:, :grid * grid]  # drop the conditioning tokens
    # (4) Final layer and unpatchify: (N, T, p*p*C') -> (N, H, W, C').
    h = FinalLayer(cfg, name="final_layer")(h, c)
    h = h.reshape(n, grid, grid, p, p, cfg.out_channels)
    h = jnp.transpose(h, (0, 1, 3, 2, 4, 5)).reshape(n, grid * p, grid * p, cfg.out_channels)
    return h.astype(jnp.float32)


def _condition(cfg: DiTConfig, batch: int, context_len: int) -> jax.ShapeDtypeStruct:
  """The shape of y: (batch,) labels, or a (batch, context_len, context_dim) context."""
  if cfg.context_dim:
    return jax.ShapeDtypeStruct((batch, context_len, cfg.context_dim), jnp.float32)
  return jax.ShapeDtypeStruct((batch,), jnp.int32)


def count_params(cfg: DiTConfig) -> int:
  """Number of parameters, from shapes alone (`jax.eval_shape`, nothing allocated)."""
  return layers.count_params(DiT(cfg), jax.ShapeDtypeStruct((1, cfg.input_size, cfg.input_size, cfg.in_channels),
                                                           jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32),
                             _condition(cfg, 1, 1))


def forward_flops(cfg: DiTConfig, batch: int = 1, context_len: int = 77) -> float:
  """FLOPs of one forward pass of `batch` images from XLA's cost analysis (2 per multiply-add).

  The paper's Gflops count multiply-adds, so they compare with half of this number. A
  text-conditioned model is counted with a context of `context_len` tokens (CLIP's 77).
  """
  model = DiT(cfg)
  x = jax.ShapeDtypeStruct((batch, cfg.input_size, cfg.input_size, cfg.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.int32)
  y = _condition(cfg, batch, context_len)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), jnp.zeros(t.shape, jnp.int32),
                                             jnp.zeros(y.shape, y.dtype)))
  lowered = jax.jit(model.apply).lower(params, x, t, y)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])
