"""Token streams of TFDS text datasets, tokenized once and cached on disk for the language models.

    texts = research.data.tokens.read_texts("tiny_shakespeare", "train", max_chars=10**7)
    stream = research.data.tokens.token_stream("c4", "train", tokenizer, max_tokens=10**9)
    windows = research.data.TokenWindows(stream, seq_len=1024)   # what the loop reads

A split's texts are read by index from its ArrayRecord files (research.data.source), in
order, a chunk at a time, so a split need not fit in memory. Each text is encoded and
followed by a separator, and the ids are appended to a flat file of uint16 (vocabularies
up to 65,536) or int32 ids, written once under `<data_dir>/token_streams/` and opened as a
read-only numpy memmap afterwards. The file's name holds a fingerprint of the dataset,
split, tokenizer, separator and token budget, so another tokenizer never reads a stale
stream; a half-written file is never seen (it is renamed into place when complete).
"""

import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

from research.checks import ConfigError
from research.data import catalog
from research.data.sources import RecordSource

# The text feature of the catalog's text datasets; others are named by `feature`.
TEXT_FEATURES = {"pg19": "book_text"}
READ_CHUNK = 256  # records read (and encoded) per batch


def text_feature(name: str) -> str:
  """The feature holding a dataset's text: "text" unless TEXT_FEATURES says otherwise."""
  return TEXT_FEATURES.get(name.split("/")[0].split(":")[0], "text")


def _decode(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def iter_texts(name: str, split: str, feature: str | None = None, directory: str | None = None,
               chunk: int = READ_CHUNK) -> Iterator[list[str]]:
  """Yields the texts of a split in order, `chunk` at a time.

  Args:
    name: a bundled dataset or a TFDS catalog name (prepared on first use).
    split: a TFDS split, e.g. "train", "validation", "test[:10%]".
    feature: the text feature (default `text_feature(name)`).
    directory: the TFDS data directory (default research.data.data_dir()).
    chunk: texts per yielded list.

  Raises:
    ConfigError: if the dataset has no such feature.
  """
  feature = feature or text_feature(name)
  records = catalog.source(name, split, directory)
  first = records.records[0] if len(records) else {}
  if len(records) and feature not in first:
    raise ConfigError(f"dataset {name!r} has no text feature {feature!r} (features: {', '.join(sorted(first))})")
  records = RecordSource(records.records, (feature,))
  for start in range(0, len(records), chunk):
    batch = records.__getitems__(range(start, min(start + chunk, len(records))))[feature]
    yield [_decode(t) for t in batch]


def read_texts(name: str, split: str, feature: str | None = None, directory: str | None = None,
               max_chars: int = 0) -> list[str]:
  """The texts of a split in order, stopping after the text that reaches `max_chars` (0: all)."""
  out, total = [], 0
  for texts in iter_texts(name, split, feature, directory):
    for text in texts:
      out.append(text)
      total += len(text)
      if max_chars and total >= max_chars:
        return out
  return out


def _fingerprint(name: str, split: str, feature: str, tokenizer, separator: Sequence[int], max_tokens: int) -> str:
  spec = {"dataset": name, "split": split, "feature": feature, "tokenizer": tokenizer.to_json(),
          "separator": list(separator), "max_tokens": max_tokens}
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def stream_path(name: str, split: str, tokenizer, separator: Sequence[int] = (), max_tokens: int = 0,
                feature: str | None = None, directory: str | None = None) -> str:
  """Where `token_stream` keeps the stream of these arguments."""
  feature = feature or text_feature(name)
  key = _fingerprint(name, split, feature, tokenizer, separator, max_tokens)
  safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)
  return os.path.join(directory or catalog.data_dir(), "token_streams", safe(name), f"{safe(split)}-{key}.bin")


def _dtype(vocab_size: int):
  return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def token_stream(name: str, split: str, tokenizer, separator: Sequence[int] = (), max_tokens: int = 0,
                 feature: str | None = None, directory: str | None = None) -> np.ndarray:
  """A split tokenized into one stream of ids (a read-only memmap), encoded once and cached.

  The stream is text_0 + separator + text_1 + separator + ...: each text of the split in
  order followed by `separator`. With `max_tokens` it stops after that many ids (0: the
  whole split), which is how a corpus larger than a disk budget is used.

  Args:
    name: a bundled dataset or a TFDS catalog name (prepared on first use).
    split: a TFDS split.
    tokenizer: a research.data.tokenizers tokenizer (`encode_batch`, `vocab_size`, `to_json`).
    separator: ids appended after every text (e.g. the end-of-text id, or the encoding of "\\n\\n").
    max_tokens: the most ids kept; 0 keeps all.
    feature: the text feature (default `text_feature(name)`).
    directory: the TFDS data directory; the stream is cached under its token_streams/.

  Returns:
    A 1-D numpy memmap of uint16 (vocabularies up to 65,536) or int32 ids.

  Raises:
    ConfigError: if the split has no text, or no tokens at all.
  """
  path = stream_path(name, split, tokenizer, separator, max_tokens, feature, directory)
  dtype = _dtype(tokenizer.vocab_size)
  if not os.path.exists(path):
    catalog.source(name, split, directory)  # prepares the dataset, or fails, before anything is written here
  with catalog.lock(os.path.dirname(path), os.path.basename(path)):  # one writer; the others wait and read
    if not os.path.exists(path):
      sep = np.asarray(list(separator), dtype)
      written = 0
      with open(path + ".tmp", "wb") as f:
        for texts in iter_texts(name, split, feature, directory):
          ids = np.concatenate([piece for encoded in tokenizer.encode_batch(texts)
                                for piece in (np.asarray(encoded, dtype), sep)])
          if max_tokens:
            ids = ids[:max_tokens - written]
          f.write(ids.tobytes())
          written += len(ids)
          if max_tokens and written >= max_tokens:
            break
      if not written:
        os.remove(path + ".tmp")
        raise ConfigError(f"dataset {name!r} split {split!r} has no tokens")
      os.replace(path + ".tmp", path)
  return np.memmap(path, dtype=dtype, mode="r")
