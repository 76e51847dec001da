"""The encoder-decoder Transformer: T5 (Raffel et al. 2020; v1.0 and v1.1) and Vaswani et al. (2017).

    cfg = seq2seq.config("t5-small")              # or Seq2SeqConfig(...), or "transformer-base"
    model = seq2seq.Seq2Seq(cfg)
    logits = model.apply({"params": params}, input_ids, attention_mask, decoder_input_ids)
    model, params = seq2seq.load_hf("path/to/saved/t5")       # transformers' files, no torch
    seq2seq.save_hf(model, params, "out/")                     # T5ForConditionalGeneration loads it
    seq2seq.to_hf(params, cfg, "out/")                          # the same from a config; from_hf = load_hf
    nll = seq2seq.loss(model, params, input_ids, attention_mask, labels)       # labels: -100 where ignored
    tokens = seq2seq.generate(model, params, input_ids, attention_mask, max_new_tokens=20, num_beams=4)

One module, two families as configurations:

  T5         pre-norm residual blocks x + f(RMSNorm(x)) without biases, a final RMSNorm per stack;
             positions as a learned scalar bias per head and relative-position bucket, added to
             the scores of every self-attention layer (computed by the first); unscaled dot
             products (the 1/sqrt(d) lives in the query's initialisation); a ReLU (v1.0) or a
             gated-GELU (v1.1) feed-forward; the output head tied to the shared embedding with
             the decoder's output scaled by d_model^-0.5 (v1.0), or a separate head, unscaled (v1.1).
  Vaswani    post-norm blocks LayerNorm(x + f(x)) with biases, sinusoidal positions added to
             the embeddings scaled by sqrt(d_model), scaled dot products, a ReLU feed-forward and
             the tied output head.

Attention is the shared research.models.attention.MultiHeadAttention. Decoding (`generate`) runs
as one compiled `lax.while_loop` per method: the encoder and each decoder layer's cross-attention
keys and values are computed once, the decoder's self-attention keys and values go into a KV
cache, and the source is padded to `max_source_length`, so any source length compiles nothing
new. Greedy decoding and beam search (length penalty, early stopping) reproduce the token ids of
transformers' `generate`; sampling (temperature, top-k, top-p) is a function of its key.

Training: `loss` is the token cross-entropy of labels given the source, the decoder reading the
labels shifted right behind `decoder_start_token_id` (transformers' `labels=` convention).
"""

import dataclasses
import functools
import json
import math
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import attention as attention_lib
from research.models import gpt2
from research.models import hf
from research.models import layers

ACTIVATIONS = {"relu": nn.relu, "gelu": functools.partial(nn.gelu, approximate=False),
               "gelu_new": functools.partial(nn.gelu, approximate=True), "silu": nn.silu}
NEG_INF = -1.0e9  # transformers' score of a beam that may not be chosen


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
  """The encoder-decoder's hyperparameters, under transformers' T5Config names where T5 has them.

  Attributes:
    vocab_size, d_model, d_kv, d_ff, num_layers, num_heads: as T5Config (d_kv: per-head width).
    num_decoder_layers: decoder layers (None: num_layers).
    relative_attention_num_buckets, relative_attention_max_distance: T5's position buckets.
    layer_norm_epsilon: the norms' epsilon.
    feed_forward_proj: "relu", "gelu", "gelu_new", "silu", or "gated-" one of them ("gated-gelu"
      is T5 v1.1's tanh-approximated GELU, as transformers reads it).
    tie_word_embeddings: the output head is the shared embedding (else its own `lm_head`).
    scale_decoder_outputs: the decoder's output times d_model^-0.5 before the head (T5 v1.0).
    dropout_rate: dropout on embeddings, sublayer outputs, feed-forward hidden units and attention
      probabilities (training only; a call may override it with a traced rate).
    pad_token_id, eos_token_id, decoder_start_token_id: special tokens (T5: 0, 1, 0).
    positions: "relative" (T5's bucketed bias) or "sinusoidal" (Vaswani's, added to embeddings).
    norm: "rms" (T5's scale-only RMSNorm) or "layer" (LayerNorm with a bias).
    prenorm: x + f(norm(x)) and a final norm per stack (T5), or norm(x + f(x)) (Vaswani).
    use_bias: biases on the attention and feed-forward projections.
    embed_scale: embeddings times sqrt(d_model) (Vaswani).
    max_source_length: the longest source `generate` takes; every source is padded to it.
    max_target_length: the longest target `generate` writes (and sinusoidal positions reach).
    attention: the kernel (research.models.attention.IMPLEMENTATIONS; T5's score bias needs the
      reference, "xla" or "cudnn", which "auto" picks).
    scan_layers, remat: the layers as one `nn.scan`, and recomputation (layers.REMATS).
    dtype: compute dtype; parameters stay float32 and logits are float32.
  """

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: int | None = None
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"
  tie_word_embeddings: bool = True
  scale_decoder_outputs: bool = True
  dropout_rate: float = 0.0
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  positions: str = "relative"
  norm: str = "rms"
  prenorm: bool = True
  use_bias: bool = False
  embed_scale: bool = False
  max_source_length: int = 512
  max_target_length: int = 512
  attention: str = "auto"
  scan_layers: bool = False
  remat: str = "none"
  dtype: str = "float32"

  def __post_init__(self):
    layers.check_stacking(self.scan_layers, self.remat)
    if self.activation not in ACTIVATIONS or self.feed_forward_proj.count("-") > 1 or (
        "-" in self.feed_forward_proj and not self.gated):
      raise ValueError(f"unknown feed_forward_proj {self.feed_forward_proj!r}; choose one of "
                       f"{', '.join(ACTIVATIONS)}, or 'gated-' one of them")
    if self.positions not in ("relative", "sinusoidal"):
      raise ValueError(f"unknown positions {self.positions!r}; choose relative or sinusoidal")
    if self.norm not in ("rms", "layer"):
      raise ValueError(f"unknown norm {self.norm!r}; choose rms or layer")
    if self.attention not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"unknown attention {self.attention!r}; choose one of: "
                       f"{', '.join(attention_lib.IMPLEMENTATIONS)}")

  @property
  def gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def activation(self) -> str:
    act = self.feed_forward_proj.removeprefix("gated-")
    return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act  # transformers' reading

  @property
  def decoder_layers(self) -> int:
    return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers


