"""GPT fine-tuning with task-specific input transformations (Radford et al., "Improving Language
Understanding by Generative Pre-Training", 2018, section 3.3 and Figure 1).

    special = gpt_classifier.special_tokens(vocab_size)             # start, delimiter, extract ids
    rows = [gpt_classifier.classification_input(ids, special) for ids in texts]
    batch = gpt_classifier.pad(rows, seq_len)                      # input_ids, extract, mask
    model = gpt_classifier.GPTClassifier(cfg, num_labels)          # cfg.vocab_size = vocab_size + 3
    logits, lm_logits = model.apply({"params": p}, batch.input_ids, batch.extract)

A pre-trained GPT is fine-tuned on a task by rewriting the task's structured input into token
sequences it can read: a start token, the text(s) with a delimiter token between parts, and an
extract token whose final hidden state h (the last block's, after the final LayerNorm) feeds a
linear head W_y. The three special tokens are new rows of the token embedding, N(0, 0.02) as
the rest; everything else starts from the pre-trained weights.

  classification   [start] text [extract]                         -> softmax(h W_y)
  entailment       [start] premise [delim] hypothesis [extract]   -> softmax(h W_y)
  similarity       both orders of (a, b), h_ab + h_ba             -> softmax((h_ab + h_ba) W_y)
  multiple choice  [start] context [delim] option_k [extract]     -> softmax over k of h_k w

The fine-tuning loss (equation 5) is L3 = L2 + lambda * L1: the task's cross-entropy L2 plus the
language-modelling loss L1 of the same sequences, an auxiliary objective weighted by lambda.
"""

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models.gpt2 import GPT2, GPT2Config, lm_loss

# The head's input layouts: how many sequences one example is, and how their states are combined.
KINDS = ("classification", "similarity", "multiple_choice")
NUM_SPECIAL = 3  # start, delimiter, extract


class SpecialTokens(NamedTuple):
  """The ids of the three tokens added to a GPT's vocabulary for fine-tuning."""

  start: int
  delimiter: int
  extract: int


def special_tokens(vocab_size: int) -> SpecialTokens:
  """The new rows after a vocabulary of `vocab_size`: start, delimiter and extract, in that order."""
  return SpecialTokens(vocab_size, vocab_size + 1, vocab_size + 2)


# ---------------------------------------------------------------------------------------
# The input transformations (Figure 1, right), on lists of token ids.


def classification_input(tokens: Sequence[int], special: SpecialTokens) -> list[int]:
  """[start] + tokens + [extract]."""
  return [special.start, *tokens, special.extract]


def entailment_input(premise: Sequence[int], hypothesis: Sequence[int], special: SpecialTokens) -> list[int]:
  """[start] + premise + [delimiter] + hypothesis + [extract]."""
  return [special.start, *premise, special.delimiter, *hypothesis, special.extract]


def similarity_inputs(a: Sequence[int], b: Sequence[int], special: SpecialTokens) -> list[list[int]]:
  """Both orders of the pair, [a; b] and [b; a], since a similarity has no order: the head sums their states."""
  return [entailment_input(a, b, special), entailment_input(b, a, special)]


def multiple_choice_inputs(context: Sequence[int], options: Sequence[Sequence[int]],
                           special: SpecialTokens) -> list[list[int]]:
  """One sequence per option, [start] + context + [delimiter] + option + [extract]: a forward pass each."""
  if not options:
    raise ValueError("multiple choice needs at least one option")
  return [entailment_input(context, option, special) for option in options]


class Batch(NamedTuple):
  """Transformed inputs as arrays, right-padded: the leading shape is the sequences' own ((N,) or (N, K))."""

  input_ids: np.ndarray  # (..., T) int32, 0 at the padding
  extract: np.ndarray  # (...,) int32: the position of each sequence's extract token (its last)
  mask: np.ndarray  # (..., T) bool, False at the padding


def pad(sequences, length: int) -> Batch:
  """Right-pads transformed sequences (a list of sequences, or a list of lists of them) to `length`.

  A sequence longer than `length` keeps its start and loses the tokens before its extract token,
  which stays last. Causal attention makes the padding invisible to every real position.

  Raises:
    ValueError: for `length` < 2 or an empty sequence.
  """
  if length < 2:
    raise ValueError(f"length must be >= 2 (start and extract), got {length}")
  nested = bool(sequences) and not isinstance(sequences[0][0], (int, np.integer))
  groups = sequences if nested else [sequences]
  if len({len(g) for g in groups}) > 1:
    raise ValueError("every example needs the same number of sequences")
  rows = [list(s) for g in groups for s in g]
  if any(len(r) < 2 for r in rows):
    raise ValueError("every transformed sequence has at least a start and an extract token")
  ids = np.zeros((len(rows), length), np.int32)
  mask = np.zeros((len(rows), length), bool)
  extract = np.zeros(len(rows), np.int32)
  for i, r in enumerate(rows):
    if len(r) > length:
      r = r[:length - 1] + r[-1:]
    ids[i, :len(r)], mask[i, :len(r)], extract[i] = r, True, len(r) - 1
  shape = (len(groups), len(groups[0])) if nested else (len(rows),)
  return Batch(ids.reshape(shape + (length,)), extract.reshape(shape), mask.reshape(shape + (length,)))


