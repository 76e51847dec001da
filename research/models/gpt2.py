"""GPT-2 (Radford et al., "Language Models are Unsupervised Multitask Learners", 2019).

    cfg = gpt2.config("124m")                       # or GPT2Config(vocab_size=..., n_embd=...)
    model = gpt2.GPT2(cfg)
    logits = model.apply({"params": params}, input_ids)           # (B, T, vocab), eval mode
    model, params = gpt2.load_hf("path/to/saved/gpt2")            # transformers' files, no torch
    tokens = gpt2.generate(model, params, prompts, max_new_tokens=50)

A decoder-only transformer: token embedding (+ learned positions; or RoPE / ALiBi inside
attention), n_layer pre-LayerNorm blocks x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) with
causal multi-head attention (research/models/attention.py) and a GELU (tanh) MLP of 4 x n_embd,
a final LayerNorm and the output projection tied to the token embedding. Weights are
N(0, 0.02) and the two residual projections of each block N(0, 0.02 / sqrt(2 n_layer))
(GPT-2 section 2.3), biases zero.

Generation prefills the prompt into a preallocated KV cache and decodes inside one compiled
program: a `lax.scan` over the new tokens, in phases of DECODE_PHASE tokens whose cache ends
where the phase does; prompts of different lengths are left-padded into a length bucket, so a
new prompt length within the bucket compiles nothing new.
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
from research.models import hf
from research.models import layers

# The published sizes: name -> (n_layer, n_embd, n_head).
SIZES = {"124m": (12, 768, 12), "350m": (24, 1024, 16), "774m": (36, 1280, 20), "1.5b": (48, 1600, 25)}
HF_NAMES = {"gpt2": "124m", "gpt2-medium": "350m", "gpt2-large": "774m", "gpt2-xl": "1.5b"}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """GPT-2's hyperparameters under transformers' field names, plus this codebase's options.

  Attributes:
    vocab_size, n_positions, n_embd, n_layer, n_head: as transformers' GPT2Config.
    n_inner: MLP width (None: 4 * n_embd).
    layer_norm_epsilon: LayerNorm epsilon.
    embd_pdrop, resid_pdrop: dropout on the embeddings and on each residual branch (training
      only; off by default; a call may override both with one traced rate).
    positions: "learned" (GPT-2), "rope" or "alibi".
    num_kv_heads: key/value heads (None: n_head, i.e. GPT-2's multi-head attention).
    attention: the kernel, one of research.models.attention.IMPLEMENTATIONS ("auto": the
      platform's).
    scan_layers: the blocks as one `nn.scan` (parameters "h" with a leading layer axis) instead
      of a Python loop ("h_0", "h_1", ...): one block to compile.
    remat: recompute in the backward pass: "none", "block" or "dots" (research.models.layers.REMATS).
    dtype: compute dtype; parameters stay float32 and logits are float32.
  """

  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int | None = None
  layer_norm_epsilon: float = 1e-5
  embd_pdrop: float = 0.0
  resid_pdrop: float = 0.0
  positions: str = "learned"
  num_kv_heads: int | None = None
  attention: str = "auto"
  scan_layers: bool = False
  remat: str = "none"
  dtype: str = "float32"

  def __post_init__(self):
    layers.check_stacking(self.scan_layers, self.remat)
    if self.n_embd % self.n_head:
      raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
    if self.positions not in attention_lib.POSITIONS[:3]:
      raise ValueError(f"unknown positions {self.positions!r}; choose one of: learned, rope, alibi")
    if self.attention not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"unknown attention {self.attention!r}; choose one of: "
                       f"{', '.join(attention_lib.IMPLEMENTATIONS)}")
    if self.n_head % self.kv_heads:
      raise ValueError(f"n_head {self.n_head} is not a multiple of num_kv_heads {self.kv_heads}")

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.n_head

  @property
  def inner(self) -> int:
    return self.n_inner or 4 * self.n_embd


def config(name: str, **overrides) -> GPT2Config:
  """A published size by name ("124m", "350m", "774m", "1.5b", or transformers' "gpt2", "gpt2-medium", ...)."""
  size = HF_NAMES.get(name, name)
  if size not in SIZES:
    raise ValueError(f"unknown GPT-2 size {name!r}; choose one of: {', '.join(list(SIZES) + list(HF_NAMES))}")
  n_layer, n_embd, n_head = SIZES[size]
  return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, **overrides)


# ---------------------------------------------------------------------------------------
# The model.


def _init(std, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class MLP(nn.Module):
  cfg: GPT2Config

  @nn.compact
  def __call__(self, x, train: bool, dropout_rate=None):
    cfg = self.cfg
    h = layers.Dense(cfg.inner, name="c_fc", kernel_init=_init(0.02, ("embed", "mlp")), dtype=cfg.dtype)(x)
    h = nn.gelu(nn.with_logical_constraint(h, layers.ACTIVATION_MLP), approximate=True)  # GPT-2's "gelu_new"
    out = layers.Dense(cfg.n_embd, name="c_proj", kernel_init=_init(0.02 / math.sqrt(2 * cfg.n_layer), ("mlp", "embed")),
                   dtype=cfg.dtype)(h)
    return layers.Dropout(cfg.resid_pdrop)(out, train, rate=dropout_rate)


class Block(nn.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  cfg: GPT2Config

  @nn.compact
  def __call__(self, x, cache, *, mask, positions, cache_index, train: bool, dropout_rate, prefix_length=None):
    """(x after the block, this layer's updated KVCache or None)."""
    cfg = self.cfg
    ln = lambda name: nn.LayerNorm(cfg.layer_norm_epsilon, name=name, dtype=cfg.dtype)
    attn = attention_lib.MultiHeadAttention(
        num_heads=cfg.n_head, num_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim, positions=cfg.positions,
        implementation=cfg.attention, dropout=cfg.resid_pdrop,
        out_init=nn.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layer)), dtype=cfg.dtype, name="attn")
    out = attn(ln("ln_1")(x), mask=mask, causal=True, positions=positions, cache=cache, cache_index=cache_index,
               train=train, dropout_rate=dropout_rate, prefix=prefix_length)
    if cache is not None:
      out, cache = out
    x = x + out
    return x + MLP(cfg, name="mlp")(ln("ln_2")(x), train, dropout_rate), cache


class GPT2(nn.Module):
  """`apply({"params": p}, input_ids)` -> logits (B, T, vocab_size) float32.

  Keyword arguments: `attention_mask` (B, S) booleans (False at padding), `positions` (B, T)
  (default 0 .. T-1 after cache_index), `cache` (`init_cache`'s: a list of per-layer
  KVCache, or one KVCache stacked on a leading layer axis under scan_layers; then the updated
  cache is returned too), `cache_index`, `train` (dropout; needs rngs={'dropout'}),
  `dropout_rate` (in training, the embedding and residual dropout rate in place of embd_pdrop
  and resid_pdrop; may be a traced scalar, e.g. a sweep's), `return_hidden` (then (logits,
  hidden) with the final LayerNorm's output (B, T, n_embd) in place of the logits, for heads
  on the backbone: reward and value models), `prefix_length` (B,) (a prefix LM, Raffel et al.
  2020: the first prefix_length[b] positions of row b, or cache slots with a cache, attend to
  each other in both directions; the rest stay causal).
  """

  cfg: GPT2Config

  @nn.compact
  def __call__(self, input_ids, *, attention_mask=None, positions=None, cache=None, cache_index=None,
               train: bool = False, dropout_rate=None, return_hidden: bool = False, prefix_length=None):
    cfg = self.cfg
    b, t = input_ids.shape
    if positions is None:
      positions = jnp.arange(t)[None] + (0 if cache_index is None else cache_index)
    wte = nn.Embed(cfg.vocab_size, cfg.n_embd, name="wte", embedding_init=_init(0.02, ("vocab", "embed")),
                   dtype=cfg.dtype)
    x = wte(input_ids)  # (B, T, E)
    if cfg.positions == "learned":
      wpe = self.param("wpe", _init(0.01, (None, "embed")), (cfg.n_positions, cfg.n_embd))
      x = x + jnp.take(wpe, positions, axis=0).astype(x.dtype)
    x = layers.Dropout(cfg.embd_pdrop)(x, train, rate=dropout_rate)
    x, new_cache = layers.blocks(lambda: Block(cfg), cfg.n_layer, x, cache, name="h", scan=cfg.scan_layers,
                                 remat=cfg.remat, mask=attention_mask, positions=positions, cache_index=cache_index,
                                 train=train, dropout_rate=dropout_rate, prefix_length=prefix_length)
    x = nn.LayerNorm(cfg.layer_norm_epsilon, name="ln_f", dtype=cfg.dtype)(x)
    # The tied output projection, (B, T, vocab), on (B * T, E) rows (see layers.Dense).
    logits = wte.attend(x.reshape(b * t, -1)).reshape(b, t, -1).astype(jnp.float32)
    out = (logits, x) if return_hidden else logits
    return out if cache is None else (out, new_cache)

  def init_cache(self, batch: int, length: int) -> list[attention_lib.KVCache] | attention_lib.KVCache:
    """Zeros for `length` positions: a KVCache (B, Hkv, S, D) per layer, or all layers' stacked under scan_layers."""
    cfg = self.cfg
    if cfg.scan_layers:
      shape = (cfg.n_layer, batch, cfg.kv_heads, length, cfg.head_dim)
      return attention_lib.KVCache(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))
    return [attention_lib.KVCache.zeros(batch, length, cfg.kv_heads, cfg.head_dim, cfg.dtype)
            for _ in range(cfg.n_layer)]


def count_params(cfg: GPT2Config, embeddings: bool = True) -> int:
  """Parameters from shapes alone; without `embeddings`, Kaplan et al.'s non-embedding count."""
  return layers.count_params(GPT2(cfg), jax.ShapeDtypeStruct((1, 1), jnp.int32),
                             skip=() if embeddings else ("embedding", "wpe"))


def lm_loss(logits, targets, mask=None):
  """Mean next-token cross-entropy in nats (over positions where `mask` is True)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
  if mask is None:
    return jnp.mean(nll)
  return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1)


# ---------------------------------------------------------------------------------------
# Weights to and from transformers: one explicit name table.


def _hf_table(cfg: GPT2Config) -> list[hf.Tensor]:
  """Every tensor of a GPT2LMHeadModel (without the `transformer.` prefix) and its parameter in the Python-loop layout.

  transformers' Conv1D stores (in, out) like a Dense kernel; its fused c_attn (E, 3E) is split
  into our query/key/value kernels (E, heads, head_dim), c_proj into (heads, head_dim, E).
  """
  e, h, d = cfg.n_embd, cfg.n_head, cfg.head_dim
  table = [hf.Tensor("wte.weight", ("wte", "embedding"))]
  if cfg.positions == "learned":
    table.append(hf.Tensor("wpe.weight", ("wpe",)))
  for i in range(cfg.n_layer):
    p, ours = f"h.{i}.", (f"h_{i}",)
    for ln in ("ln_1", "ln_2"):
      table += [hf.Tensor(p + f"{ln}.weight", ours + (ln, "scale")), hf.Tensor(p + f"{ln}.bias", ours + (ln, "bias"))]
    for j, name in enumerate(("query", "key", "value")):  # the j-th third of c_attn
      table += [hf.Tensor(p + "attn.c_attn.weight", ours + ("attn", name, "kernel"),
                          lambda w, j=j: w[:, j * e:(j + 1) * e].reshape(e, h, d), lambda w: w.reshape(e, h * d)),
                hf.Tensor(p + "attn.c_attn.bias", ours + ("attn", name, "bias"),
                          lambda b, j=j: b[j * e:(j + 1) * e].reshape(h, d), lambda b: b.reshape(h * d))]
    table += [
        hf.Tensor(p + "attn.c_proj.weight", ours + ("attn", "out", "kernel"), lambda w: w.reshape(h, d, e),
                  lambda w: w.reshape(h * d, e)),
        hf.Tensor(p + "attn.c_proj.bias", ours + ("attn", "out", "bias")),
        hf.Tensor(p + "mlp.c_fc.weight", ours + ("mlp", "c_fc", "kernel")),
        hf.Tensor(p + "mlp.c_fc.bias", ours + ("mlp", "c_fc", "bias")),
        hf.Tensor(p + "mlp.c_proj.weight", ours + ("mlp", "c_proj", "kernel")),
        hf.Tensor(p + "mlp.c_proj.bias", ours + ("mlp", "c_proj", "bias")),
    ]
  return table + [hf.Tensor("ln_f.weight", ("ln_f", "scale")), hf.Tensor("ln_f.bias", ("ln_f", "bias"))]


def _config_from_hf(saved: dict) -> GPT2Config:
  if saved.get("model_type") != "gpt2":
    raise ValueError(f"config.json describes a {saved.get('model_type')!r} model, not gpt2")
  if saved.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
    raise ValueError(f"unsupported activation_function {saved['activation_function']!r} (GPT-2 uses gelu_new)")
  return GPT2Config(vocab_size=saved["vocab_size"], n_positions=saved["n_positions"], n_embd=saved["n_embd"],
                    n_layer=saved["n_layer"], n_head=saved["n_head"], n_inner=saved.get("n_inner"),
                    layer_norm_epsilon=saved.get("layer_norm_epsilon", 1e-5))


def load_hf(path: str, **overrides) -> tuple[GPT2, dict]:
  """Reads a directory saved by transformers (config.json + model.safetensors) without torch.

  Names may carry the `transformer.` prefix or not; the output head is tied to `wte`.

  Args:
    path: the directory.
    **overrides: GPT2Config fields to replace (attention, dtype, scan_layers, remat, ...).

  Returns:
    (GPT2 module, params) with params the dict to pass as {"params": params}, in the layout of
    the config's scan_layers.

  Raises:
    ValueError: without config.json or model.safetensors, for another architecture, or when a
      tensor is missing or has another shape (the message names it).
  """
  saved, weights_path = hf.saved_config(path, "GPT-2")
  cfg = dataclasses.replace(_config_from_hf(saved), **overrides)
  tensors = {k.removeprefix("transformer."): v for k, v in hf.load_weights(weights_path).items()}
  loop_cfg = dataclasses.replace(cfg, scan_layers=False)  # the table's layout: one subtree per block
  shapes = nn.unbox(jax.eval_shape(lambda: GPT2(loop_cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  params = hf.read(_hf_table(cfg), tensors, shapes["params"], weights_path)
  if cfg.scan_layers:
    params = layers.stack_blocks(params, "h", cfg.n_layer)
  return GPT2(cfg), params


def save_hf(path: str, cfg: GPT2Config, params, eos_token_id: int | str | None = "last") -> None:
  """Writes config.json, generation_config.json and model.safetensors for transformers' GPT2LMHeadModel.

  Args:
    path: the directory.
    cfg: the model's config.
    params: in the layout of cfg.scan_layers (stacked blocks are written one by one).
    eos_token_id: the end-of-text id (also bos and pad for generation): "last" for vocab_size - 1,
      GPT-2's <|endoftext|>; an id; or None for none (generation runs to max_new_tokens).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  if cfg.positions != "learned" or cfg.kv_heads != cfg.n_head:
    raise ValueError("only GPT-2 itself (learned positions, multi-head attention) has a transformers layout")
  eos = cfg.vocab_size - 1 if eos_token_id == "last" else eos_token_id
  params = nn.unbox(params)
  if cfg.scan_layers:
    params = layers.unstack_blocks(params, "h")
  tensors = {"transformer." + name: value for name, value in hf.write(_hf_table(cfg), params).items()}
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
            "n_positions": cfg.n_positions, "n_ctx": cfg.n_positions, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_inner": cfg.n_inner, "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.layer_norm_epsilon, "resid_pdrop": cfg.resid_pdrop,
            "embd_pdrop": cfg.embd_pdrop, "attn_pdrop": 0.0, "tie_word_embeddings": True,
            "bos_token_id": eos, "eos_token_id": eos}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  with open(os.path.join(path, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}, f, indent=2)


