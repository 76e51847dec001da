"""Exact match of decoded sequences: as text, or as token ids up to the end of sequence (jit-able).

    exact_match(["412", "four hundred"], ["412", "four hundred two"])   # 0.5
    sequence_accuracy(predicted_ids, target_ids, eos_id=1)              # jnp scalar in [0, 1]

A prediction matches when it is its target's whole sequence: the same text (whitespace aside),
or the same ids up to and including the target's first end-of-sequence id, whatever follows it.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

EOS_ID = 1  # T5's end of sequence


def _normal(text: str | bytes) -> str:
  text = text.decode("utf-8") if isinstance(text, bytes) else text
  return " ".join(text.split())


def exact_match(predictions: Sequence[str | bytes], targets: Sequence[str | bytes]) -> float:
  """The fraction of predictions equal to their targets, compared with runs of whitespace as one space.

  Raises:
    ValueError: for different counts, or none.
  """
  if len(predictions) != len(targets):
    raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
  if not targets:
    raise ValueError("exact match of no sequences is undefined")
  return sum(_normal(p) == _normal(t) for p, t in zip(predictions, targets)) / len(targets)


def sequence_matches(predictions: jax.Array, targets: jax.Array, eos_id: int = EOS_ID) -> jax.Array:
  """Whether each predicted row of ids is its target row up to the target's first `eos_id`, (N,) bool.

  Positions after the target's first `eos_id` (padding) are not compared; a target row without
  one is compared whole.

  Args:
    predictions: (N, length) decoded token ids.
    targets: (N, length) target ids, ended by `eos_id` and padded.
    eos_id: the end-of-sequence id.

  Raises:
    ValueError: for arrays of different shapes.
  """
  if predictions.shape != targets.shape:
    raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape")
  is_eos = targets == eos_id  # (N, length)
  compared = jnp.cumsum(is_eos, axis=-1) - is_eos == 0  # up to and including the first eos
  return jnp.all((predictions == targets) | ~compared, axis=-1)  # (N,)


def sequence_accuracy(predictions: jax.Array, targets: jax.Array, eos_id: int = EOS_ID) -> jax.Array:
  """The fraction of rows that `sequence_matches`, a float32 scalar."""
  return jnp.mean(sequence_matches(predictions, targets, eos_id).astype(jnp.float32))
