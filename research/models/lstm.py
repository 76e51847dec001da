"""An LSTM language model (Hochreiter & Schmidhuber 1997; stacked and regularised as Zaremba et al. 2014).

    cfg = lstm.LSTMConfig(vocab_size=..., width=256, n_layer=2)
    model = lstm.LSTM(cfg)
    logits = model.apply({"params": params}, input_ids)              # (B, T, vocab), as the GPT's call
    tokens = lstm.generate(model, params, prompts, max_new_tokens=50)

A token embedding, n_layer LSTM layers and an output projection tied to the embedding (or a
Dense head of its own). Each layer computes, for its input x_t and its state (h, c),

    i, f, g, o = split(x_t W + h_{t-1} U + b)          # W (E, 4H), U (H, 4H), b (4H,)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

in torch.nn.LSTM's gate order (i, f, g, o); x W + b is one matrix product over all T steps, and
the recurrence over time is an `nn.scan` of `LSTMCell` with its parameter U broadcast to every
step. The forget gate's bias starts at 1 (Jozefowicz et al. 2015), so the cell state is kept
from the start; U is orthogonal per gate. Dropout (training only) falls on the non-recurrent
connections: the input of every layer and the output of the last (Zaremba et al.).

Generation runs the prompt through the layers once and then carries (h, c) through a
`lax.scan` over the new tokens: each new token costs one step of the recurrence, whatever the
length of the text before it. Prompts of different lengths are left-padded and the padding is
masked out of the state, so a row's tokens are those it would get alone.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import gpt2
from research.models import layers


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
  """The LSTM language model's hyperparameters.

  Attributes:
    vocab_size: tokens in the vocabulary.
    width: the embedding and hidden width (E = H).
    n_layer: stacked LSTM layers.
    dropout: dropout on each layer's input and on the last layer's output (training only; a
      call may override it with a traced rate).
    tie_embeddings: the output projection is the token embedding's transpose (Press & Wolf
      2017; no output bias); else a Dense head of its own.
    dtype: compute dtype of the matrix products; parameters, the cell state and the logits stay float32.
  """

  vocab_size: int = 256
  width: int = 256
  n_layer: int = 2
  dropout: float = 0.0
  tie_embeddings: bool = True
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("vocab_size", "width", "n_layer"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class LSTMState(NamedTuple):
  """Every layer's recurrent state."""

  h: jax.Array  # (n_layer, B, width), float32
  c: jax.Array  # (n_layer, B, width), float32


class Carry(NamedTuple):
  """One layer's state, carried by the scan over time."""

  h: jax.Array  # (B, width)
  c: jax.Array  # (B, width)


# ---------------------------------------------------------------------------------------
# The model.


def _forget_bias_one(key, shape, dtype=jnp.float32):
  """Zeros with the forget gate's block (the second quarter of 4H) at 1."""
  del key
  width = shape[0] // 4
  return jnp.zeros(shape, dtype).at[width:2 * width].set(1.0)


def _orthogonal_gates(key, shape, dtype=jnp.float32):
  """(H, 4H): an orthogonal (H, H) block per gate."""
  width = shape[0]
  keys = jax.random.split(key, 4)
  return jnp.concatenate([nn.initializers.orthogonal()(k, (width, width), dtype) for k in keys], axis=1)


class LSTMCell(nn.Module):
  """One time step: (state, x_t W + b, keep) -> (new state, h_t); `keep` False leaves the state as it was."""

  width: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, carry: Carry, inputs):
    projected, keep = inputs  # (B, 4H) of x_t W + b; keep: (B,) booleans or None
    u = self.param("recurrent_kernel", nn.with_logical_partitioning(_orthogonal_gates, ("embed", "mlp")),
                   (self.width, 4 * self.width))
    gates = (projected + jnp.dot(carry.h.astype(self.dtype), u.astype(self.dtype))).astype(jnp.float32)  # (B, 4H)
    i, f, g, o = jnp.split(gates, 4, axis=-1)  # each (B, H)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if keep is not None:
      h, c = jnp.where(keep[:, None], h, carry.h), jnp.where(keep[:, None], c, carry.c)
    return Carry(h, c), h