# ---------------------------------------------------------------------------------------
# Generation: prefill into a KV cache, then decode in a lax.scan per phase of the cache.


class DecodeCarry(NamedTuple):
  """What the decoding scan carries from one new token to the next."""

  cache: list | attention_lib.KVCache  # GPT2.init_cache's
  logits: jax.Array  # (B, vocab) for the next token
  key: jax.Array


# New tokens per decoding phase: the KV cache read by a phase's steps ends where the phase does.
DECODE_PHASE = 64


def bucket(length: int, minimum: int = 8) -> int:
  """The padded prompt length: the next power of two (at least `minimum`)."""
  return max(minimum, 1 << max(0, length - 1).bit_length())


def _choose(logits, key, temperature, top_k: int, top_p):
  """Greedy where temperature == 0; else a sample from the temperature / top-k / top-p distribution.

  A Python 0 for temperature makes the program greedy only: no sampling code runs per token.
  """
  greedy = jnp.argmax(logits, axis=-1)
  if isinstance(temperature, (int, float)) and temperature == 0:
    return greedy
  scaled = logits / jnp.maximum(temperature, 1e-6)
  if top_k > 0:  # a k above the vocabulary keeps every token, as in transformers
    kth = jax.lax.top_k(scaled, min(top_k, scaled.shape[-1]))[0][..., -1:]
    scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
  # Nucleus: keep the smallest set of tokens whose probability reaches top_p.
  order = jnp.argsort(-scaled, axis=-1)
  sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  # The most likely token always stays (top_p 0 is greedy), as transformers keeps at least one.
  keep_sorted = (cumulative - jax.nn.softmax(sorted_logits, axis=-1) < top_p).at[:, 0].set(True)
  keep = jnp.zeros_like(keep_sorted).at[jnp.arange(scaled.shape[0])[:, None], order].set(keep_sorted)
  sampled = jax.random.categorical(key, jnp.where(keep, scaled, -jnp.inf), axis=-1)
  return jnp.where(temperature > 0, sampled, greedy)