_T5 = dict(positions="relative", norm="rms", prenorm=True, use_bias=False, embed_scale=False)
_VASWANI = dict(positions="sinusoidal", norm="layer", prenorm=False, use_bias=True, embed_scale=True,
                scale_decoder_outputs=False, layer_norm_epsilon=1e-6)
# Named sizes: (d_model, d_kv, d_ff, layers, heads) and the family's fields.
CONFIGS = {
    "t5-tiny": ((64, 16, 256, 2, 4), dict(_T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                          scale_decoder_outputs=False, vocab_size=512, max_source_length=64,
                                          max_target_length=64)),
    "transformer-tiny": ((64, 16, 256, 2, 4), dict(_VASWANI, vocab_size=512, max_source_length=64,
                                                   max_target_length=64)),
    "t5-small": ((512, 64, 2048, 6, 8), dict(_T5, feed_forward_proj="relu")),
    "t5-base": ((768, 64, 3072, 12, 12), dict(_T5, feed_forward_proj="relu")),
    "t5-v1_1-small": ((512, 64, 1024, 8, 6), dict(_T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                                  scale_decoder_outputs=False)),
    "t5-v1_1-base": ((768, 64, 2048, 12, 12), dict(_T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                                   scale_decoder_outputs=False)),
    "transformer-base": ((512, 64, 2048, 6, 8), dict(_VASWANI, vocab_size=37000, dropout_rate=0.1)),
    "transformer-big": ((1024, 64, 4096, 6, 16), dict(_VASWANI, vocab_size=37000, dropout_rate=0.3)),
}


def config(name: str, **overrides) -> Seq2SeqConfig:
  """A named configuration (CONFIGS: T5 v1.0 and v1.1 sizes, Vaswani et al.'s base and big, a tiny one of each
  family for tests and quick runs) with overrides."""
  if name not in CONFIGS:
    raise ValueError(f"unknown encoder-decoder {name!r}; choose one of: {', '.join(CONFIGS)}")
  (d_model, d_kv, d_ff, n_layers, heads), family = CONFIGS[name]
  fields = dict(family, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=n_layers, num_heads=heads)
  return Seq2SeqConfig(**{**fields, **overrides})


