"""Tokenizers for the language models: characters, byte-level BPE trained here, GPT-2's own files.

    tok = research.data.tokenizers.make("char", texts)         # or "bpe" (trained on texts), or
    tok = research.data.tokenizers.make("gpt2:/path/to/dir")   # vocab.json + merges.txt of GPT-2
    tok = research.data.tokenizers.make("wordpiece", texts)    # BERT's WordPiece, trained on texts
    tok = research.data.tokenizers.make("bert:/path/to/dir")   # vocab.txt of a BERT
    ids = tok.encode("def f(x):")                              # list of ints
    text = tok.decode(ids)

Every tokenizer saves itself as JSON (`save(path)`, `load(path)`) beside a run's checkpoints,
so a resumed run and its samples use the same vocabulary, and writes the files of transformers'
`AutoTokenizer.from_pretrained(directory)` with `tok.save_vocab(directory)`: GPT-2's vocab.json +
merges.txt for byte-level BPE, a `tokenizers` tokenizer.json for characters, BERT's vocab.txt
for WordPiece. Each encodes to the same ids as `tok.encode` (transformers' tokenizer adds no
special tokens to these) and decodes them to the same text.
"""

import heapq
import json
import os
from collections.abc import Iterable, Mapping, Sequence

KINDS = ("char", "bpe", "gpt2:<dir>", "wordpiece", "bert:<dir>")


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

  @property
  def end_of_text(self) -> int | None:
    """No end-of-text token: documents are separated by a blank line."""
    return None

  def save_vocab(self, directory: str) -> None:
    """Writes tokenizer.json + tokenizer_config.json that transformers' AutoTokenizer loads.

    A `tokenizers` WordLevel model over the alphabet, a pre-tokenizer splitting every character
    and a decoder concatenating them: it encodes as `encode` (an unseen character is id 0,
    U+FFFD, its unknown token) and decodes as `decode` does the ids of the vocabulary. Ids past
    the alphabet (rows a vocabulary multiple adds to the model) decode to U+FFFD here and to
    nothing in transformers.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
    tokenizer = Tokenizer(models.WordLevel({c: i for i, c in enumerate(self.alphabet)}, unk_token=self.UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    tokenizer.decoder = decoders.Fuse()
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    _write_config(directory, {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": self.UNKNOWN})


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
    """GPT-2's own tokenizer from a local directory holding vocab.json and merges.txt, or the
    tokenizer.json alone that transformers 5 saves."""
    from tokenizers import ByteLevelBPETokenizer  # pylint: disable=import-outside-toplevel
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    for path in (vocab, merges):
      if not os.path.exists(path):
        if os.path.exists(os.path.join(directory, "tokenizer.json")):
          return cls(_tokenizer_file(directory, "BPE"), "gpt2")
        raise ValueError(f"no GPT-2 tokenizer in {directory}: {os.path.basename(path)} is missing "
                         "(and there is no tokenizer.json)")
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
    return {"kind": self.kind, "tokenizer": json.loads(self._raw().to_str())}

  def _raw(self):
    return getattr(self.tokenizer, "_tokenizer", self.tokenizer)  # a wrapper's underlying Tokenizer

  @property
  def end_of_text(self) -> int | None:
    """The id of <|endoftext|>, or None when the vocabulary has none."""
    return self.tokenizer.token_to_id("<|endoftext|>")

  def save_vocab(self, directory: str) -> None:
    """Writes GPT-2's vocab.json + merges.txt and a tokenizer_config.json (GPT2Tokenizer) for transformers.

    The files are those `gpt2:<directory>` reads back. transformers' GPT2Tokenizer encodes as
    `encode` and, with `skip_special_tokens=True`, decodes as `decode` (which leaves out
    <|endoftext|>). One difference for GPT-2's own files (kind "gpt2"): a literal
    "<|endoftext|>" in the text is its id there, but bytes here, where it is no special token.
    """
    os.makedirs(directory, exist_ok=True)
    self._raw().model.save(directory)  # vocab.json, merges.txt
    end = "<|endoftext|>" if self.end_of_text is not None else None
    _write_config(directory, {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "bos_token": end,
                              "eos_token": end, "unk_token": end})


def _tokenizer_file(directory: str, model: str):
  """The `tokenizers` Tokenizer of directory/tokenizer.json, checked to be of `model` ("BPE", "WordPiece").

  Raises:
    ValueError: for another model.
  """
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  path = os.path.join(directory, "tokenizer.json")
  tokenizer = Tokenizer.from_file(path)
  found = json.loads(tokenizer.to_str())["model"].get("type")
  if found != model:
    raise ValueError(f"{path} holds a {found} tokenizer, not {model}")
  return tokenizer


def _write_config(directory: str, settings: dict) -> None:
  """tokenizer_config.json: `settings`, decoding without transformers' clean-up of spaces before punctuation."""
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({**settings, "clean_up_tokenization_spaces": False}, f, indent=2)