def continue_prompts(model: GPT2, params, tokens, prompt_mask, key, max_new_tokens: int, temperature=1.0,
                     top_k: int = 0, top_p=1.0, prompt_visible: bool = False):
  """New tokens after left-padded prompts: a KV-cache prefill, then a `lax.scan` over the new tokens.

  A pure function (no jit of its own), so it can run inside a larger compiled program, e.g. the
  rollouts of RLHF's PPO (research/rl/rlhf.py); `generate` is its host-side front end.

  Args:
    model: a GPT2 module.
    params: its parameters (the inner dict, without the "params" key).
    tokens: (B, P) prompt ids, left-padded.
    prompt_mask: (B, P) booleans, False at the padding.
    key: the sampling key.
    max_new_tokens: N, the tokens to add.
    temperature: 0 is greedy; 1 samples from the model's own distribution (traced; a Python 0
      compiles a greedy-only program).
    top_k: top-k sampling (0: off); a Python int, it fixes the program.
    top_p: nucleus sampling threshold (1: off; traced).
    prompt_visible: a prefix LM's decoding: the prompt's tokens attend to each other in both
      directions (GPT2's `prefix_length`), as the model saw its prefixes in training; the new
      tokens stay causal.

  Returns:
    (B, N) int32 new tokens.
  """
  b, p = tokens.shape
  if b == 1 and layers.on_cpu():
    # On CPUs a batch of one decodes as two equal rows: at batch 1, XLA:CPU copied every layer's
    # whole KV cache three times per new token (it fused the cache update once into each
    # differently shaped reader of it); two rows are updated in place, and the weights are read
    # once per step either way. Measured at GPT-2 6 x 384, batch 1: 2.52 -> 2.16 ms per token.
    two = lambda x: jnp.concatenate([x, x])
    return continue_prompts(model, params, two(tokens), two(prompt_mask), key, max_new_tokens, temperature,
                            top_k, top_p, prompt_visible)[:1]
  lengths = jnp.sum(prompt_mask, axis=1)  # (B,)
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)  # left padding: real tokens from 0
  key_mask = jnp.concatenate([prompt_mask, jnp.ones((b, max_new_tokens), bool)], axis=1)  # (B, P + N)
  # The cache grows in phases of DECODE_PHASE new tokens: each phase's scan attends over the
  # keys written by its end only, not over all P + N, so the steps read about half the cache
  # bytes on average (one copy into the longer cache per phase).
  ends = list(range(DECODE_PHASE, max_new_tokens, DECODE_PHASE)) + [max_new_tokens]
  cache = model.init_cache(b, p + ends[0])
  logits, cache = model.apply({"params": params}, tokens, attention_mask=key_mask[:, :p + ends[0]],
                              positions=positions, cache=cache, cache_index=0,
                              prefix_length=jnp.full((b,), p) if prompt_visible else None)

  def phase(carry: DecodeCarry, start: int, end: int):
    mask = key_mask[:, :p + end]

    def step(carry: DecodeCarry, i):
      k_choose, key = jax.random.split(carry.key)
      token = _choose(carry.logits, k_choose, temperature, top_k, top_p)  # (B,)
      logits, cache = model.apply({"params": params}, token[:, None], attention_mask=mask,
                                  positions=(lengths + i)[:, None], cache=carry.cache, cache_index=p + i)
      return DecodeCarry(cache, logits[:, -1], key), token

    return jax.lax.scan(step, carry, jnp.arange(start, end))

  carry, new = DecodeCarry(cache, logits[:, -1], key), []
  for start, end in zip([0] + ends[:-1], ends):
    # Each cache array is (..., S, D), with a leading layer axis under scan_layers.
    grow = lambda x, end=end: jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, p + end - x.shape[-2]), (0, 0)])
    carry = carry._replace(cache=jax.tree.map(grow, carry.cache))
    carry, tokens_out = phase(carry, start, end)
    new.append(tokens_out)
  new = new[0] if len(new) == 1 else jnp.concatenate(new)
  return new.T.astype(jnp.int32)  # (B, N)


