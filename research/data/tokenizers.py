"""Tokenizers for the language models: characters, byte-level BPE trained here, GPT-2's own files.

    tok = research.data.tokenizers.make("char", texts)         # or "bpe" (trained on texts), or
    tok = research.data.tokenizers.make("gpt2:/path/to/dir")   # vocab.json + merges.txt of GPT-2
    ids = tok.encode("def f(x):")                              # list of ints
    text = tok.decode(ids)

Every tokenizer saves itself as JSON (`save(path)`, `load(path)`) beside a run's checkpoints,
so a resumed run and its samples use the same vocabulary.
"""

import json
import os
from collections.abc import Iterable, Sequence

KINDS = ("char", "bpe", "gpt2:<dir>")


class CharTokenizer:
  """One id per character seen in the training text; id 0 stands for any unseen character."""

  kind = "char"
  UNKNOWN = "\ufffd"

  def __init__(self, alphabet: Sequence[str]):
    self.alphabet = [self.UNKNOWN] + [c for c in alphabet if c != self.UNKNOWN]
    self._ids = {c: i for i, c in enumerate(self.alphabet)}

  @classmethod
  def fit(cls, texts: Iterable[str]) -> "CharTokenizer":
    return cls(sorted(set("".join(texts))))

  @property
  def vocab_size(self) -> int:
    return len(self.alphabet)

  def encode(self, text: str) -> list[int]:
    return [self._ids.get(c, 0) for c in text]

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.alphabet[i] if 0 <= i < len(self.alphabet) else self.UNKNOWN for i in ids)

  def to_json(self) -> dict:
    return {"kind": self.kind, "alphabet": self.alphabet[1:]}


class HFTokenizer:
  """A `tokenizers` library tokenizer: byte-level BPE trained here, or GPT-2's vocab.json + merges.txt."""

  def __init__(self, tokenizer, kind: str):
    self.tokenizer, self.kind = tokenizer, kind

  @classmethod
  def train_bpe(cls, texts: Iterable[str], vocab_size: int = 2048) -> "HFTokenizer":
    """Byte-level BPE (GPT-2's scheme: bytes, then merges) trained on `texts`."""
    from tokenizers import ByteLevelBPETokenizer  # pylint: disable=import-outside-toplevel
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    return cls(tokenizer, "bpe")

  @classmethod
  def gpt2_files(cls, directory: str) -> "HFTokenizer":
    """GPT-2's own tokenizer from a local directory holding vocab.json and merges.txt."""
    from tokenizers import ByteLevelBPETokenizer  # pylint: disable=import-outside-toplevel
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    for path in (vocab, merges):
      if not os.path.exists(path):
        raise ValueError(f"no GPT-2 tokenizer in {directory}: {os.path.basename(path)} is missing")
    return cls(ByteLevelBPETokenizer(vocab, merges), "gpt2")

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]  # encoded in parallel threads

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids))

  def to_json(self) -> dict:
    raw = getattr(self.tokenizer, "_tokenizer", self.tokenizer)  # the wrapper's underlying Tokenizer
    return {"kind": self.kind, "tokenizer": json.loads(raw.to_str())}


def make(kind: str, texts: Iterable[str] = (), vocab_size: int = 2048):
  """A tokenizer: "char" or "bpe" fitted on `texts`, or "gpt2:<dir>" read from local files.

  Raises:
    ValueError: for an unknown kind.
  """
  if kind == "char":
    return CharTokenizer.fit(texts)
  if kind == "bpe":
    return HFTokenizer.train_bpe(texts, vocab_size)
  if kind.startswith("gpt2:"):
    return HFTokenizer.gpt2_files(kind.split(":", 1)[1])
  raise ValueError(f"unknown tokenizer {kind!r}; choose one of: {', '.join(KINDS)}")


def save(path: str, tokenizer) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(tokenizer.to_json(), f)
  os.replace(tmp, path)


def load(path: str):
  """Reads a tokenizer written by `save`."""
  with open(path) as f:
    data = json.load(f)
  if data["kind"] == "char":
    return CharTokenizer(data["alphabet"])
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  return HFTokenizer(Tokenizer.from_str(json.dumps(data["tokenizer"])), data["kind"])