class WordPieceTokenizer(HFTokenizer):
  """BERT's WordPiece (Wu et al. 2016; Devlin et al. 2019), with [PAD] [UNK] [CLS] [SEP] [MASK].

  `encode` gives the word pieces only; the [CLS] ... [SEP] frame and padding are the data
  pipeline's (research.data.encoder), so one stream of ids serves every sequence length.
  """

  SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
  PREFIX = "##"  # marks a piece that continues a word

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2,
            limit_alphabet: int = 1000) -> "WordPieceTokenizer":
    """WordPiece trained on `texts`, cased (code and identifiers keep their case); the special tokens are ids 0-4.

    The same texts and arguments give the same vocabulary and ids in every process
    (`fit_wordpiece`); the pieces are numbered after the special tokens by length and text.
    """
    from tokenizers import BertWordPieceTokenizer  # pylint: disable=import-outside-toplevel
    from tokenizers import models  # pylint: disable=import-outside-toplevel
    tokenizer = BertWordPieceTokenizer(lowercase=False)._tokenizer  # pylint: disable=protected-access
    words = {}  # word -> occurrences, split by BERT's own normalizer and pre-tokenizer
    for text in texts:
      for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text)):
        words[word] = words.get(word, 0) + 1
    pieces = fit_wordpiece(words, vocab_size - len(cls.SPECIAL), min_frequency, limit_alphabet, cls.PREFIX)
    pieces.sort(key=lambda p: (len(p.removeprefix(cls.PREFIX)), p.startswith(cls.PREFIX), p))
    tokenizer.model = models.WordPiece({p: i for i, p in enumerate(list(cls.SPECIAL) + pieces)}, unk_token="[UNK]",
                                       continuing_subword_prefix=cls.PREFIX)
    return cls(tokenizer, "wordpiece")

  @classmethod
  def bert_files(cls, directory: str) -> "WordPieceTokenizer":
    """A BERT's own vocab.txt (as transformers 4 saves it) from a local directory, lower-cased if
    tokenizer_config.json says so (bert-*-uncased); or the tokenizer.json alone that transformers 5 saves."""
    from tokenizers import BertWordPieceTokenizer  # pylint: disable=import-outside-toplevel
    vocab, settings = os.path.join(directory, "vocab.txt"), os.path.join(directory, "tokenizer_config.json")
    if not os.path.exists(vocab):
      if os.path.exists(os.path.join(directory, "tokenizer.json")):  # transformers 5 saves this file alone
        return cls(_tokenizer_file(directory, "WordPiece"), "bert")
      raise ValueError(f"no BERT tokenizer in {directory}: vocab.txt is missing (and there is no tokenizer.json)")
    lowercase = True
    if os.path.exists(settings):
      with open(settings) as f:
        lowercase = bool(json.load(f).get("do_lower_case", True))
    return cls(BertWordPieceTokenizer(vocab, lowercase=lowercase)._tokenizer, "bert")  # pylint: disable=protected-access

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def special_ids(self) -> dict[str, int]:
    """{"[PAD]": id, "[UNK]": id, "[CLS]": id, "[SEP]": id, "[MASK]": id}.

    Raises:
      ValueError: if the vocabulary lacks one of them.
    """
    ids = {token: self.tokenizer.token_to_id(token) for token in self.SPECIAL}
    missing = [token for token, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"the vocabulary has no {', '.join(missing)}")
    return ids

  def save_vocab(self, directory: str) -> None:
    """Writes vocab.txt (one token per line, in id order), the file transformers' BertTokenizer reads."""
    vocab = self.tokenizer.get_vocab()
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
      f.writelines(token + "\n" for token, _ in sorted(vocab.items(), key=lambda item: item[1]))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      lowercase = (json.loads(self.tokenizer.to_str()).get("normalizer") or {}).get("lowercase", False)
      json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": bool(lowercase)}, f)