@functools.lru_cache(maxsize=32)
def _compiled_generate(model: GPT2, max_new_tokens: int, top_k: int, greedy: bool, prompt_visible: bool):
  """One jitted program per (model, max_new_tokens, top_k, greedy, prompt_visible); jax caches it per prompt
  bucket shape."""

  @jax.jit
  def run(params, tokens, prompt_mask, key, temperature, top_p):
    return continue_prompts(model, params, tokens, prompt_mask, key, max_new_tokens, 0.0 if greedy else temperature,
                            top_k, top_p, prompt_visible)

  return run


def check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
  """Raises ValueError on decoding controls out of range (every language model's `generate` checks these)."""
  if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
  if not (math.isfinite(float(temperature)) and float(temperature) >= 0):
    raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
  if int(top_k) != top_k or top_k < 0:
    raise ValueError(f"top_k must be a non-negative integer (0: off), got {top_k!r}")
  if not 0.0 <= float(top_p) <= 1.0:  # also rejects NaN
    raise ValueError(f"top_p must be in [0, 1] (1: off), got {top_p!r}")


def prompt_rows(prompt, vocab_size: int) -> tuple[list[list[int]], bool]:
  """(the prompts as lists of ids, whether they came as lists), checked against the vocabulary."""
  as_lists = not isinstance(prompt, (np.ndarray, jax.Array))
  rows = [list(map(int, r)) for r in prompt] if as_lists else [list(map(int, r)) for r in np.asarray(prompt)]
  if not rows or any(len(r) == 0 for r in rows):
    raise ValueError("every prompt needs at least one token")
  ids = np.concatenate([np.asarray(r) for r in rows])
  if ids.min() < 0 or ids.max() >= vocab_size:
    raise ValueError(f"token id {int(ids.max() if ids.max() >= vocab_size else ids.min())} is outside "
                     f"the vocabulary of {vocab_size}")
  return rows, as_lists