class LSTMLayer(nn.Module):
  """x (B, T, E) and the layer's state -> (h_1 .. h_T (B, T, H), the state after step T)."""

  width: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, carry: Carry, mask=None):
    # x W + b for all T steps as one product; the scan is left with h U only.
    projected = layers.Dense(4 * self.width, name="input", dtype=self.dtype,
                             kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
                             bias_init=nn.with_logical_partitioning(_forget_bias_one, ("mlp",)))(x)  # (B, T, 4H)
    scan = nn.scan(LSTMCell, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
    carry, hs = scan(self.width, self.dtype, name="cell")(carry, (projected, mask))  # hs: (B, T, H)
    return hs, carry


class LSTM(nn.Module):
  """`apply({"params": p}, input_ids)` -> logits (B, T, vocab_size) float32, as GPT2's call.

  Keyword arguments: `state` (an LSTMState to start from, e.g. `init_state`'s; then the state
  after the last step is returned too: (logits, state)), `mask` (B, T) booleans (False: the
  token leaves the state unchanged, e.g. left padding), `train` (dropout; needs
  rngs={'dropout'}), `dropout_rate` (in training, in place of cfg.dropout; may be a traced scalar).
  Without `state` every row starts from zeros.
  """

  cfg: LSTMConfig

  @nn.compact
  def __call__(self, input_ids, *, state: LSTMState | None = None, mask=None, train: bool = False,
               dropout_rate=None):
    cfg = self.cfg
    b, t = input_ids.shape
    given = state is not None
    if state is None:
      state = self.init_state(b)
    wte = nn.Embed(cfg.vocab_size, cfg.width, name="wte", dtype=cfg.dtype,
                   embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    drop = layers.Dropout(cfg.dropout)
    x = wte(input_ids)  # (B, T, E)
    hs, cs = [], []
    for i in range(cfg.n_layer):
      x, carry = LSTMLayer(cfg.width, cfg.dtype, name=f"layer_{i}")(
          drop(x, train, rate=dropout_rate), Carry(state.h[i], state.c[i]), mask)  # (B, T, H)
      hs.append(carry.h)
      cs.append(carry.c)
    x = drop(x, train, rate=dropout_rate).astype(cfg.dtype)
    if cfg.tie_embeddings:
      logits = wte.attend(x.reshape(b * t, -1)).reshape(b, t, -1)  # (B, T, vocab)
    else:
      logits = layers.Dense(cfg.vocab_size, name="head", dtype=cfg.dtype,
                            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                     ("embed", "vocab")))(x)
    logits = logits.astype(jnp.float32)
    return (logits, LSTMState(jnp.stack(hs), jnp.stack(cs))) if given else logits

  def init_state(self, batch: int) -> LSTMState:
    """Zeros for every layer: (n_layer, batch, width) each."""
    zeros = jnp.zeros((self.cfg.n_layer, batch, self.cfg.width), jnp.float32)
    return LSTMState(zeros, zeros)


def count_params(cfg: LSTMConfig, embeddings: bool = True) -> int:
  """Parameters from shapes alone; without `embeddings`, Kaplan et al.'s non-embedding count.

  The non-embedding count leaves out the token embedding and an untied output head: n_layer x
  (4H (E + H) + 4H) for the layers.
  """
  shapes = jax.eval_shape(lambda: LSTM(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(shapes)["params"])[0]
  return sum(math.prod(leaf.shape) for path, leaf in flat if embeddings or path[0].key not in ("wte", "head"))


def width_for(non_embedding_params: int, n_layer: int) -> int:
  """The width whose n_layer layers have the non-embedding count closest to `non_embedding_params`.

  Per layer 8 H^2 + 4 H parameters (E = H); the nearest integer H of the quadratic's root or its neighbour.
  """
  per_layer = non_embedding_params / n_layer
  root = (-4 + math.sqrt(16 + 32 * per_layer)) / 16
  candidates = [max(1, math.floor(root)), max(1, math.ceil(root))]
  return min(candidates, key=lambda h: abs(n_layer * (8 * h * h + 4 * h) - non_embedding_params))


# ---------------------------------------------------------------------------------------
# Generation: the prompt once, then (h, c) carried through a lax.scan over the new tokens.


class DecodeCarry(NamedTuple):
  """What the decoding scan carries from one new token to the next."""

  state: LSTMState
  logits: jax.Array  # (B, vocab) for the next token
  key: jax.Array


def continue_prompts(model: LSTM, params, tokens, prompt_mask, key, max_new_tokens: int, temperature=1.0,
                     top_k: int = 0, top_p=1.0):
  """New tokens after left-padded prompts: the prompt through the layers, then a `lax.scan` of single steps.

  A pure function (no jit of its own), so it can run inside a larger compiled program; `generate`
  is its host-side front end. Tokens are chosen by the GPT's rule (greedy at temperature 0, else
  temperature / top-k / top-p sampling).

  Args:
    model: an LSTM module.
    params: its parameters (the inner dict, without the "params" key).
    tokens: (B, P) prompt ids, left-padded.
    prompt_mask: (B, P) booleans, False at the padding (which leaves the state at zero).
    key: the sampling key.
    max_new_tokens: N, the tokens to add.
    temperature: 0 is greedy (traced; a Python 0 compiles a greedy-only program).
    top_k: top-k sampling (0: off); a Python int.
    top_p: nucleus sampling threshold (1: off; traced).

  Returns:
    (B, N) int32 new tokens.
  """
  b = tokens.shape[0]
  logits, state = model.apply({"params": params}, tokens, state=model.init_state(b), mask=prompt_mask)

  def step(carry: DecodeCarry, _):
    k_choose, key = jax.random.split(carry.key)
    token = gpt2._choose(carry.logits, k_choose, temperature, top_k, top_p)  # (B,)  pylint: disable=protected-access
    logits, state = model.apply({"params": params}, token[:, None], state=carry.state)  # (B, 1, vocab)
    return DecodeCarry(state, logits[:, -1], key), token

  _, new = jax.lax.scan(step, DecodeCarry(state, logits[:, -1], key), None, length=max_new_tokens)  # (N, B)
  return new.T.astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _compiled_generate(model: LSTM, max_new_tokens: int, top_k: int, greedy: bool):
  """One jitted program per (model, max_new_tokens, top_k, greedy); jax caches it per prompt bucket shape."""

  @jax.jit
  def run(params, tokens, prompt_mask, key, temperature, top_p):
    return continue_prompts(model, params, tokens, prompt_mask, key, max_new_tokens, 0.0 if greedy else temperature,
                            top_k, top_p)

  return run


def generate(model: LSTM, params, prompt, max_new_tokens: int, *, key=None, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0):
  """The prompt(s) followed by `max_new_tokens` new tokens; temperature 0 is greedy.

  Args:
    model: an LSTM module.
    params: its parameters (the inner dict, without the "params" key).
    prompt: token ids: a (B, P) array, or a list of B lists of different lengths (left-padded
      into a bucket of lengths, as gpt2.generate's, the padding masked out of the state).
    max_new_tokens: tokens to add.
    key: the sampling key (needed when temperature > 0).
    temperature, top_k, top_p: sampling controls: temperature >= 0; top_k >= 0 (0: off); top_p
      in [0, 1] (1: off).

  Returns:
    A (B, P + N) numpy array for array input, or a list of lists for list input.

  Raises:
    ValueError: for an empty prompt, token ids outside the vocabulary, a negative
      max_new_tokens, or sampling controls out of range.
  """
  gpt2.check_sampling(max_new_tokens, temperature, top_k, top_p)
  if temperature > 0 and key is None:
    raise ValueError("sampling (temperature > 0) needs a key")
  rows, as_lists = gpt2.prompt_rows(prompt, model.cfg.vocab_size)
  p = gpt2.bucket(max(len(r) for r in rows))
  tokens = np.zeros((len(rows), p), np.int32)
  mask = np.zeros((len(rows), p), bool)
  for i, r in enumerate(rows):
    tokens[i, p - len(r):], mask[i, p - len(r):] = r, True
  run = _compiled_generate(model, int(max_new_tokens), int(top_k), float(temperature) == 0.0)
  new = np.asarray(run(params, tokens, mask, key if key is not None else jax.random.key(0),
                       jnp.float32(temperature), jnp.float32(top_p)))
  if as_lists:
    return [r + new[i].tolist() for i, r in enumerate(rows)]
  return np.concatenate([np.asarray(prompt), new], axis=1)


# ---------------------------------------------------------------------------------------
# The model of an experiment config (experiments/gpt2.py with --config.model=lstm).


def model_config(config, vocab_size: int) -> LSTMConfig:
  """The LSTMConfig of an experiment config (experiments/gpt2.py's lstm_* fields and its dropout and dtype)."""
  return LSTMConfig(vocab_size=vocab_size, width=config.lstm_width, n_layer=config.lstm_layers,
                    dropout=config.dropout, tie_embeddings=config.lstm_tie_embeddings, dtype=config.dtype)
