"""Attention: the plain reference, a blockwise FlashAttention, RoPE, ALiBi and multi-head attention.

Arrays are (batch, time, heads, head_dim), as in `jax.nn.dot_product_attention`. Keys and
values may have fewer heads than queries (grouped-query / multi-query attention): each key
head serves num_heads / num_kv_heads query heads.

  dot_product_attention  softmax(Q K^T / sqrt(d) + bias) V with causal and padding masks: the
                         reference every other implementation is tested against, and the one
                         path with dropout on the attention probabilities.
  dense_attention        the reference's values and gradients, fast to train on CPUs: causal
                         query blocks that skip the keys above the diagonal, and a backward
                         written from the saved probabilities (`jax.custom_vjp`).
  flash_attention        FlashAttention's algorithm (Dao et al. 2022) in JAX: an online softmax
                         over key blocks in a `lax.scan`, never materialising the T x S matrix;
                         a `jax.custom_vjp` whose backward recomputes each block's probabilities
                         from the saved log-sum-exp. Memory is linear in the length.
  apply_rope             rotary position embedding (Su et al. 2021).
  alibi_slopes           ALiBi's per-head slopes of a linear distance penalty (Press et al. 2022).
  choose, attend         one of the implementations above (or cuDNN and the Pallas kernels on
                         GPU/TPU) by name; "auto" picks the platform's (dense on CPU, cuDNN or
                         XLA on GPUs).
  MultiHeadAttention     self- and cross-attention: projections, positions, the KV cache and a
                         kernel behind `config.attention`; the one attention of GPT-2, BERT,
                         the DiT and the U-Net.

Masks: `mask` is a boolean key mask (batch, kv_len), True where a key may be attended to
(padding is False). `prefix` (batch,) widens a causal mask into a prefix LM's (Raffel et al.
2020): the keys at positions below prefix[b] are visible to every query of row b, the rest stay
causal; the reference, "xla" and "cudnn" take it (like a score bias). Masked scores get MASK_VALUE, a large finite negative number, so a row
with no valid key attends uniformly instead of producing NaN, in every implementation alike.

Attention dropout (BERT's attention_probs_dropout_prob) drops probabilities of the plain path
only. The other implementations never form the probabilities, so training with a rate that is
not the Python number 0 is refused there with a ValueError rather than quietly falling back to
the plain path and its (T, S) memory; evaluation (no dropout key) runs on any of them. "auto"
is the one name that picks the reference for a call that drops probabilities.
"""

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import layers

MASK_VALUE = -1e30
IMPLEMENTATIONS = ("auto", "reference", "dense", "flash", "xla", "cudnn", "pallas")
POSITIONS = ("learned", "rope", "alibi", "none")
LAYOUTS = ("separate", "fused")


def _repeat_kv(x, num_heads: int):
  """(B, S, Hkv, D) -> (B, S, H, D): each key/value head serves H / Hkv query heads."""
  groups = num_heads // x.shape[2]
  return x if groups == 1 else jnp.repeat(x, groups, axis=2)


def _check(q, k, v):
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
    raise ValueError(f"expected q (B, T, H, D) and k, v (B, S, Hkv, D); got {q.shape}, {k.shape}, {v.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value heads")


def _bias(q_pos, k_pos, causal: bool, key_valid, slopes, extra=None, prefix=None):
  """Additive scores for query positions (Tq,) and key positions (Sk,): (B|1, H|1, Tq, Sk).

  `extra` is the caller's own (B|1, H|1, Tq, Sk) score bias (e.g. T5's relative positions), added
  before the masks. `prefix` (B,) makes the keys at positions below it visible to every query of
  its row under the causal mask.
  """
  bias = jnp.zeros((1, 1, q_pos.shape[0], k_pos.shape[0]), jnp.float32)
  if extra is not None:
    bias = bias + extra.astype(jnp.float32)
  if slopes is not None:
    distance = (q_pos[:, None] - k_pos[None, :]).astype(jnp.float32)  # (Tq, Sk), >= 0 for past keys
    bias = bias - slopes[None, :, None, None] * jnp.abs(distance)[None, None]
  allowed = jnp.ones((1, 1, q_pos.shape[0], k_pos.shape[0]), bool)
  if causal:
    visible = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, Tq, Sk)
    if prefix is not None:
      visible = visible | (k_pos[None, None, None, :] < jnp.asarray(prefix)[:, None, None, None])  # (B, 1, Tq, Sk)
    allowed = allowed & visible
  if key_valid is not None:
    allowed = allowed & key_valid[:, None, None, :]
  return jnp.where(allowed, bias, MASK_VALUE)


def _q_positions(t: int, s: int, q_start):
  return jnp.arange(t) + (s - t if q_start is None else q_start)


def _grouped(x, num_kv_heads: int):
  """(B, T, H, D) -> (B, Hkv, G, T, D), G = H / Hkv: the query heads of each key/value head together."""
  b, t, h, d = x.shape
  return jnp.transpose(x.reshape(b, t, num_kv_heads, h // num_kv_heads, d), (0, 2, 3, 1, 4))


def _ungrouped(x):
  """(B, Hkv, G, T, D) -> (B, T, H, D), the inverse of `_grouped`."""
  b, hkv, g, t, d = x.shape
  return jnp.transpose(x, (0, 3, 1, 2, 4)).reshape(b, t, hkv * g, d)


def _rows(x):
  """(B, Hkv, G, T, X) -> (B, Hkv, G * T, X): one matrix of rows per key/value head."""
  return x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])