def generate(model: GPT2, params, prompt, max_new_tokens: int, *, key=None, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, prompt_visible: bool = False):
  """The prompt(s) followed by `max_new_tokens` new tokens; temperature 0 is greedy.

  Args:
    model: a GPT2 module.
    params: its parameters (the inner dict, without the "params" key).
    prompt: token ids: a (B, P) array, or a list of B lists of different lengths (left-padded
      into a bucket of lengths, so new lengths within it reuse the compiled program).
    max_new_tokens: tokens to add.
    key: the sampling key (needed when temperature > 0).
    temperature, top_k, top_p: sampling controls: temperature >= 0; top_k >= 0 (0: off; above
      the vocabulary, every token); top_p in [0, 1] (1: off; the most likely token always stays).
    prompt_visible: the prompts are a prefix LM's prefixes, attended in both directions (see
      `continue_prompts`).

  Returns:
    A (B, P + N) numpy array for array input, or a list of lists for list input.

  Raises:
    ValueError: for an empty prompt, token ids outside the vocabulary, a prompt plus new
      tokens longer than the context (n_positions), a negative max_new_tokens, or sampling
      controls out of range.
  """
  check_sampling(max_new_tokens, temperature, top_k, top_p)
  rows, as_lists = prompt_rows(prompt, model.cfg.vocab_size)
  longest = max(len(r) for r in rows)
  if model.cfg.positions == "learned" and longest + max_new_tokens > model.cfg.n_positions:
    raise ValueError(f"a prompt of {longest} tokens plus {max_new_tokens} new ones exceeds the context of "
                     f"{model.cfg.n_positions}")
  if temperature > 0 and key is None:
    raise ValueError("sampling (temperature > 0) needs a key")
  p = bucket(longest)
  tokens = np.zeros((len(rows), p), np.int32)
  mask = np.zeros((len(rows), p), bool)
  for i, r in enumerate(rows):
    tokens[i, p - len(r):], mask[i, p - len(r):] = r, True
  run = _compiled_generate(model, int(max_new_tokens), int(top_k), float(temperature) == 0.0, bool(prompt_visible))
  new = np.asarray(run(params, tokens, mask, key if key is not None else jax.random.key(0),
                       jnp.float32(temperature), jnp.float32(top_p)))
  if as_lists:
    return [r + new[i].tolist() for i, r in enumerate(rows)]
  return np.concatenate([np.asarray(prompt), new], axis=1)