# ---------------------------------------------------------------------------------------
# The model: a GPT and a linear head on the extract token's final state.


class GPTClassifier(nn.Module):
  """`apply({"params": p}, input_ids, extract)` -> (task logits, LM logits).

  `kind` fixes the layout: "classification" (also entailment) takes input_ids (B, T) and
  extract (B,) and gives logits (B, num_labels); "similarity" takes (B, 2, T) and (B, 2), the
  two orders, and gives (B, num_labels) from the summed states; "multiple_choice" takes
  (B, K, T) and (B, K) and gives one score per option, (B, K). LM logits are (..., T, vocab),
  the GPT's next-token logits of every sequence, for the auxiliary loss. `train` and
  `dropout_rate` are the GPT's. Parameters: "transformer" (a GPT2's) and "head" (W_y: Dense).
  """

  cfg: GPT2Config
  num_labels: int = 2
  kind: str = "classification"

  def setup(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
    self.transformer = GPT2(self.cfg)
    features = 1 if self.kind == "multiple_choice" else self.num_labels
    self.head = nn.Dense(features, kernel_init=nn.initializers.normal(0.02), name="head")

  def extract_states(self, input_ids, extract, train: bool = False, dropout_rate=None):
    """(the final states at the extract positions (..., n_embd), LM logits (..., T, vocab))."""
    lead, t = input_ids.shape[:-1], input_ids.shape[-1]
    lm_logits, hidden = self.transformer(input_ids.reshape(-1, t), train=train, dropout_rate=dropout_rate,
                                         return_hidden=True)  # (N, T, vocab), (N, T, E)
    h = jnp.take_along_axis(hidden, extract.reshape(-1)[:, None, None], axis=1)[:, 0]  # (N, E)
    return h.reshape(lead + h.shape[-1:]), lm_logits.reshape(lead + lm_logits.shape[-2:])

  def __call__(self, input_ids, extract, train: bool = False, dropout_rate=None):
    h, lm_logits = self.extract_states(input_ids, extract, train, dropout_rate)
    if self.kind == "similarity":
      h = jnp.sum(h, axis=1)  # (B, E): h_ab + h_ba
    logits = self.head(h.astype(jnp.float32))
    if self.kind == "multiple_choice":
      logits = logits[..., 0]  # (B, K): one score per option
    return logits, lm_logits


def with_transformer(variables, transformer):
  """A GPTClassifier's fresh `variables` (boxed) with a pre-trained GPT2's parameters in "transformer".

  The pre-trained token embedding has NUM_SPECIAL fewer rows than the classifier's: its rows
  replace the fresh ones, and the special tokens keep their fresh rows, N(0, 0.02), drawn from
  the init key. The fresh init's logical axis names are kept, so the loop shards the copied
  weights like any others.

  Raises:
    ValueError: when the pre-trained GPT's tensors or shapes do not match the classifier's (the message names
      the tensor).
  """
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  params = dict(variables["params"])
  fresh, loaded = params["transformer"], nn.unbox(transformer)

  def merge(path, box, value):
    target = box.unbox() if is_box(box) else box
    value = jnp.asarray(value)
    is_wte = jax.tree_util.keystr(path).endswith("['wte']['embedding']")
    if is_wte and value.shape[0] + NUM_SPECIAL == target.shape[0]:
      value = jnp.concatenate([value, target[value.shape[0]:]])  # (vocab + 3, E)
    if value.shape != target.shape:
      raise ValueError(f"pre-trained tensor {jax.tree_util.keystr(path)} has shape {value.shape}, the classifier's "
                       f"{target.shape}")
    return box.replace_boxed(value) if is_box(box) else value

  paths = lambda tree: {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
  ours, theirs = paths(nn.unbox(fresh)), paths(loaded)
  if ours != theirs:
    name = min(ours - theirs) if ours - theirs else min(theirs - ours)
    raise ValueError(f"no pre-trained tensor for {name}" if name in ours else f"pre-trained tensor {name} has no "
                     "place in the classifier's GPT")
  params["transformer"] = jax.tree_util.tree_map_with_path(merge, fresh, loaded, is_leaf=is_box)
  return {**variables, "params": params}


# ---------------------------------------------------------------------------------------
# The loss.


def finetune_loss(logits, labels, lm_logits, input_ids, mask, lm_weight):
  """(L3, L2, L1): equation 5, L3 = L2 + lm_weight * L1.

  Args:
    logits: (B, C) task logits (C classes or options).
    labels: (B,) the right class or option.
    lm_logits: (..., T, vocab) the GPT's next-token logits of the transformed sequences.
    input_ids: (..., T) the sequences.
    mask: (..., T) False at the padding.
    lm_weight: lambda, the auxiliary LM loss's weight (a traced scalar in training).

  Returns:
    The total, the task's mean cross-entropy L2 and the mean next-token NLL L1 over the real
    tokens after the first.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  task = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))
  lm = lm_loss(lm_logits[..., :-1, :], input_ids[..., 1:], mask[..., 1:])
  return task + lm_weight * lm, task, lm