def fit_wordpiece(words: Mapping[str, int], size: int, min_frequency: int = 2, limit_alphabet: int = 1000,
                  prefix: str = "##") -> list[str]:
  """The pieces of a WordPiece vocabulary, learnt by merging pairs as `tokenizers`' WordPieceTrainer does.

  Words start as characters, all but the first marked with `prefix`; the most frequent
  adjacent pair (counted over `words` with their counts) is merged, again and again, until
  `size` pieces exist or no pair occurs `min_frequency` times. Unlike the `tokenizers`
  trainer, whose ties between equally frequent pairs fall to ids numbered in a hash map's
  order (random in every process), a tie here goes to the pair first in string order, so the
  result is a function of the arguments alone.

  Args:
    words: each pre-tokenized word and its number of occurrences.
    size: the most pieces returned (the vocabulary less its special tokens).
    min_frequency: a pair occurring fewer times is never merged.
    limit_alphabet: the most characters kept (the most frequent; ties in character order);
      the others are left out of words, as the `tokenizers` trainer does.
    prefix: the continuing-subword prefix.

  Returns:
    The pieces: the alphabet, the prefixed characters, then the merges in the order made.
  """
  chars = {}
  for word, count in words.items():
    for c in word:
      chars[c] = chars.get(c, 0) + count
  alphabet = sorted(chars, key=lambda c: (-chars[c], c))[:limit_alphabet]
  kept = set(alphabet)
  symbols, counts = [], []  # each word as its current pieces, and its occurrences
  for word in sorted(words):
    letters = [c for c in word if c in kept]
    if letters:
      symbols.append([letters[0]] + [prefix + c for c in letters[1:]])
      counts.append(words[word])
  pieces = dict.fromkeys(sorted(kept))
  for word in symbols:
    pieces.update(dict.fromkeys(word))
  pair_counts, holders, queue = {}, {}, []  # queue: (-count, pair), stale entries skipped when popped

  def count_pairs(i: int, sign: int) -> None:
    for pair in zip(symbols[i], symbols[i][1:]):
      pair_counts[pair] = pair_counts.get(pair, 0) + sign * counts[i]
      if sign > 0:
        holders.setdefault(pair, set()).add(i)
        heapq.heappush(queue, (-pair_counts[pair], pair))

  for i in range(len(symbols)):
    count_pairs(i, 1)
  while len(pieces) < size and queue:
    negative, pair = heapq.heappop(queue)
    if -negative != pair_counts[pair]:
      continue  # counted again since it was queued
    if -negative < min_frequency:
      break
    first, second = pair
    merged = first + second[len(prefix):]
    pieces[merged] = None
    for i in sorted(holders.pop(pair)):
      word = symbols[i]
      if pair not in zip(word, word[1:]):
        continue  # merged away by an earlier merge
      count_pairs(i, -1)
      out, j = [], 0
      while j < len(word):
        if word[j:j + 2] == [first, second]:
          out.append(merged)
          j += 2
        else:
          out.append(word[j])
          j += 1
      symbols[i] = out
      count_pairs(i, 1)
  return list(pieces)[:size]


def make(kind: str, texts: Iterable[str] = (), vocab_size: int = 2048):
  """A tokenizer: "char", "bpe" or "wordpiece" fitted on `texts`, or "gpt2:<dir>" / "bert:<dir>" read from files.

  Raises:
    ValueError: for an unknown kind.
  """
  if kind == "char":
    return CharTokenizer.fit(texts)
  if kind == "bpe":
    return HFTokenizer.train_bpe(texts, vocab_size)
  if kind.startswith("gpt2:"):
    return HFTokenizer.gpt2_files(kind.split(":", 1)[1])
  if kind == "wordpiece":
    return WordPieceTokenizer.train(texts, vocab_size)
  if kind.startswith("bert:"):
    return WordPieceTokenizer.bert_files(kind.split(":", 1)[1])
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
  cls = WordPieceTokenizer if data["kind"] in ("wordpiece", "bert") else HFTokenizer
  return cls(Tokenizer.from_str(json.dumps(data["tokenizer"])), data["kind"])