# ---------------------------------------------------------------------------------------
# Positions.


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int, max_distance: int):
  """T5's bucket of each key-minus-query distance: exact below num_buckets / 4 (or / 2 one-way), log-spaced up to
  max_distance, then the last bucket; a bidirectional half each for keys after and before the query.

  The float32 arithmetic is Mesh TensorFlow's and transformers', so that every bucket agrees.
  """
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  large = max_exact + (jnp.log(distance.astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(distance < max_exact, distance, large)


class RelativeBias(nn.Module):
  """A learned scalar per head and position bucket: (query positions (T,), key positions (S,)) -> (1, H, T, S)."""

  cfg: Seq2SeqConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_pos, k_pos):
    cfg = self.cfg
    table = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, name="relative_attention_bias",
                     embedding_init=_init(cfg.d_model ** -0.5, (None, "heads")))
    bucket = relative_position_bucket(k_pos[None, :] - q_pos[:, None], self.bidirectional,
                                      cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
    return jnp.transpose(table(bucket), (2, 0, 1))[None].astype(jnp.float32)  # (1, H, T, S)


def sinusoidal(positions, width: int):
  """Vaswani et al.'s encoding (section 3.5): PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...).

  (T,) positions -> (T, d).
  """
  j = jnp.arange(width)
  angles = positions.astype(jnp.float32)[:, None] / 10000.0 ** ((j - j % 2) / width)  # (T, d)
  return jnp.where(j % 2 == 0, jnp.sin(angles), jnp.cos(angles))


# ---------------------------------------------------------------------------------------
# The model.


def _init(std, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _norm(cfg: Seq2SeqConfig, name: str):
  if cfg.norm == "rms":
    return nn.RMSNorm(cfg.layer_norm_epsilon, dtype=cfg.dtype, name=name)
  return nn.LayerNorm(cfg.layer_norm_epsilon, dtype=cfg.dtype, name=name)


def _attention(cfg: Seq2SeqConfig, name: str):
  """T5's scores are not scaled (scale 1): its query kernel starts at std (d_model d_kv)^-1/2 and its keys at
  d_model^-1/2, so the scores start at unit variance. One initializer serves q, k and v here: std
  (d_model sqrt(d_kv))^-1/2 gives the same variance of the scores."""
  d, e = cfg.d_kv, cfg.d_model
  t5 = cfg.positions == "relative"
  std = (e * math.sqrt(d)) ** -0.5 if t5 else e ** -0.5
  return attention_lib.MultiHeadAttention(
      num_heads=cfg.num_heads, head_dim=d, implementation=cfg.attention, attention_dropout=cfg.dropout_rate,
      kernel_init=nn.initializers.normal(std), out_init=nn.initializers.normal((cfg.num_heads * d) ** -0.5),
      qkv_bias=cfg.use_bias, out_bias=cfg.use_bias, scale=1.0 if t5 else None, dtype=cfg.dtype, name=name)


class MLP(nn.Module):
  """wo(act(wi x)), or wo(act(wi_0 x) * wi_1 x) when gated, with dropout on the hidden units."""

  cfg: Seq2SeqConfig

  @nn.compact
  def __call__(self, x, train: bool, dropout_rate=None):
    cfg = self.cfg
    dense = lambda width, name, std, axes: layers.Dense(width, use_bias=cfg.use_bias, kernel_init=_init(std, axes),
                                                        dtype=cfg.dtype, name=name)
    act = ACTIVATIONS[cfg.activation]
    if cfg.gated:
      h = act(dense(cfg.d_ff, "wi_0", cfg.d_model ** -0.5, ("embed", "mlp"))(x))
      h = h * dense(cfg.d_ff, "wi_1", cfg.d_model ** -0.5, ("embed", "mlp"))(x)
    else:
      h = act(dense(cfg.d_ff, "wi", cfg.d_model ** -0.5, ("embed", "mlp"))(x))
    h = nn.with_logical_constraint(h, layers.ACTIVATION_MLP)
    h = layers.Dropout(cfg.dropout_rate)(h, train, rate=dropout_rate)
    return dense(cfg.d_model, "wo", cfg.d_ff ** -0.5, ("mlp", "embed"))(h)


def _sublayer(cfg: Seq2SeqConfig, name: str, x, fn, train: bool, dropout_rate):
  """x + f(norm(x)) (pre-norm) or norm(x + f(x)) (post-norm), with dropout on f's output."""
  drop = lambda y: layers.Dropout(cfg.dropout_rate)(y, train, rate=dropout_rate)
  if cfg.prenorm:
    return x + drop(fn(_norm(cfg, name + "_norm")(x)))
  return _norm(cfg, name + "_norm")(x + drop(fn(x)))


class EncoderLayer(nn.Module):
  """Self-attention over the source, then the feed-forward."""

  cfg: Seq2SeqConfig

  @nn.compact
  def __call__(self, x, unused, *, mask, bias, train: bool, dropout_rate):
    del unused
    cfg = self.cfg
    attn = _attention(cfg, "attention")
    x = _sublayer(cfg, "attention", x, lambda h: attn(h, mask=mask, bias=bias, train=train, dropout_rate=0.0,
                                                      attention_dropout_rate=dropout_rate), train, dropout_rate)
    return _sublayer(cfg, "mlp", x, lambda h: MLP(cfg, name="mlp")(h, train, dropout_rate), train, dropout_rate), None


class DecodeState(NamedTuple):
  """What decoding carries per decoder layer (a list, or stacked on a leading axis under scan_layers)."""

  cache: list | attention_lib.KVCache  # the self-attention's keys and values so far, (B, H, T_max, d_kv)
  cross: list | attention_lib.KVCache | None  # the cross-attention's keys and values of the source; None: to compute


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention to the encoder's output, then the feed-forward.

  With a DecodeState the self-attention writes into its cache at `cache_index`, and the
  cross-attention attends to the state's source keys and values, computing them first (from
  `encoded`) when the state holds none.
  """

  cfg: Seq2SeqConfig

  @nn.compact
  def __call__(self, x, state, *, encoded, encoder_mask, bias, cache_index, train: bool, dropout_rate):
    cfg = self.cfg
    self_attn, cross_attn = _attention(cfg, "self_attention"), _attention(cfg, "cross_attention")
    cache = None if state is None else state.cache
    cross = None if state is None else state.cross
    rates = dict(train=train, dropout_rate=0.0, attention_dropout_rate=dropout_rate)

    def attend_self(h):
      nonlocal cache
      out = self_attn(h, causal=True, bias=bias, cache=cache, cache_index=cache_index, **rates)
      if cache is None:
        return out
      out, cache = out
      return out

    def attend_source(h):
      nonlocal cross
      self.sow("intermediates", "cross_attention_input", h)  # for cross_attention_maps
      if state is None:
        return cross_attn(h, encoded, mask=encoder_mask, **rates)
      if cross is None:
        cross = cross_attn(None, encoded)  # (B, H, S, d_kv) each, once per source
      return cross_attn(h, kv=cross, mask=encoder_mask, **rates)

    x = _sublayer(cfg, "self_attention", x, attend_self, train, dropout_rate)
    x = _sublayer(cfg, "cross_attention", x, attend_source, train, dropout_rate)
    x = _sublayer(cfg, "mlp", x, lambda h: MLP(cfg, name="mlp")(h, train, dropout_rate), train, dropout_rate)
    return x, None if state is None else DecodeState(cache, cross)


class Encoder(nn.Module):
  """Embedded source (B, S, d_model) -> encoded source (B, S, d_model)."""

  cfg: Seq2SeqConfig

  @nn.compact
  def __call__(self, x, mask, *, train: bool = False, dropout_rate=None):
    cfg = self.cfg
    s = x.shape[1]
    bias = None
    if cfg.positions == "relative":
      bias = RelativeBias(cfg, bidirectional=True, name="relative_attention_bias")(jnp.arange(s), jnp.arange(s))
    x = layers.Dropout(cfg.dropout_rate)(x, train, rate=dropout_rate)
    x, _ = layers.blocks(lambda: EncoderLayer(cfg), cfg.num_layers, x, name="layer", scan=cfg.scan_layers,
                         remat=cfg.remat, mask=mask, bias=bias, train=train, dropout_rate=dropout_rate)
    if cfg.prenorm:
      x = _norm(cfg, "final_norm")(x)
    return layers.Dropout(cfg.dropout_rate)(x, train, rate=dropout_rate)


class Decoder(nn.Module):
  """Embedded target (B, T, d_model) and the encoded source -> (B, T, d_model), and the updated DecodeState."""

  cfg: Seq2SeqConfig

  @nn.compact
  def __call__(self, x, encoded, encoder_mask, *, state=None, cache_index=None, train: bool = False,
               dropout_rate=None):
    cfg = self.cfg
    t = x.shape[1]
    q_pos = jnp.arange(t) + (0 if cache_index is None else cache_index)
    bias = None
    if cfg.positions == "relative":
      length = t if state is None else jax.tree.leaves(state.cache)[0].shape[-2]
      bias = RelativeBias(cfg, bidirectional=False, name="relative_attention_bias")(q_pos, jnp.arange(length))
    x = layers.Dropout(cfg.dropout_rate)(x, train, rate=dropout_rate)
    per_layer = None
    if state is not None:
      per_layer = state if cfg.scan_layers else [
          DecodeState(state.cache[i], None if state.cross is None else state.cross[i])
          for i in range(cfg.decoder_layers)]
    x, states = layers.blocks(lambda: DecoderLayer(cfg), cfg.decoder_layers, x, per_layer, name="layer",
                              scan=cfg.scan_layers, remat=cfg.remat, encoded=encoded, encoder_mask=encoder_mask,
                              bias=bias, cache_index=cache_index, train=train, dropout_rate=dropout_rate)
    if state is not None and not cfg.scan_layers:
      states = DecodeState([s.cache for s in states], [s.cross for s in states])
    if cfg.prenorm:
      x = _norm(cfg, "final_norm")(x)
    return layers.Dropout(cfg.dropout_rate)(x, train, rate=dropout_rate), states


class Seq2Seq(nn.Module):
  """`apply({"params": p}, input_ids, attention_mask, decoder_input_ids)` -> logits (B, T, vocab_size) float32.

  attention_mask is (B, S), True (or 1) at the source's tokens and False at its padding; None:
  no padding. Keywords: `train` (dropout; needs rngs={'dropout'}), `dropout_rate` (in place of
  the config's, may be traced). `encode` and `decode` are the two halves, for generation.
  """

  cfg: Seq2SeqConfig

  def setup(self):
    cfg = self.cfg
    self.shared = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=_init(1.0, ("vocab", "embed")),
                           dtype=cfg.dtype)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    if not cfg.tie_word_embeddings:
      self.lm_head = layers.Dense(cfg.vocab_size, use_bias=False, kernel_init=_init(1.0, ("embed", "vocab")),
                                  dtype=cfg.dtype)

  def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, *, train: bool = False,
               dropout_rate=None):
    encoded = self.encode(input_ids, attention_mask, train=train, dropout_rate=dropout_rate)
    return self.decode(decoder_input_ids, encoded, attention_mask, train=train, dropout_rate=dropout_rate)[0]

  def _embed(self, ids, start=0):
    cfg = self.cfg
    x = self.shared(ids)
    if cfg.embed_scale:
      x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)
    if cfg.positions == "sinusoidal":
      x = x + sinusoidal(jnp.arange(ids.shape[1]) + start, cfg.d_model).astype(x.dtype)
    return x

  def encode(self, input_ids, attention_mask=None, *, train: bool = False, dropout_rate=None):
    """(B, S) source ids -> (B, S, d_model)."""
    mask = None if attention_mask is None else attention_mask.astype(bool)
    return self.encoder(self._embed(input_ids), mask, train=train, dropout_rate=dropout_rate)

  def decode(self, decoder_input_ids, encoded, attention_mask=None, *, state: DecodeState | None = None,
             cache_index=None, train: bool = False, dropout_rate=None):
    """(logits (B, T, vocab) float32, the updated DecodeState or None) for target ids after the source's encoding.

    Args:
      decoder_input_ids: (B, T) target ids, the start token first.
      encoded: `encode`'s output (B, S, d_model); may be None when the state holds the source's
        keys and values.
      attention_mask: the source's (B, S) padding mask.
      state: `init_state`'s, for decoding with caches: the T targets are at positions
        cache_index .. cache_index + T - 1.
      cache_index: the first target's position (a traced scalar), with a state.
      train, dropout_rate: as in `__call__`.
    """
    cfg = self.cfg
    mask = None if attention_mask is None else attention_mask.astype(bool)
    x = self._embed(decoder_input_ids, 0 if cache_index is None else cache_index)
    x, state = self.decoder(x, encoded, mask, state=state, cache_index=cache_index, train=train,
                            dropout_rate=dropout_rate)
    if cfg.scale_decoder_outputs:
      x = x * jnp.asarray(cfg.d_model ** -0.5, x.dtype)
    b, t, _ = x.shape
    rows = x.reshape(b * t, -1)  # (B * T, d_model): one plain product (see layers.Dense)
    logits = self.shared.attend(rows) if cfg.tie_word_embeddings else self.lm_head(rows)
    return logits.reshape(b, t, -1).astype(jnp.float32), state

  def init_state(self, batch: int, length: int) -> DecodeState:
    """Empty caches for `length` target positions and no source keys and values yet (the first `decode` adds them)."""
    cfg = self.cfg
    shape = (batch, cfg.num_heads, length, cfg.d_kv)
    if cfg.scan_layers:
      shape = (cfg.decoder_layers,) + shape
      return DecodeState(attention_lib.KVCache(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype)), None)
    return DecodeState([attention_lib.KVCache(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))
                        for _ in range(cfg.decoder_layers)], None)


def count_params(cfg: Seq2SeqConfig) -> int:
  """Parameters, from shapes alone."""
  ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  return layers.count_params(Seq2Seq(cfg), ids, ids, ids)


IGNORE = -100  # a label that no loss counts (transformers' ignore_index)


def shift_right(labels, start_token: int, pad_token: int):
  """The decoder's inputs for `labels` (B, T): the start token, then the labels but their last.

  Ignored labels (IGNORE) become the pad token, as transformers' `_shift_right` makes them.
  """
  shifted = jnp.concatenate([jnp.full_like(labels[:, :1], start_token), labels[:, :-1]], axis=1)  # (B, T)
  return jnp.where(shifted == IGNORE, pad_token, shifted)


def target_loss(logits, labels):
  """Mean next-token cross-entropy in nats over the labels that are not IGNORE: (B, T, V), (B, T) -> scalar."""
  counted = labels != IGNORE  # (B, T)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, jnp.where(counted, labels, 0)[..., None], axis=-1)[..., 0]  # (B, T)
  return jnp.sum(nll * counted) / jnp.maximum(jnp.sum(counted), 1)


def loss(model: "Seq2Seq", params, input_ids, attention_mask, labels, *, train: bool = False, rngs=None,
         dropout_rate=None):
  """Token cross-entropy of `labels` given the source, the decoder reading the labels shifted right.

  The value transformers' T5ForConditionalGeneration returns as `loss` for the same `labels`
  (padding marked IGNORE, i.e. -100, is not counted).

  Args:
    model: a Seq2Seq module.
    params: its parameters (the inner dict).
    input_ids, attention_mask: (B, S) source ids and padding mask.
    labels: (B, T) target ids, IGNORE where nothing is to be predicted.
    train: enables dropout (then `rngs={"dropout": key}`).
    rngs: the apply's rngs.
    dropout_rate: in place of the config's (may be traced).

  Returns:
    The mean over counted labels (scalar float32).
  """
  cfg = model.cfg
  decoder_input_ids = shift_right(labels, cfg.decoder_start_token_id, cfg.pad_token_id)
  logits = model.apply({"params": params}, input_ids, attention_mask, decoder_input_ids, train=train,
                       dropout_rate=dropout_rate, rngs=rngs)
  return target_loss(logits, labels)


def cross_attention_maps(model: Seq2Seq, params, input_ids, attention_mask, decoder_input_ids):
  """Each decoder layer's cross-attention probabilities, (layers, B, heads, T, S): where each target token looks.

  Recomputed from the queries' inputs (captured) and the query and key kernels, as the shared
  attention forms them; padded source positions get zero.
  """
  cfg = model.cfg
  if cfg.scan_layers:
    raise ValueError("cross_attention_maps reads the Python-loop layout (scan_layers=False)")
  mask = jnp.asarray(attention_mask).astype(bool)
  encoded = model.apply({"params": params}, input_ids, attention_mask, method=Seq2Seq.encode)
  _, inter = model.apply({"params": params}, input_ids, attention_mask, decoder_input_ids, mutable=["intermediates"])
  maps = []
  for i in range(cfg.decoder_layers):
    attn = params["decoder"][f"layer_{i}"]["cross_attention"]
    h = inter["intermediates"]["decoder"][f"layer_{i}"]["cross_attention_input"][0]  # (B, T, d_model), normed
    q = jnp.einsum("bte,ehd->bhtd", h, attn["query"]["kernel"])
    k = jnp.einsum("bse,ehd->bhsd", encoded, attn["key"]["kernel"])
    if cfg.use_bias:
      q = q + attn["query"]["bias"][None, :, None, :]
      k = k + attn["key"]["bias"][None, :, None, :]
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k) * (1.0 if cfg.positions == "relative" else cfg.d_kv ** -0.5)
    scores = jnp.where(mask[:, None, None, :], scores, -jnp.inf)
    maps.append(jax.nn.softmax(scores, axis=-1))
  return jnp.stack(maps)


# ---------------------------------------------------------------------------------------
# Generation: the source encoded once, then one compiled lax.while_loop per method.


class SampleCarry(NamedTuple):
  """What greedy decoding and sampling carry from one new token to the next (B sources, N new tokens)."""

  step: jax.Array  # new tokens chosen so far (scalar)
  tokens: jax.Array  # (B, 1 + N): the start token, the new ones, pad after the end
  unfinished: jax.Array  # (B,) no end-of-sequence yet
  logits: jax.Array  # (B, vocab) for the next token
  state: DecodeState


class BeamCarry(NamedTuple):
  """What beam search carries, under transformers' names where it has them: B sources, K beams, L = 1 + N positions."""

  step: jax.Array  # new tokens in every open beam (scalar)
  running: jax.Array  # (B, K, L) the open beams (running_sequences)
  running_scores: jax.Array  # (B, K) their summed log-probabilities (running_beam_scores)
  finished: jax.Array  # (B, K, L) the best finished hypotheses (sequences)
  scores: jax.Array  # (B, K) their length-penalised scores, NEG_INF where none yet (beam_scores)
  done: jax.Array  # (B, K) the slot holds a finished hypothesis (is_sent_finished)
  lengths: jax.Array  # (B, K) the slot's new tokens, end-of-sequence included
  improvable: jax.Array  # (B,) an open beam may still beat a finished one (is_early_stop_heuristic_unsatisfied)
  all_stopped: jax.Array  # () every candidate of the last step stopped (next_token_hits_stopping_criteria)
  logits: jax.Array  # (B * K, vocab) for each open beam's next token
  state: DecodeState


def _start(model: "Seq2Seq", params, input_ids, attention_mask, copies: int, length: int):
  """Encodes the source once and decodes the start token: (logits (B * copies, V), DecodeState, source mask).

  Each source row is repeated `copies` times (the beams) after encoding; the first decode
  projects every layer's cross-attention keys and values, which the state then holds.
  """
  cfg = model.cfg
  encoded = model.apply({"params": params}, input_ids, attention_mask, method=Seq2Seq.encode)  # (B, S, E)
  encoded, mask = jnp.repeat(encoded, copies, axis=0), jnp.repeat(attention_mask, copies, axis=0)
  start = jnp.full((encoded.shape[0], 1), cfg.decoder_start_token_id, jnp.int32)
  state = model.init_state(encoded.shape[0], length)
  logits, state = model.apply({"params": params}, start, encoded, mask, state=state, cache_index=0,
                              method=Seq2Seq.decode)
  return logits[:, -1], state, mask


def _decode_next(model: "Seq2Seq", params, tokens, state: DecodeState, index, mask):
  """The next logits (B, V) after `tokens` (B,) at target position `index`, and the updated state."""
  logits, state = model.apply({"params": params}, tokens[:, None], None, mask, state=state, cache_index=index,
                              method=Seq2Seq.decode)
  return logits[:, -1], state


def sample(model: "Seq2Seq", params, input_ids, attention_mask, key, max_new_tokens: int, temperature=0.0,
           top_k: int = 0, top_p=1.0):
  """Greedy decoding (temperature 0) or sampling, as transformers' `generate` with num_beams=1.

  A pure function (no jit of its own). Rows that reached end-of-sequence get the pad token;
  the loop stops when every row has.

  Args:
    model, params: a Seq2Seq and its parameters (the inner dict).
    input_ids, attention_mask: (B, S) source ids and padding mask.
    key: the sampling key (token i is drawn with fold_in(key, i)).
    max_new_tokens: N.
    temperature, top_k, top_p: as research.models.gpt2's sampler (a Python 0 temperature
      compiles a greedy-only program).

  Returns:
    ((B, 1 + N) int32 tokens, the start token first; the used length 1 + new tokens written).
  """
  cfg = model.cfg
  b, n = input_ids.shape[0], max_new_tokens
  logits, state, mask = _start(model, params, input_ids, attention_mask, 1, n + 1)
  tokens = jnp.full((b, 1 + n), cfg.pad_token_id, jnp.int32).at[:, 0].set(cfg.decoder_start_token_id)
  choose = gpt2._choose  # pylint: disable=protected-access  # the language models' one sampler

  def step(c: SampleCarry) -> SampleCarry:
    token = choose(c.logits, jax.random.fold_in(key, c.step), temperature, top_k, top_p)  # (B,)
    token = jnp.where(c.unfinished, token, cfg.pad_token_id).astype(jnp.int32)
    tokens = jax.lax.dynamic_update_slice_in_dim(c.tokens, token[:, None], c.step + 1, axis=1)
    logits, state = _decode_next(model, params, token, c.state, c.step + 1, mask)
    return SampleCarry(c.step + 1, tokens, c.unfinished & (token != cfg.eos_token_id), logits, state)

  carry = SampleCarry(jnp.int32(0), tokens, jnp.ones((b,), bool), logits, state)
  carry = jax.lax.while_loop(lambda c: (c.step < n) & jnp.any(c.unfinished), step, carry)
  return carry.tokens, carry.step + 1


def _gather(x, index):
  """x (B, M, ...) at index (B, K) along its second axis: (B, K, ...)."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(model: "Seq2Seq", params, input_ids, attention_mask, max_new_tokens: int, num_beams: int,
                length_penalty=1.0, early_stopping: bool | str = False):
  """Beam search as transformers' `generate` runs it (its vectorised beam search), in one `lax.while_loop`.

  Each step takes the 2K best continuations of the K open beams by summed log-probability;
  those ending in end-of-sequence (or at the last position) among the first K become
  hypotheses scored sum / new_tokens^length_penalty, of which each source keeps the K best;
  the K best that did not end stay open. A source stops taking hypotheses once its best open
  beam, scored at its current length, cannot beat its worst kept hypothesis (`early_stopping`
  False), or once it holds K (True); "never" scores the open beam at the full length when
  length_penalty > 0. The decoder's KV caches follow their beams.

  Args:
    model, params: a Seq2Seq and its parameters (the inner dict).
    input_ids, attention_mask: (B, S) source ids and padding mask.
    max_new_tokens: N.
    num_beams: K.
    length_penalty: the exponent of the length that divides a hypothesis' score (may be traced).
    early_stopping: False, True or "never", as transformers.

  Returns:
    ((B, 1 + N) int32 best hypotheses, the start token first; the used length 1 + the longest's new tokens).
  """
  cfg = model.cfg
  b, k, n = input_ids.shape[0], num_beams, max_new_tokens
  length = 1 + n
  keep = 2 * k  # transformers' beams_to_keep with one end-of-sequence token
  logits, state, mask = _start(model, params, input_ids, attention_mask, k, length)
  # transformers fills unwritten positions with `pad_token_id or eos_token_id`: the end token where pad is 0.
  fill = cfg.pad_token_id or cfg.eos_token_id
  running = jnp.full((b, k, length), fill, jnp.int32).at[:, :, 0].set(cfg.decoder_start_token_id)
  penalty = jnp.asarray(length_penalty, jnp.float32)
  neg = jnp.float32(NEG_INF)
  cache_axis = 1 if cfg.scan_layers else 0  # the cache's batch axis, after the layers' under scan_layers

  def step(c: BeamCarry) -> BeamCarry:
    cur = c.step + 1  # tokens in each open beam
    vocab = c.logits.shape[-1]
    logp = jax.nn.log_softmax(c.logits).reshape(b, k, vocab) + c.running_scores[..., None]  # (B, K, V)
    top_scores, top_index = jax.lax.top_k(logp.reshape(b, k * vocab), keep)  # (B, 2K)
    origin, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    candidates = jax.lax.dynamic_update_slice_in_dim(_gather(c.running, origin), token[..., None], cur, axis=2)
    stopped = (token == cfg.eos_token_id) | (cur + 1 >= length)  # (B, 2K)
    # The K best candidates that did not stop stay open.
    open_scores = top_scores + stopped.astype(jnp.float32) * neg
    chosen = jax.lax.top_k(open_scores, k)[1]  # (B, K)
    running, running_scores = _gather(candidates, chosen), _gather(open_scores, chosen)
    rows = (jnp.arange(b)[:, None] * k + _gather(origin, chosen)).reshape(-1)  # (B * K,) each open beam's parent
    cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=cache_axis), c.state.cache)
    # Candidates among the first K that stopped become hypotheses, if they beat the kept ones.
    just = stopped & (jnp.arange(keep) < k)[None]
    scored = top_scores / cur.astype(jnp.float32) ** penalty
    if early_stopping is True:
      scored = scored + jnp.all(c.done, axis=-1, keepdims=True).astype(jnp.float32) * neg
    scored = scored + (~c.improvable[:, None]).astype(jnp.float32) * neg
    scored = scored + (~just).astype(jnp.float32) * neg
    best = jax.lax.top_k(jnp.concatenate([c.scores, scored], axis=1), k)[1]  # (B, K) of K + 2K
    pick = lambda old, new: _gather(jnp.concatenate([old, new], axis=1), best)
    finished, scores = pick(c.finished, candidates), pick(c.scores, scored)
    done, lengths = pick(c.done, just), pick(c.lengths, jnp.broadcast_to(cur, just.shape))
    # Can an open beam still beat the worst kept hypothesis? (transformers' early-stop heuristic)
    hypothetical = cur.astype(jnp.float32)
    if early_stopping == "never":
      hypothetical = jnp.where(penalty > 0, jnp.float32(n), hypothetical)
    best_open = running_scores[:, :1] / hypothetical ** penalty  # (B, 1)
    worst_kept = jnp.where(done, jnp.min(scores, axis=1, keepdims=True), neg)  # (B, K)
    improvable = c.improvable & jnp.any(best_open > worst_kept, axis=-1)
    new = jax.lax.dynamic_index_in_dim(running, cur, axis=2, keepdims=False).reshape(-1)  # (B * K,)
    logits, state = _decode_next(model, params, new, DecodeState(cache, c.state.cross), cur, mask)
    return BeamCarry(cur, running, running_scores, finished, scores, done, lengths, improvable, jnp.all(stopped),
                     logits, state)

  def more(c: BeamCarry):
    full = jnp.all(c.done) if early_stopping is True else jnp.bool_(False)
    return (c.step < n) & jnp.any(c.improvable) & ~full & ~c.all_stopped

  carry = BeamCarry(jnp.int32(0), running, jnp.zeros((b, k)).at[:, 1:].set(neg), running, jnp.full((b, k), neg),
                    jnp.zeros((b, k), bool), jnp.zeros((b, k), jnp.int32), jnp.ones((b,), bool), jnp.bool_(False),
                    logits, state)
  carry = jax.lax.while_loop(more, step, carry)
  return carry.finished[:, 0], 1 + jnp.max(carry.lengths[:, 0])


@functools.lru_cache(maxsize=32)
def _compiled_generate(model: "Seq2Seq", max_new_tokens: int, num_beams: int, top_k: int, greedy: bool,
                       early_stopping: bool | str):
  """One jitted program per (model, max_new_tokens, method); every source is padded to the same length."""

  @jax.jit
  def run(params, input_ids, attention_mask, key, temperature, top_p, length_penalty):
    if num_beams > 1:
      return beam_search(model, params, input_ids, attention_mask, max_new_tokens, num_beams, length_penalty,
                         early_stopping)
    return sample(model, params, input_ids, attention_mask, key, max_new_tokens, 0.0 if greedy else temperature,
                  top_k, top_p)

  return run


def generate(model: "Seq2Seq", params, input_ids, attention_mask=None, max_new_tokens: int = 20, num_beams: int = 1,
             *, key=None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, length_penalty: float = 1.0,
             early_stopping: bool | str = False):
  """Target tokens for each source, as transformers' `generate` returns them: the start token, the new tokens,
  then padding after end-of-sequence, as long as the longest row needs.

  The source is padded to the config's max_source_length, so one compiled program serves every
  source length (per batch size, max_new_tokens and method).

  Args:
    model: a Seq2Seq.
    params: its parameters (the inner dict).
    input_ids: (B, S) source ids, S <= max_source_length.
    attention_mask: (B, S), True (or 1) at tokens, False at padding; None: no padding.
    max_new_tokens: N <= max_target_length.
    num_beams: 1 (greedy, or sampling with temperature > 0) or the beams of beam search.
    key: the sampling key (needed when temperature > 0).
    temperature, top_k, top_p: sampling controls (see research.models.gpt2.generate).
    length_penalty, early_stopping: beam search's (see `beam_search`).

  Returns:
    (B, 1 + new tokens) int32 numpy array.

  Raises:
    ValueError: for a source longer than max_source_length, ids outside the vocabulary, a mask of
      another shape, max_new_tokens out of range, num_beams < 1, sampling with beams or without
      a key, or sampling controls out of range.
  """
  cfg = model.cfg
  ids = np.asarray(input_ids)
  if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"input_ids must be a (batch, length) array of token ids, got shape {ids.shape} of {ids.dtype}")
  b, s = ids.shape
  if s > cfg.max_source_length:
    raise ValueError(f"a source of {s} tokens is longer than max_source_length {cfg.max_source_length}")
  if ids.min() < 0 or ids.max() >= cfg.vocab_size:
    raise ValueError(f"token id {int(ids.min() if ids.min() < 0 else ids.max())} is outside the vocabulary of "
                     f"{cfg.vocab_size}")
  mask = np.ones((b, s), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
  if mask.shape != ids.shape:
    raise ValueError(f"attention_mask has shape {mask.shape}; input_ids have {ids.shape}")
  if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or not (
      1 <= max_new_tokens <= cfg.max_target_length):
    raise ValueError(f"max_new_tokens must be an integer in [1, max_target_length={cfg.max_target_length}], "
                     f"got {max_new_tokens!r}")
  if isinstance(num_beams, bool) or int(num_beams) != num_beams or num_beams < 1:
    raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
  if not (math.isfinite(float(temperature)) and float(temperature) >= 0):
    raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
  if int(top_k) != top_k or top_k < 0 or not 0.0 <= float(top_p) <= 1.0:
    raise ValueError(f"top_k must be an integer >= 0 and top_p in [0, 1], got {top_k!r}, {top_p!r}")
  if temperature > 0 and (num_beams > 1 or key is None):
    raise ValueError("sampling (temperature > 0) needs a key and num_beams=1")
  if early_stopping not in (True, False, "never"):
    raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
  pad = cfg.max_source_length - s
  ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=cfg.pad_token_id).astype(np.int32)
  mask = np.pad(mask, ((0, 0), (0, pad)))
  run = _compiled_generate(model, int(max_new_tokens), int(num_beams), int(top_k), float(temperature) == 0.0,
                           early_stopping)
  tokens, used = run(params, ids, mask, key if key is not None else jax.random.key(0), jnp.float32(temperature),
                     jnp.float32(top_p), jnp.float32(length_penalty))
  return np.asarray(tokens)[:, :int(used)]


# ---------------------------------------------------------------------------------------
# Weights to and from transformers' T5ForConditionalGeneration: one explicit name table.


def _linear_in(heads: int, d: int):
  """A torch Linear (H * d, E) weight -> our query/key/value kernel (E, H, d), and back."""
  return (lambda w: w.T.reshape(w.shape[1], heads, d)), (lambda k: k.reshape(k.shape[0], -1).T)


def _linear_out(heads: int, d: int):
  """A torch Linear (E, H * d) weight -> our output kernel (H, d, E), and back."""
  return (lambda w: w.T.reshape(heads, d, w.shape[0])), (lambda k: k.reshape(-1, k.shape[-1]).T)


def _transposed():
  return (lambda w: w.T), (lambda k: k.T)


def _hf_table(cfg: Seq2SeqConfig) -> list[hf.Tensor]:
  """Every tensor of a T5ForConditionalGeneration and its parameter in the Python-loop layout.

  torch's Linear stores (out, in): a Dense kernel transposed. The relative position bias lives
  in transformers' first block of each stack and serves all of them, as ours serves every layer.
  """
  q_in, q_back = _linear_in(cfg.num_heads, cfg.d_kv)
  o_in, o_back = _linear_out(cfg.num_heads, cfg.d_kv)
  t_in, t_back = _transposed()
  ff = ("wi_0", "wi_1", "wo") if cfg.gated else ("wi", "wo")

  def attention(theirs, ours):
    rows = [hf.Tensor(f"{theirs}.{a}.weight", ours + (b, "kernel"), q_in, q_back)
            for a, b in (("q", "query"), ("k", "key"), ("v", "value"))]
    return rows + [hf.Tensor(f"{theirs}.o.weight", ours + ("out", "kernel"), o_in, o_back)]

  def feed_forward(theirs, ours):
    return [hf.Tensor(f"{theirs}.DenseReluDense.{w}.weight", ours + ("mlp", w, "kernel"), t_in, t_back) for w in ff] + [
        hf.Tensor(f"{theirs}.layer_norm.weight", ours + ("mlp_norm", "scale"))]

  table = [hf.Tensor("shared.weight", ("shared", "embedding"))]
  for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
    table.append(hf.Tensor(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                           (stack, "relative_attention_bias", "relative_attention_bias", "embedding")))
    own = "attention" if stack == "encoder" else "self_attention"
    for i in range(n):
      p, ours = f"{stack}.block.{i}.layer.", (stack, f"layer_{i}")
      table += attention(p + "0.SelfAttention", ours + (own,))
      table.append(hf.Tensor(p + "0.layer_norm.weight", ours + (own + "_norm", "scale")))
      if stack == "decoder":
        table += attention(p + "1.EncDecAttention", ours + ("cross_attention",))
        table.append(hf.Tensor(p + "1.layer_norm.weight", ours + ("cross_attention_norm", "scale")))
      table += feed_forward(p + ("2" if stack == "decoder" else "1"), ours)
    table.append(hf.Tensor(f"{stack}.final_layer_norm.weight", (stack, "final_norm", "scale")))
  if not cfg.tie_word_embeddings:
    table.append(hf.Tensor("lm_head.weight", ("lm_head", "kernel"), t_in, t_back))
  return table


def _is_t5(cfg: Seq2SeqConfig) -> bool:
  return (cfg.positions, cfg.norm, cfg.prenorm, cfg.use_bias, cfg.embed_scale) == ("relative", "rms", True, False,
                                                                                    False)


def _config_from_hf(saved: dict, tensors: dict, path: str, overrides: dict) -> Seq2SeqConfig:
  """Our config from transformers' config.json and the checkpoint's tensors.

  Each of transformers' two output-head settings is read from its own source: the scaling from
  the config's `scale_decoder_outputs` (a config written before transformers 5 lacks it, and
  transformers then takes it from `tie_word_embeddings`; so do we), the tying from the weights
  (transformers 5 always ties, unless the checkpoint holds an `lm_head.weight` that differs from
  the shared embedding).
  """
  if saved.get("model_type") != "t5":
    raise ValueError(f"{path}/config.json describes a {saved.get('model_type')!r} model, not t5")
  scale = saved.get("scale_decoder_outputs", saved.get("tie_word_embeddings", True) is not False)
  head = tensors.get("lm_head.weight")
  tied = head is None or np.array_equal(head, tensors.get("shared.weight"))
  fields = dict(vocab_size=saved["vocab_size"], d_model=saved["d_model"], d_kv=saved["d_kv"], d_ff=saved["d_ff"],
                num_layers=saved["num_layers"], num_decoder_layers=saved.get("num_decoder_layers"),
                num_heads=saved["num_heads"],
                relative_attention_num_buckets=saved.get("relative_attention_num_buckets", 32),
                relative_attention_max_distance=saved.get("relative_attention_max_distance", 128),
                layer_norm_epsilon=saved.get("layer_norm_epsilon", 1e-6),
                feed_forward_proj=saved.get("feed_forward_proj", "relu"), tie_word_embeddings=tied,
                scale_decoder_outputs=bool(scale), dropout_rate=0.0,
                pad_token_id=saved.get("pad_token_id", 0), eos_token_id=saved.get("eos_token_id", 1),
                decoder_start_token_id=saved.get("decoder_start_token_id", saved.get("pad_token_id", 0)), **_T5)
  return Seq2SeqConfig(**{**fields, **overrides})


def load_hf(path: str, **overrides) -> tuple[Seq2Seq, dict]:
  """Reads a directory saved by transformers' T5ForConditionalGeneration (config.json + model.safetensors), no torch.

  Args:
    path: the directory.
    **overrides: Seq2SeqConfig fields to replace (max_source_length, attention, dtype, scan_layers, ...).

  Returns:
    (Seq2Seq module, params), params the dict to pass as {"params": params}.

  Raises:
    ValueError: without config.json or model.safetensors, for another architecture, or when a
      tensor is missing or has another shape (the message names it).
  """
  saved, weights_path = hf.saved_config(path, "T5")
  tensors = hf.load_weights(weights_path)
  for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):  # copies of shared.weight, if any
    if name in tensors and not np.array_equal(tensors[name], tensors.get("shared.weight")):
      raise ValueError(f"tensor {name} in {weights_path} differs from shared.weight: this model has one input "
                       f"embedding")
  cfg = _config_from_hf(saved, tensors, path, overrides)
  loop_cfg = dataclasses.replace(cfg, scan_layers=False)  # the table's layout: one subtree per layer
  ids = jnp.zeros((1, 1), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(lambda: Seq2Seq(loop_cfg).init(jax.random.key(0), ids, ids, ids)))
  params = hf.read(_hf_table(cfg), tensors, shapes["params"], weights_path)
  if cfg.scan_layers:
    params = dict(params, encoder=layers.stack_blocks(params["encoder"], "layer", cfg.num_layers),
                  decoder=layers.stack_blocks(params["decoder"], "layer", cfg.decoder_layers))
  return Seq2Seq(cfg), params


def save_hf(model: Seq2Seq, params, path: str) -> None:
  """Writes config.json + model.safetensors that transformers' T5ForConditionalGeneration.from_pretrained loads.

  Raises:
    ValueError: for a configuration T5 cannot express (Vaswani's post-norm, biases, sinusoidal
      positions).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  cfg = model.cfg
  if not _is_t5(cfg):
    raise ValueError("only T5 configurations (relative positions, pre-RMSNorm, no biases) have a transformers layout")
  params = nn.unbox(params)
  if cfg.scan_layers:
    params = {k: layers.unstack_blocks(v, "layer") if k in ("encoder", "decoder") else v for k, v in params.items()}
  os.makedirs(path, exist_ok=True)
  save_file(hf.write(_hf_table(cfg), params), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  saved = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": cfg.vocab_size,
           "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff, "num_layers": cfg.num_layers,
           "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.num_heads,
           "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
           "relative_attention_max_distance": cfg.relative_attention_max_distance,
           "dropout_rate": cfg.dropout_rate, "layer_norm_epsilon": cfg.layer_norm_epsilon,
           "initializer_factor": 1.0, "feed_forward_proj": cfg.feed_forward_proj, "is_encoder_decoder": True,
           "use_cache": True, "pad_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id,
           "decoder_start_token_id": cfg.decoder_start_token_id, "tie_word_embeddings": cfg.tie_word_embeddings,
           "scale_decoder_outputs": cfg.scale_decoder_outputs}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(saved, f, indent=2)


def from_hf(path: str, **overrides) -> tuple[Seq2Seq, dict]:
  """`load_hf` under the name of the other direction's `to_hf`."""
  return load_hf(path, **overrides)


def to_hf(params, cfg: Seq2SeqConfig, path: str) -> None:
  """`save_hf` for a config rather than a module."""
  save_hf(Seq2Seq(cfg), params, path)
