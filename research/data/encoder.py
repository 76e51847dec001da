"""Inputs of encoder models (BERT): [CLS] ... [SEP] sequences with segments and padding.

    examples = research.data.encoder.frame(tokenizer.encode_batch(texts), seq_len=128, special=ids)
    windows = research.data.encoder.EncoderWindows(stream, seq_len=128, special=ids)  # what the loop reads

Both give {"input_ids": int32 (N, seq_len), "attention_mask": int32 (N, seq_len) 1 at real
tokens, "token_type_ids": int32 (N, seq_len) the segment of each token}. `special` maps
"[CLS]", "[SEP]" and "[PAD]" to their ids (WordPieceTokenizer.special_ids()).

EncoderWindows reads a token stream (research.data.tokens.token_stream, with [SEP] as the
separator after every document) the way TokenWindows does for language models: example i
starts at offset i, drawn at random per step, deterministic in (seed, step). A window stops at
the end of its document, so a sequence never spans two documents and the rest is padding.
"""

from collections.abc import Mapping, Sequence

import numpy as np


def frame(first: Sequence[Sequence[int]], seq_len: int, special: Mapping[str, int],
          second: Sequence[Sequence[int]] | None = None) -> dict[str, np.ndarray]:
  """[CLS] a [SEP] (b [SEP]) per example, truncated to seq_len and padded.

  Pairs are truncated longest-first, one token at a time (as BERT's data preparation does), so
  the shorter segment keeps as much as it can.

  Args:
    first: token ids of each example's first segment.
    seq_len: the length of every output row.
    special: ids of "[CLS]", "[SEP]" and "[PAD]".
    second: token ids of each example's second segment (type 1), or None for single segments.

  Returns:
    {"input_ids", "attention_mask", "token_type_ids"}: int32 (N, seq_len) each.

  Raises:
    ValueError: if seq_len leaves no room for a token of each segment.
  """
  specials = 2 if second is None else 3
  if seq_len < specials + (1 if second is None else 2):
    raise ValueError(f"seq_len {seq_len} leaves no room for tokens between {specials} special tokens")
  n = len(first)
  ids = np.full((n, seq_len), special["[PAD]"], np.int32)
  mask = np.zeros((n, seq_len), np.int32)
  types = np.zeros((n, seq_len), np.int32)
  budget = seq_len - specials
  for i in range(n):
    a, b = list(first[i]), list(second[i]) if second is not None else []
    while len(a) + len(b) > budget:
      if len(a) >= len(b):
        a.pop()
      else:
        b.pop()
    row = [special["[CLS]"], *a, special["[SEP]"]]
    if second is not None:
      types[i, len(row):len(row) + len(b) + 1] = 1
      row += [*b, special["[SEP]"]]
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class EncoderWindows:
  """Random [CLS] window [SEP] sequences of a token stream whose documents end in [SEP]."""

  order = "random"

  def __init__(self, stream: np.ndarray, seq_len: int, special: Mapping[str, int]):
    """Builds the windows.

    Args:
      stream: 1-D token ids, each document followed by special["[SEP]"] (np.memmap works).
      seq_len: tokens per sequence, [CLS] and [SEP] included: windows hold seq_len - 2 ids.
      special: ids of "[CLS]", "[SEP]" and "[PAD]".

    Raises:
      ValueError: if seq_len < 3 or the stream is shorter than one window.
    """
    if seq_len < 3:
      raise ValueError(f"seq_len must be >= 3 ([CLS], a token, [SEP]), got {seq_len}")
    if len(stream) < seq_len - 2:
      raise ValueError(f"the token stream has {len(stream)} tokens, fewer than one window of {seq_len - 2}")
    self.stream, self.seq_len, self.special = stream, seq_len, dict(special)

  def __len__(self) -> int:
    return len(self.stream) - (self.seq_len - 2) + 1  # the number of distinct window starts

  def __getitems__(self, indices) -> dict[str, np.ndarray]:
    width = self.seq_len - 2
    starts = np.asarray(indices, np.int64)[:, None]  # (batch, 1)
    windows = np.asarray(self.stream[starts + np.arange(width)], np.int32)  # (batch, width)
    ends = windows == self.special["[SEP]"]
    lengths = np.where(ends.any(axis=1), ends.argmax(axis=1), width)  # tokens before the document's end
    positions = np.arange(self.seq_len)[None]  # (1, seq_len)
    ids = np.full((len(windows), self.seq_len), self.special["[PAD]"], np.int32)
    ids[:, 0] = self.special["[CLS]"]
    ids[:, 1:1 + width] = np.where(positions[:, :width] < lengths[:, None], windows, self.special["[PAD]"])
    ids[np.arange(len(windows)), lengths + 1] = self.special["[SEP]"]
    mask = (positions < (lengths + 2)[:, None]).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