# ---------------------------------------------------------------------------------------
# The model of an experiment config (its plug-in for the loop is research/tasks/gpt2.py).


def model_config(config, vocab_size: int) -> GPT2Config:
  """The GPT2Config of an experiment config (experiments/gpt2.py)."""
  return GPT2Config(vocab_size=vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                    n_layer=config.n_layer, n_head=config.n_head, num_kv_heads=config.num_kv_heads or None,
                    positions=config.positions, attention=config.attention, embd_pdrop=config.dropout,
                    resid_pdrop=config.dropout, scan_layers=config.scan_layers, remat=config.remat,
                    dtype=config.dtype)


# ---------------------------------------------------------------------------------------
# Evaluation at any context length.


@functools.partial(jax.jit, static_argnames=("model", "from_position"))
def _window_nll(model: GPT2, params, tokens, from_position: int):
  """(summed next-token NLL, number of predictions) of (B, L + 1) windows, from position `from_position`."""
  logits = model.apply({"params": params}, tokens[:, :-1])  # (B, L, vocab)
  scored = jnp.broadcast_to(jnp.arange(tokens.shape[1] - 1) >= from_position, tokens[:, 1:].shape)  # (B, L)
  count = jnp.sum(scored)
  return lm_loss(logits, tokens[:, 1:], scored) * count, count