def _grouped_bias(bias, num_kv_heads: int, groups: int):
  """A (B|1, H|1, T, S) bias -> (B|1, Hkv|1, G * T, S), laid out like the rows of `_rows`."""
  b, h, t, s = bias.shape
  if groups == 1:
    return bias
  if h == 1:
    return jnp.broadcast_to(bias[:, :, None], (b, 1, groups, t, s)).reshape(b, 1, groups * t, s)
  return bias.reshape(b, num_kv_heads, groups * t, s)


def _grouped_attention(q, k, v, *, causal, mask, alibi, q_start, bias=None, prefix=None, dropout_rate=0.0,
                       dropout_rng=None):
  """softmax(Q K^T / sqrt(d) + bias) V for q (B, T, H, D) and k, v (B, Hkv, S, D): (B, T, H, D).

  Heads lead the time axis in every product, (B, Hkv, G * T, D) against (B, Hkv, S, D): each
  is a batch of plain matrix products. Contracting (B, T, H, D) arrays directly, in the layout
  of the projections, makes XLA:CPU run the same products about 3x slower.
  """
  t, h, d = q.shape[1], q.shape[2], q.shape[3]
  hkv, s = k.shape[1], k.shape[2]
  scores = jnp.einsum("bkmd,bksd->bkms", _rows(_grouped(q, hkv)), k, preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(d)
  bias = _bias(_q_positions(t, s, q_start), jnp.arange(s), causal, mask, alibi, bias, prefix)  # (B|1, H|1, T, S)
  probs = jax.nn.softmax(scores + _grouped_bias(bias, hkv, h // hkv), axis=-1)  # (B, Hkv, G * T, S)
  if dropout_rng is not None:
    probs = layers.dropout(probs, dropout_rate, dropout_rng)  # each row sums to 1 in expectation only
  out = jnp.einsum("bkms,bksd->bkmd", probs.astype(v.dtype), v)
  return _ungrouped(out.reshape(out.shape[0], hkv, h // hkv, t, d)).astype(q.dtype)


def dot_product_attention(q, k, v, *, causal: bool = False, mask=None, alibi=None, q_start=None, bias=None,
                          prefix=None, dropout_rate=0.0, dropout_rng=None):
  """The plain softmax(Q K^T / sqrt(d) + bias) V, materialising the (T, S) scores.

  Args:
    q: (B, T, H, D) queries.
    k, v: (B, S, Hkv, D) keys and values, H divisible by Hkv.
    causal: query i (at position q_start + i) attends to keys j <= q_start + i.
    mask: optional (B, S) boolean, True where a key is valid.
    alibi: optional (H,) ALiBi slopes (see `alibi_slopes`).
    q_start: the key position of the first query (may be traced: a KV cache's index); by
      default S - T, the queries being the last T positions.
    bias: optional (B|1, H|1, T, S) float scores added before the masks and the softmax (e.g.
      T5's relative position bias); gradients flow into it.
    prefix: optional (B,) integers: with `causal`, the keys at positions < prefix[b] are visible
      to every query of row b (a prefix LM's bidirectional prefix); the rest stay causal.
    dropout_rate: dropout on the probabilities (a Python float or a traced scalar), applied
      only with a `dropout_rng`, i.e. in training.
    dropout_rng: the key of the dropout mask; None: no dropout.

  Returns:
    (B, T, H, D) in q's dtype; scores and softmax in float32.
  """
  _check(q, k, v)
  swap = lambda x: jnp.swapaxes(x, 1, 2)  # (B, Hkv, S, D)
  return _grouped_attention(q, swap(k), swap(v), causal=causal, mask=mask, alibi=alibi, q_start=q_start, bias=bias,
                            prefix=prefix, dropout_rate=dropout_rate, dropout_rng=dropout_rng)


def cached_attention(q, k, v, *, causal: bool = False, mask=None, alibi=None, q_start=None, bias=None, prefix=None):
  """`dot_product_attention` against keys and values in the KV cache's layout, (B, Hkv, S, D).

  The queries of each key/value head are grouped, (B, Hkv, H / Hkv * T, D), so neither the
  cache nor a repeat of it is copied: each head's (S, D) keys and values are read where they lie.

  Args:
    q: (B, T, H, D) queries.
    k, v: (B, Hkv, S, D) cached keys and values.
    causal, mask, alibi, q_start, bias, prefix: as in `dot_product_attention`.

  Returns:
    (B, T, H, D) in q's dtype; scores and softmax in float32.
  """
  b, t, h, d = q.shape
  if k.ndim != 4 or k.shape != v.shape or k.shape[0] != b or k.shape[-1] != d or h % k.shape[1]:
    raise ValueError(f"expected q (B, T, H, D) and cached k, v (B, Hkv, S, D); got {q.shape}, {k.shape}, {v.shape}")
  return _grouped_attention(q, k, v, causal=causal, mask=mask, alibi=alibi, q_start=q_start, bias=bias,
                            prefix=prefix)


# ---------------------------------------------------------------------------------------
# Dense attention for training on CPUs: causal query blocks and a backward from the saved
# probabilities.


class _DenseOptions(NamedTuple):
  causal: bool
  blocks: tuple  # ((first query, end query, end key), ...), static
  offset: int | None  # the key position of the first query when static; None: q_start is traced


def _dense_blocks(t: int, s: int, causal: bool, block_size: int, offset: int | None, max_blocks: int = 16):
  """Query blocks [q0, q1) and the keys [0, k1) each can see: under a causal mask, none above the diagonal.

  `offset` is the key position of the first query (None: traced, so one block of all keys).
  """
  if not causal or offset is None or offset < 0 or t <= block_size:
    return ((0, t, s),)
  block = max(block_size, -(-t // max_blocks))
  blocks = []
  for q0 in range(0, t, block):
    q1 = min(t, q0 + block)
    blocks.append((q0, q1, min(s, offset + q1)))
  return tuple(blocks)


def _dense_forward(options: _DenseOptions, q, k, v, key_valid, slopes, q_start):
  """(out (B, Hkv, G, T, D), residuals): per query block, softmax(Q K^T / sqrt(d) + bias) V."""
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  qg = _grouped(q, hkv) * jnp.asarray(1.0 / math.sqrt(d), q.dtype)  # (B, Hkv, G, T, D), scaled
  kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # (B, Hkv, S, D)
  q_pos = _q_positions(t, s, q_start if options.offset is None else options.offset)
  outs, probs = [], []
  for q0, q1, k1 in options.blocks:
    scores = jnp.einsum("bkmd,bksd->bkms", _rows(qg[:, :, :, q0:q1]), kh[:, :, :k1],
                        preferred_element_type=jnp.float32)
    valid = None if key_valid is None else key_valid[:, :k1]
    bias = _bias(q_pos[q0:q1], jnp.arange(k1), options.causal, valid, slopes)
    p = jax.nn.softmax(scores + _grouped_bias(bias, hkv, g), axis=-1)  # (B, Hkv, G * (q1 - q0), k1)
    out = jnp.einsum("bkms,bksd->bkmd", p.astype(v.dtype), vh[:, :, :k1])
    outs.append(out.reshape(b, hkv, g, q1 - q0, d))
    probs.append(p)
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
  return out, (qg, kh, vh, probs, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense(options: _DenseOptions, q, k, v, key_valid, slopes, q_start):
  return _ungrouped(_dense_forward(options, q, k, v, key_valid, slopes, q_start)[0]).astype(q.dtype)


def _dense_fwd(options, q, k, v, key_valid, slopes, q_start):
  out, residuals = _dense_forward(options, q, k, v, key_valid, slopes, q_start)
  return _ungrouped(out).astype(q.dtype), (residuals, key_valid, slopes, q_start)


def _dense_bwd(options, residuals, d_out):
  """dS = P * (dP - rowsum(dO * O)), dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d), dV = P^T dO, per block."""
  (qg, kh, vh, probs, out), key_valid, slopes, q_start = residuals
  d = qg.shape[-1]
  f32 = lambda x: x.astype(jnp.float32)
  d_out = _grouped(f32(d_out), kh.shape[1])  # (B, Hkv, G, T, D)
  delta = jnp.sum(d_out * f32(out), axis=-1, keepdims=True)  # (B, Hkv, G, T, 1)
  # dK and dV are formed transposed, dK^T = Q^T dS and dV^T = dO^T P, from explicitly transposed
  # (D, rows) copies of Q and dO: every product then contracts its left operand's last axis,
  # which XLA:CPU's fast matrix kernels take; contracting both operands' row axis (dS^T Q)
  # falls back to a several times slower path. The barrier keeps XLA from folding the
  # transposes back into the products.
  transposed = lambda x: jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))
  q_t = transposed(f32(qg))  # (B, Hkv, G, D, T)
  d_k_t = jnp.zeros(kh.shape[:2] + (d, kh.shape[2]), jnp.float32)  # (B, Hkv, D, S)
  d_v_t = jnp.zeros(d_k_t.shape, jnp.float32)
  d_qs = []
  for (q0, q1, k1), p in zip(options.blocks, probs):
    d_o = _rows(d_out[:, :, :, q0:q1])  # (B, Hkv, G * (q1 - q0), D)
    d_p = jnp.einsum("bkmd,bksd->bkms", d_o, f32(vh[:, :, :k1]))
    d_s = p * (d_p - _rows(delta[:, :, :, q0:q1]))
    d_q = jnp.einsum("bkms,bksd->bkmd", d_s, f32(kh[:, :, :k1]))
    d_qs.append(d_q.reshape(d_q.shape[:2] + (-1, q1 - q0, d)))
    q_block_t = jnp.swapaxes(q_t[..., q0:q1], 2, 3).reshape(d_k_t.shape[:2] + (d, -1))  # (B, Hkv, D, G * m)
    d_k_block = jnp.einsum("bkdm,bkms->bkds", q_block_t, d_s)  # qg holds the 1/sqrt(d)
    d_v_block = jnp.einsum("bkdm,bkms->bkds", transposed(d_o), p)
    if k1 == kh.shape[2]:
      d_k_t, d_v_t = d_k_t + d_k_block, d_v_t + d_v_block
    else:
      d_k_t, d_v_t = d_k_t.at[..., :k1].add(d_k_block), d_v_t.at[..., :k1].add(d_v_block)
  d_q = (d_qs[0] if len(d_qs) == 1 else jnp.concatenate(d_qs, axis=3)) * (1.0 / math.sqrt(d))
  untransposed = lambda x, like: jnp.transpose(x, (0, 3, 1, 2)).astype(like.dtype)  # (B, Hkv, D, S) -> (B, S, Hkv, D)
  d_valid = None if key_valid is None else np.zeros(key_valid.shape, jax.dtypes.float0)
  d_slopes = None if slopes is None else jnp.zeros_like(slopes)  # slopes are fixed, not trained
  d_start = None if q_start is None else np.zeros(np.shape(q_start), jax.dtypes.float0)
  return _ungrouped(d_q).astype(qg.dtype), untransposed(d_k_t, kh), untransposed(d_v_t, vh), d_valid, d_slopes, d_start


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_attention(q, k, v, *, causal: bool = False, mask=None, alibi=None, q_start=None, block_size: int = 64):
  """`dot_product_attention`'s values and gradients, fast to train on CPUs; no dropout.

  Like the reference it materialises the probabilities (memory quadratic in the length), but:
  heads lead time in every product (see `_grouped_attention`); under a causal mask the queries
  go in blocks of `block_size`, each against only the keys it can see, which skips nearly half
  of the products; and a `jax.custom_vjp` computes the gradients from the saved probabilities
  with one product each for dQ, dK, dV and dP. A traced `q_start` (a KV cache's index) makes
  the block boundaries unknown at trace time, and a padding mask may leave a row without a
  visible key (which attends uniformly to all keys): then all queries form one block.

  Args:
    q, k, v, causal, mask, alibi, q_start: as in `dot_product_attention`.
    block_size: queries per causal block (at most 16 blocks: longer sequences get larger ones).

  Returns:
    (B, T, H, D) in q's dtype; scores and softmax in float32.
  """
  _check(q, k, v)
  t, s = q.shape[1], k.shape[1]
  offset = None
  if q_start is None:
    offset = s - t
  elif isinstance(q_start, (int, np.integer)):
    offset, q_start = int(q_start), None
  # A row whose keys are all masked attends uniformly to all S keys, as in the reference; with a
  # padding mask such rows can occur, so the keys are not split then.
  blocks = _dense_blocks(t, s, causal, max(1, block_size), offset if mask is None else None)
  options = _DenseOptions(causal, blocks, offset)
  if q_start is not None:
    q_start = jnp.asarray(q_start, jnp.int32)
  return _dense(options, q, k, v, mask, alibi, q_start)


# ---------------------------------------------------------------------------------------
# FlashAttention: an online softmax over key blocks, and a recomputing backward pass.


class _Options(NamedTuple):
  causal: bool
  block_size: int


class _Carry(NamedTuple):
  """The online softmax's running state over key blocks (Dao et al., Algorithm 1)."""

  acc: jax.Array  # (B, H, T, D) unnormalised output
  row_max: jax.Array  # (B, H, T) running max of the scores
  row_sum: jax.Array  # (B, H, T) running sum of exp(scores - row_max)


def _blocks(x, block_size: int):
  """(B, S, H, D) -> (S / block, B, block, H, D), S padded up to a multiple of the block."""
  b, s = x.shape[:2]
  n = -(-s // block_size)
  x = jnp.pad(x, ((0, 0), (0, n * block_size - s), (0, 0), (0, 0)))
  return jnp.moveaxis(x.reshape(b, n, block_size, *x.shape[2:]), 1, 0)


def _block_bias(options: _Options, t: int, s: int, block: int, j, key_valid, slopes, q_start):
  """Scores' bias for key block j: (B|1, H|1, T, block); padding keys beyond S get -inf."""
  k_pos = j * block + jnp.arange(block)
  valid = None
  if key_valid is not None:
    valid = jax.lax.dynamic_slice_in_dim(jnp.pad(key_valid, ((0, 0), (0, block))), j * block, block, axis=1)
  bias = _bias(_q_positions(t, s, q_start), k_pos, options.causal, valid, slopes)
  return jnp.where((k_pos < s)[None, None, None, :], bias, -jnp.inf)


def _flash_forward(options: _Options, q, k, v, key_valid, slopes, q_start):
  """Returns (out (B, T, H, D), (row max, row sum) (B, H, T) each) by one pass over key blocks.

  The softmax statistics are kept as max and sum rather than one log-sum-exp: in a row whose
  keys are all masked, MASK_VALUE + log(S) rounds back to MASK_VALUE in float32.
  """
  b, t, h, d = q.shape
  s, block = k.shape[1], options.block_size
  scale = 1.0 / math.sqrt(d)
  k_blocks, v_blocks = _blocks(k, block), _blocks(v, block)  # (n, B, block, H, D)

  def body(carry: _Carry, xs):
    k_j, v_j, j = xs
    scores = jnp.einsum("bthd,bshd->bhts", q, k_j, preferred_element_type=jnp.float32) * scale
    scores = scores + _block_bias(options, t, s, block, j, key_valid, slopes, q_start)  # (B, H, T, block)
    new_max = jnp.maximum(carry.row_max, jnp.max(scores, axis=-1))
    correction = jnp.exp(carry.row_max - new_max)  # rescales what was summed under the old max
    p = jnp.exp(scores - new_max[..., None])
    acc = carry.acc * correction[..., None] + jnp.einsum("bhts,bshd->bhtd", p, v_j.astype(jnp.float32))
    return _Carry(acc, new_max, carry.row_sum * correction + jnp.sum(p, axis=-1)), None

  init = _Carry(jnp.zeros((b, h, t, d), jnp.float32), jnp.full((b, h, t), -jnp.inf, jnp.float32),
                jnp.zeros((b, h, t), jnp.float32))
  carry, _ = jax.lax.scan(body, init, (k_blocks, v_blocks, jnp.arange(k_blocks.shape[0])))
  out = carry.acc / carry.row_sum[..., None]  # (B, H, T, D)
  return jnp.moveaxis(out, 1, 2).astype(q.dtype), (carry.row_max, carry.row_sum)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(options: _Options, q, k, v, key_valid, slopes, q_start):
  return _flash_forward(options, q, k, v, key_valid, slopes, q_start)[0]


def _flash_fwd(options, q, k, v, key_valid, slopes, q_start):
  out, stats = _flash_forward(options, q, k, v, key_valid, slopes, q_start)
  return out, (q, k, v, key_valid, slopes, q_start, out, stats)


def _flash_bwd(options, residuals, d_out):
  """Dao et al., Algorithm 2: per key block, P = exp(S - max) / sum is recomputed, never stored."""
  q, k, v, key_valid, slopes, q_start, out, (row_max, row_sum) = residuals
  b, t, h, d = q.shape
  s, block = k.shape[1], options.block_size
  scale = 1.0 / math.sqrt(d)
  d_out = d_out.astype(jnp.float32)
  delta = jnp.einsum("bthd,bthd->bht", d_out, out.astype(jnp.float32))  # rowsum(dO * O)
  k_blocks, v_blocks = _blocks(k, block), _blocks(v, block)

  def body(d_q, xs):
    k_j, v_j, j = xs
    scores = jnp.einsum("bthd,bshd->bhts", q, k_j, preferred_element_type=jnp.float32) * scale
    scores = scores + _block_bias(options, t, s, block, j, key_valid, slopes, q_start)
    p = jnp.exp(scores - row_max[..., None]) / row_sum[..., None]  # (B, H, T, block)
    d_v = jnp.einsum("bhts,bthd->bshd", p, d_out)
    d_p = jnp.einsum("bthd,bshd->bhts", d_out, v_j.astype(jnp.float32))
    d_s = p * (d_p - delta[..., None]) * scale
    d_q = d_q + jnp.einsum("bhts,bshd->bthd", d_s, k_j.astype(jnp.float32))
    d_k = jnp.einsum("bhts,bthd->bshd", d_s, q.astype(jnp.float32))
    return d_q, (d_k, d_v)

  d_q, (d_k, d_v) = jax.lax.scan(body, jnp.zeros(q.shape, jnp.float32), (k_blocks, v_blocks,
                                                                          jnp.arange(k_blocks.shape[0])))
  unblock = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, -1, h, d)[:, :s]  # (B, S, H, D)
  d_k, d_v = unblock(d_k), unblock(d_v)
  d_slopes = None if slopes is None else jnp.zeros_like(slopes)  # slopes are fixed, not trained
  d_valid = None if key_valid is None else np.zeros(key_valid.shape, jax.dtypes.float0)
  d_start = None if q_start is None else np.zeros(np.shape(q_start), jax.dtypes.float0)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), d_valid, d_slopes, d_start


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, *, causal: bool = False, mask=None, alibi=None, q_start=None, block_size: int = 128):
  """FlashAttention (Dao et al. 2022): the reference's values and gradients in memory linear in S.

  Args:
    q: (B, T, H, D) queries.
    k, v: (B, S, Hkv, D); S need not be a multiple of `block_size` (the last block is padded).
    causal: as in `dot_product_attention`.
    mask: optional (B, S) boolean key mask.
    alibi: optional (H,) ALiBi slopes.
    q_start: as in `dot_product_attention`.
    block_size: keys per block of the online softmax.

  Returns:
    (B, T, H, D) in q's dtype.
  """
  _check(q, k, v)
  h = q.shape[2]
  k, v = _repeat_kv(k, h), _repeat_kv(v, h)
  block = max(1, min(block_size, k.shape[1]))
  if q_start is not None:
    q_start = jnp.asarray(q_start, jnp.int32)
  return _flash(_Options(causal, block), q, k, v, mask, alibi, q_start)


# ---------------------------------------------------------------------------------------
# Positions.


def apply_rope(x, positions, base: float = 10000.0):
  """Rotary position embedding (Su et al. 2021, eq. 34) in the half-split layout.

  Channel pairs (i, i + D/2) are rotated by the angle position * base^(-2i / D), so the
  score between a query at m and a key at n depends on their positions only through m - n.

  Args:
    x: (B, T, H, D) queries or keys, D even.
    positions: (T,) or (B, T) integer positions.
    base: the frequency base.
  """
  d = x.shape[-1]
  if d % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {d}")
  freqs = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)  # (D/2,)
  positions = jnp.asarray(positions, jnp.float32)
  angles = (positions[..., None] * freqs)  # (T, D/2) or (B, T, D/2)
  angles = angles[None, :, None, :] if angles.ndim == 2 else angles[:, :, None, :]  # (B|1, T, 1, D/2)
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def alibi_slopes(num_heads: int) -> jax.Array:
  """ALiBi's head slopes (Press et al. 2022): a geometric sequence 2^(-8 / n), 2^(-16 / n), ...

  For a head count that is not a power of two, the closest power of two's slopes are
  completed with every other slope of the next power of two, as the paper's code does.
  """

  def powers(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  closest = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = powers(closest)
  if closest < num_heads:
    slopes += powers(2 * closest)[0::2][:num_heads - closest]
  return jnp.asarray(slopes, jnp.float32)


# ---------------------------------------------------------------------------------------
# Multi-head attention.


def choose(implementation: str, q, k, *, causal: bool = False, mask=None, alibi=None, q_start=None,
           dropout: bool = False, bias=None, prefix=None) -> str:
  """The kernel that `implementation` names: itself, or the platform's for "auto".

  "auto" is the reference where the call drops attention probabilities (the one kernel that
  forms them); on a CPU the dense attention (the fastest to train there), or the reference for
  a call with a score bias or a prefix (the blockwise kernels take neither); on a GPU cuDNN's
  fused kernel where it applies without a bias or a prefix (16-bit inputs, a head dimension that is a
  multiple of 8 up to 128, no padding mask or ALiBi, queries aligned with the keys); else XLA's
  `jax.nn.dot_product_attention`.

  Args:
    implementation: one of IMPLEMENTATIONS.
    q: (B, T, H, D) queries; k: (B, S, Hkv, D) keys (shapes and dtype are read).
    causal, mask, alibi, q_start, bias, prefix: as in `dot_product_attention`.
    dropout: whether the call drops attention probabilities.

  Raises:
    ValueError: for an unknown implementation.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; choose one of: "
                     f"{', '.join(IMPLEMENTATIONS)}")
  if implementation != "auto":
    return implementation
  if dropout:
    return "reference"
  if layers.on_cpu():
    return "dense" if bias is None and prefix is None else "reference"
  d = q.shape[-1]
  aligned = q_start is None and (not causal or q.shape[1] == k.shape[1])
  if (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and d % 8 == 0 and d <= 128
      and mask is None and alibi is None and bias is None and prefix is None and aligned):
    return "cudnn"
  return "xla"


def attend(q, k, v, *, implementation: str = "auto", causal: bool = False, mask=None, alibi=None,
           q_start=None, bias=None, prefix=None, block_size: int = 128, dropout_rate=0.0, dropout_rng=None):
  """Dispatches to one attention implementation (see IMPLEMENTATIONS and `choose`); all take the same arrays.

  "xla" and "cudnn" are `jax.nn.dot_product_attention` (cuDNN's fused kernel needs a GPU and
  bf16/fp16); "pallas" uses the Pallas FlashAttention kernels of jax.experimental on GPU/TPU,
  falling back to `flash_attention` where they do not import. Dropout on the probabilities
  (`dropout_rng` given and a rate that is not the Python number 0) is the reference's alone. A
  score `bias` and a `prefix` (see `dot_product_attention`) go to the reference, "xla" and "cudnn"
  only.

  Raises:
    ValueError: for an unknown implementation, or attention dropout, a score bias or a prefix asked
      of one that does not take it.
  """
  drops = dropout_rng is not None and not layers.is_static_zero(dropout_rate)
  implementation = choose(implementation, q, k, causal=causal, mask=mask, alibi=alibi, q_start=q_start,
                          dropout=drops, bias=bias, prefix=prefix)
  if implementation == "reference":
    return dot_product_attention(q, k, v, causal=causal, mask=mask, alibi=alibi, q_start=q_start, bias=bias,
                                 prefix=prefix, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  if drops:
    raise ValueError(f"attention dropout needs the reference attention (the one implementation that drops "
                     f"probabilities; {implementation!r} does not); set the attention dropout to 0 or use 'reference'")
  if bias is not None and implementation not in ("xla", "cudnn"):
    raise ValueError(f"a score bias needs the reference, 'xla' or 'cudnn' attention ({implementation!r} takes none)")
  if prefix is not None and implementation not in ("xla", "cudnn"):
    raise ValueError(f"a prefix needs the reference, 'xla' or 'cudnn' attention ({implementation!r} takes none)")
  if implementation == "dense":
    return dense_attention(q, k, v, causal=causal, mask=mask, alibi=alibi, q_start=q_start)
  if implementation == "flash":
    return flash_attention(q, k, v, causal=causal, mask=mask, alibi=alibi, q_start=q_start, block_size=block_size)
  if implementation in ("xla", "cudnn"):
    t, s = q.shape[1], k.shape[1]
    if alibi is not None or q_start is not None or bias is not None or prefix is not None or (causal and t != s):
      # jax's is_causal aligns the first query with the first key; other offsets go in as a bias.
      bias = _bias(_q_positions(t, s, q_start), jnp.arange(s), causal, mask, alibi, bias, prefix)
      return jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype), implementation=implementation)
    key_mask = None if mask is None else mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=causal, implementation=implementation)
  if q_start is not None:  # pallas
    return flash_attention(q, k, v, causal=causal, mask=mask, alibi=alibi, q_start=q_start, block_size=block_size)
  return _pallas_attention(q, k, v, causal=causal, mask=mask, alibi=alibi, block_size=block_size)


def _pallas_attention(q, k, v, *, causal, mask, alibi, block_size):
  """The Pallas FlashAttention kernel of the platform (GPU Triton or TPU Mosaic), else ours."""
  platform = jax.devices()[0].platform
  if mask is None and alibi is None and q.shape[1] == k.shape[1] and platform in ("gpu", "tpu"):
    try:
      if platform == "gpu":
        from jax.experimental.pallas.ops.gpu import attention as pallas_ops  # pylint: disable=import-outside-toplevel
        h = q.shape[2]
        return pallas_ops.mha(q, _repeat_kv(k, h), _repeat_kv(v, h), segment_ids=None, causal=causal,
                              sm_scale=1.0 / math.sqrt(q.shape[-1]))
      from jax.experimental.pallas.ops.tpu import flash_attention as pallas_ops  # pylint: disable=import-outside-toplevel
      h = q.shape[2]
      swap = lambda x: jnp.swapaxes(x, 1, 2)  # the TPU kernel takes (B, H, T, D)
      out = pallas_ops.flash_attention(swap(q), swap(_repeat_kv(k, h)), swap(_repeat_kv(v, h)), causal=causal,
                                       sm_scale=1.0 / math.sqrt(q.shape[-1]))
      return swap(out)
    except ImportError:
      pass
  return flash_attention(q, k, v, causal=causal, mask=mask, alibi=alibi, block_size=block_size)


class MultiHeadAttention(nn.Module):
  """Multi-head attention of x over itself or over a context, with grouped-query heads, RoPE or ALiBi,
  a KV cache, and a choice of kernel: the one attention of every model here.

  Parameters, in one of two layouts:
    "separate"  `query`, `key`, `value` kernels (width, heads, head_dim) with biases, and `out`
                (heads, head_dim, width): GPT-2, BERT and the DiT. The three projections of one
                input run as one stacked product (`layers.dense_group`), except on CPUs, where
                XLA runs three separate ones faster at GPT-2's widths (`stack_qkv` decides
                otherwise). Grouped-query heads and cross-attention need this layout.
    "fused"     one (width, 3, heads, head_dim) kernel for query, key and value and the output,
                under flax's names of two unnamed DenseGeneral layers, `DenseGeneral_0` and
                `DenseGeneral_1`: the DDPM U-Net's layout (research/models/unet.py).

  Attributes:
    num_heads: query heads H.
    num_kv_heads: key/value heads (None: H, multi-head; 1: multi-query; between: grouped-query).
    head_dim: D per head (None: the input width / H).
    positions: "rope" rotates q and k; "alibi" adds the linear bias; "learned"/"none" leave
      positions to the caller (e.g. GPT-2's learned position embedding).
    implementation: one of IMPLEMENTATIONS ("auto": the platform's kernel, see `choose`).
    layout: one of LAYOUTS.
    stack_qkv: one product for the projections of one input; None: yes except on CPUs.
    qkv_bias: biases on the query, key and value projections (the output keeps its own,
      `out_bias`); False for the diffusers U-Net's to_q/to_k/to_v and for T5.
    dropout: attention-output dropout rate (training only; needs rngs={'dropout'}).
    attention_dropout: dropout rate of the attention probabilities (training only; the
      reference implementation only, see `attend`).
    rope_base: RoPE's frequency base.
    kernel_init: the initializer of the query, key and value kernels.
    out_init: the initializer of the output kernel.
    dtype: compute dtype.
    out_bias: a bias on the output projection.
    scale: the scores' factor (None: 1 / sqrt(head_dim); T5 uses 1.0, its initialisation
      having folded the factor into the query kernel).
  """

  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  positions: str = "none"
  implementation: str = "auto"
  layout: str = "separate"
  stack_qkv: bool | None = None
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  rope_base: float = 10000.0
  kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  out_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  dtype: str = "float32"
  out_bias: bool = True
  scale: float | None = None

  def _check(self, width: int, cross: bool, cached: bool):
    if self.positions not in POSITIONS:
      raise ValueError(f"unknown positions {self.positions!r}; choose one of: {', '.join(POSITIONS)}")
    if self.layout not in LAYOUTS:
      raise ValueError(f"unknown attention layout {self.layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f"unknown attention implementation {self.implementation!r}; choose one of: "
                       f"{', '.join(IMPLEMENTATIONS)}")
    if self.head_dim is None and width % self.num_heads:
      raise ValueError(f"the width {width} is not divisible by {self.num_heads} heads")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"{self.num_heads} query heads are not a multiple of {self.kv_heads} key/value heads")
    if cross and self.positions in ("rope", "alibi"):
      raise ValueError(f"{self.positions} positions are for self-attention; cross-attention takes positions from "
                       "its inputs")
    if cross and cached:
      raise ValueError("the KV cache is for self-attention; pass the context's keys once, without a cache")
    if self.layout == "fused" and (cross or self.kv_heads != self.num_heads):
      raise ValueError("the fused layout projects one input to as many key/value heads as query heads: "
                       "self-attention with num_kv_heads = num_heads only")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  def _projections(self, x, context, head_dim: int, keys: bool = True):
    """(q (B, T, H, D), k, v (B, S, Hkv, D)) of x and the context (x itself for self-attention).

    q is None without x; k and v are None when `keys` is False (they were projected before).
    """
    if self.layout == "fused":
      init = nn.with_logical_partitioning(self.kernel_init, ("embed", None, "heads", "head_dim"))
      qkv = layers.DenseGeneral((3, self.num_heads, head_dim), kernel_init=init, use_bias=self.qkv_bias,
                                dtype=self.dtype, name="DenseGeneral_0")(x)  # (B, T, 3, H, D)
      return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    init = nn.with_logical_partitioning(self.kernel_init, ("embed", "heads", "head_dim"))
    kv_input = x if context is None else context
    stacked = not layers.on_cpu() if self.stack_qkv is None else self.stack_qkv
    if not stacked or not keys:
      proj = lambda heads, name, inputs: layers.DenseGeneral((heads, head_dim), name=name, kernel_init=init,
                                                             use_bias=self.qkv_bias, dtype=self.dtype)(inputs)
      q = None if x is None else proj(self.num_heads, "query", x)
      if not keys:
        return q, None, None
      return q, proj(self.kv_heads, "key", kv_input), proj(self.kv_heads, "value", kv_input)
    # DenseGeneral's parameters applied as one product per input (per run of equal shapes).
    param = lambda heads, name, inputs: layers.DenseParams((heads, head_dim), name=name, kernel_init=init,
                                                           use_bias=self.qkv_bias)(inputs.shape[-1])
    if context is None:
      return tuple(layers.dense_group(x, [param(self.num_heads, "query", x), param(self.kv_heads, "key", x),
                                          param(self.kv_heads, "value", x)], dtype=self.dtype))
    q = None if x is None else layers.dense_group(x, [param(self.num_heads, "query", x)], dtype=self.dtype)[0]
    k, v = layers.dense_group(context, [param(self.kv_heads, "key", context), param(self.kv_heads, "value", context)],
                              dtype=self.dtype)
    return q, k, v

  @nn.compact
  def __call__(self, x, context=None, *, mask=None, causal: bool = False, positions=None,
               cache: "KVCache | None" = None, cache_index=None, train: bool = False, dropout_rate=None,
               attention_dropout_rate=None, bias=None, prefix=None, kv: "KVCache | None" = None):
    """Attends x (B, T, width) to itself, to a context, or to a KV cache it writes into.

    Args:
      x: (B, T, width) inputs: the queries' and, without a context, the keys' and values'. None
        with a context: the context's keys and values are only projected and returned, as a
        KVCache to attend to later through `kv` (a decoder's cross-attention, projected once
        per source; needs `head_dim`).
      context: (B, S, width') the keys' and values' inputs (cross-attention); None: x.
      mask: (B, S) boolean key mask, True where a key may be attended to (S: the context's
        length, x's, or the cache's).
      causal: query i attends to keys j <= i (self-attention) or, with a cache, to the cache
        entries up to its own position.
      positions: (T,) or (B, T) token positions for RoPE (default 0 .. T-1).
      cache: a KVCache of (B, Hkv, S, D) arrays; this call's keys and values are written at
        `cache_index` and the queries attend to every earlier cache entry (prefill with
        cache_index 0, then one token per call).
      cache_index: where this call's T positions start in the cache (a traced scalar).
      train: enables dropout.
      dropout_rate, attention_dropout_rate: this call's rates in place of the attributes (may
        be traced scalars, e.g. a sweep's hyperparameters).
      bias: (B|1, H|1, T, S) float scores added before the softmax (e.g. T5's relative
        position bias; see `attend` for the kernels that take one).
      prefix: (B,) integers: under `causal`, the keys at positions (cache slots, with a cache)
        below prefix[b] are visible to every query of row b: a prefix LM (see `attend`).
      kv: a context's keys and values already projected (a call with x None): cross-attention
        to them, without the key and value projections.

    Returns:
      (B, T, width), ((B, T, width), the updated KVCache) when a cache is given, or the
      context's KVCache when x is None.

    Raises:
      ValueError: for an unknown option, or one that does not apply (cross-attention with RoPE,
        ALiBi, a cache or the fused layout; both a context and `kv`).
    """
    if x is None:
      if context is None or self.head_dim is None or cache is not None or kv is not None:
        raise ValueError("x=None projects a context's keys and values: give a context (no cache or kv) and a "
                         "head_dim")
      self._check(context.shape[-1], True, False)
      _, k, v = self._projections(None, context, self.head_dim)
      return KVCache(jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))  # (B, Hkv, S, D)
    if context is not None and kv is not None:
      raise ValueError("give the context or its projected keys and values (kv), not both")
    width = x.shape[-1]
    self._check(width, context is not None or kv is not None, cache is not None)
    head_dim = self.head_dim or width // self.num_heads
    q, k, v = self._projections(x, context, head_dim, keys=kv is None)
    if self.scale is not None:  # every kernel divides by sqrt(head_dim)
      q = q * jnp.asarray(self.scale * math.sqrt(head_dim), q.dtype)
    q = nn.with_logical_constraint(q, layers.ACTIVATION_HEADS)
    if kv is None:
      k = nn.with_logical_constraint(k, layers.ACTIVATION_HEADS)
      v = nn.with_logical_constraint(v, layers.ACTIVATION_HEADS)
    alibi = None
    if self.positions == "rope":
      pos = jnp.arange(x.shape[1]) if positions is None else positions
      q, k = apply_rope(q, pos, self.rope_base), apply_rope(k, pos, self.rope_base)
    elif self.positions == "alibi":
      alibi = alibi_slopes(self.num_heads)
    attention_rate = self.attention_dropout if attention_dropout_rate is None else attention_dropout_rate
    dropout_rng = self.make_rng("dropout") if train and not layers.is_static_zero(attention_rate) else None
    held = kv  # keys and values in the cache's layout, (B, Hkv, S, D)
    if cache is not None:
      # This call's keys go in at cache_index along S.
      write = lambda buffer, new: jax.lax.dynamic_update_slice_in_dim(
          buffer, jnp.swapaxes(new, 1, 2).astype(buffer.dtype), cache_index, axis=2)
      cache = held = KVCache(write(cache.k, k), write(cache.v, v))
    if held is None:
      out = attend(q, k, v, implementation=self.implementation, causal=causal, mask=mask, alibi=alibi, bias=bias,
                   prefix=prefix, dropout_rate=attention_rate, dropout_rng=dropout_rng)
    else:
      q_start = None if cache is None else cache_index
      swap = lambda x: jnp.swapaxes(x, 1, 2)  # (B, Hkv, S, D) <-> (B, S, Hkv, D)
      kernel = choose(self.implementation, q, swap(held.k), causal=causal, mask=mask, alibi=alibi,
                      q_start=q_start, dropout=dropout_rng is not None, bias=bias, prefix=prefix)
      if dropout_rng is None and (kernel in ("reference", "dense") or x.shape[1] == 1):
        out = cached_attention(q, held.k, held.v, causal=causal, mask=mask, alibi=alibi, q_start=q_start, bias=bias,
                               prefix=prefix)
      else:  # a long prefill through another kernel, or training with attention dropout: (B, S, Hkv, D)
        out = attend(q, swap(held.k), swap(held.v), implementation=kernel, causal=causal, mask=mask,
                     alibi=alibi, q_start=q_start, bias=bias, prefix=prefix, dropout_rate=attention_rate,
                     dropout_rng=dropout_rng)
    out = nn.with_logical_constraint(out, layers.ACTIVATION_HEADS)
    out_init = nn.with_logical_partitioning(self.out_init, ("heads", "head_dim", "embed"))
    out = layers.DenseGeneral(width, axis=(-2, -1), kernel_init=out_init, use_bias=self.out_bias, dtype=self.dtype,
                              name="DenseGeneral_1" if self.layout == "fused" else "out")(out)
    out = layers.Dropout(self.dropout)(out, train, rate=dropout_rate)
    return out if cache is None else (out, cache)


class KVCache(NamedTuple):
  """Keys and values of the positions seen so far, preallocated: (B, Hkv, S, D) each.

  Heads before positions, so that a decoding step's scores and weighted sum read each head's
  keys and values as one contiguous (S, D) matrix; a (B, S, Hkv, D) cache would be transposed,
  whole, by every layer at every new token.
  """

  k: jax.Array
  v: jax.Array

  @classmethod
  def zeros(cls, batch: int, length: int, num_kv_heads: int, head_dim: int, dtype=jnp.float32) -> "KVCache":
    shape = (batch, num_kv_heads, length, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
