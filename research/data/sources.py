"""Random-access data sources: what the loop's Batcher reads batches from.

A source is anything with `len(source)` and `source.__getitems__(indices) -> {feature:
array (len(indices), ...)}`: a batch is gathered by index, so any batch is a pure function
of the indices the Batcher draws for (seed, step), and a resumed run needs only its step.

  ArraySource   in-memory numpy arrays (research.data.load, small data).
  RecordSource  a random-access source of records, one dict per example: tfds.data_source
                over ArrayRecord files (research.data.source), or a grain source. Only the
                requested rows are read and decoded, so the data need not fit in memory.
  TokenWindows  a language model's token stream: example i is the window of seq_len + 1
                tokens starting at offset i, drawn at random (with replacement) per step.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


class Source(Protocol):
  """The random-access protocol of the loop's data."""

  def __len__(self) -> int:
    ...

  def __getitems__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    ...


class ArraySource:
  """Examples held as in-memory numpy arrays sharing their leading dimension."""

  # Every example once per epoch, in a fresh permutation each epoch (see Batcher).
  order = "epoch"

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    """Wraps `arrays`.

    Raises:
      ValueError: if the arrays are empty or disagree in length.
    """
    sizes = {k: len(v) for k, v in arrays.items()}
    if not sizes:
      raise ValueError("the data has no features")
    if len(set(sizes.values())) != 1:
      raise ValueError(f"arrays have different lengths: {sizes}")
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self._len = next(iter(sizes.values()))

  def __len__(self) -> int:
    return self._len

  def __getitems__(self, indices) -> dict[str, np.ndarray]:
    idx = np.asarray(indices)
    return {k: v[idx] for k, v in self.arrays.items()}


class RecordSource:
  """A source of records (dicts of per-example arrays), read and stacked by batch.

  Works with `tfds.data_source(...)` (ArrayRecord) and grain's random-access sources, or
  anything indexable by an int that returns a dict of arrays.
  """

  order = "epoch"

  def __init__(self, records, features: Sequence[str] | None = None):
    """Wraps `records`, keeping only `features` (all, by default)."""
    self.records = records
    self.features = tuple(features) if features is not None else None

  def __len__(self) -> int:
    return len(self.records)

  def __getitems__(self, indices) -> dict[str, np.ndarray]:
    indices = [int(i) for i in np.asarray(indices)]
    if hasattr(self.records, "__getitems__"):
      rows = self.records.__getitems__(indices)  # one batched read where the source supports it
    else:
      rows = [self.records[i] for i in indices]
    names = self.features if self.features is not None else tuple(rows[0])
    return {name: _stack([row[name] for row in rows]) for name in names}


def _stack(values: list) -> np.ndarray:
  # Text stays an object array of bytes (as TFDS's as_numpy gives it), not fixed-width strings.
  if isinstance(values[0], (bytes, str)):
    out = np.empty(len(values), object)
    out[:] = values
    return out
  return np.stack([np.asarray(v) for v in values])


class TokenWindows:
  """Random windows of `seq_len + 1` tokens of a token stream, for next-token prediction.

  Example i is `stream[i : i + seq_len + 1]` as `{"tokens": int32 (seq_len + 1,)}`; the
  model reads tokens[:-1] and predicts tokens[1:]. Per-document arrays are concatenated
  (with `separator` between documents when given), so a window may span a document
  boundary, as in GPT-2's training on concatenated text. The Batcher draws window starts
  uniformly with replacement (order "random"), deterministic in (seed, step): no epoch
  permutation of every offset is ever built, so the stream may be as long as memory (or a
  numpy memmap) allows.
  """

  order = "random"

  def __init__(self, tokens: np.ndarray | Sequence[np.ndarray], seq_len: int, separator: int | None = None):
    """Builds the windows.

    Args:
      tokens: one 1-D array of token ids (np.memmap works), or a sequence of per-document
        arrays.
      seq_len: the model's context length; each example holds seq_len + 1 tokens.
      separator: a token id put between documents (e.g. an end-of-text id), or None.

    Raises:
      ValueError: if seq_len < 1 or the stream is shorter than seq_len + 1 tokens.
    """
    if isinstance(tokens, np.ndarray) and tokens.ndim == 1:
      stream = tokens
    else:
      docs = [np.asarray(d).reshape(-1) for d in tokens]
      if separator is not None:
        docs = [piece for d in docs for piece in (d, np.asarray([separator], d.dtype))][:-1]
      stream = np.concatenate(docs) if docs else np.zeros((0,), np.int32)
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if len(stream) < seq_len + 1:
      raise ValueError(f"the token stream has {len(stream)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    self.stream, self.seq_len = stream, seq_len

  def __len__(self) -> int:
    return len(self.stream) - self.seq_len  # the number of distinct window starts

  def __getitems__(self, indices) -> dict[str, np.ndarray]:
    starts = np.asarray(indices, np.int64)[:, None]  # (batch, 1)
    return {"tokens": np.asarray(self.stream[starts + np.arange(self.seq_len + 1)], np.int32)}


def as_source(data: Any) -> Source:
  """`data` as a Source: a mapping of arrays becomes an ArraySource; a Source is kept."""
  if isinstance(data, Mapping):
    return ArraySource(data)
  if hasattr(data, "__getitems__") and hasattr(data, "__len__") and hasattr(data, "order"):
    return data
  if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
    return RecordSource(data)
  raise TypeError(f"cannot read batches from {type(data).__name__}: expected a mapping of arrays or a "
                  "random-access source (len() and __getitems__)")