def eval_loss(model: GPT2, params, windows, *, batch_size: int = 64, from_position: int = 0) -> float:
  """Mean next-token cross-entropy (nats per token) of windows of any length L, e.g. beyond the training context.

  Each window's first L tokens are the input (positions 0 .. L-1) and each predicts the token after
  it, as the task's `evaluate` scores windows of seq_len + 1; at L = seq_len the two agree.

  Args:
    model: a GPT2 module.
    params: its parameters (the inner dict, without the "params" key).
    windows: (N, L + 1) token ids.
    batch_size: windows per forward pass.
    from_position: score only the predictions made at positions >= this (0: all L), e.g. the
      positions a model never saw in training.

  Returns:
    The mean NLL in nats over the scored predictions of all windows.

  Raises:
    ValueError: for windows longer than a learned position table (n_positions + 1 tokens), no
      windows, or from_position outside 0 .. L-1.
  """
  windows = np.asarray(windows)
  if windows.ndim != 2 or len(windows) == 0 or windows.shape[1] < 2:
    raise ValueError(f"expected (N, L + 1) token windows with N >= 1 and L >= 1, got shape {windows.shape}")
  length = windows.shape[1] - 1
  if model.cfg.positions == "learned" and length > model.cfg.n_positions:
    raise ValueError(f"windows of {length} input tokens exceed the learned context of {model.cfg.n_positions}")
  if not 0 <= from_position < length:
    raise ValueError(f"from_position {from_position} is outside the window's positions 0 .. {length - 1}")
  total, count = 0.0, 0
  for start in range(0, len(windows), batch_size):
    nll, n = _window_nll(model, params, jnp.asarray(windows[start:start + batch_size], jnp.int32), from_position)
    total, count = total + float(nll), count + int(n)
  return total / count
