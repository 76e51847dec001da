"""number_words: numbers and their English words, a small translation task generated here (no download).

    data = research.data.load("number_words", "train")
    # number (N,) bytes, e.g. b"1205"; words (N,) bytes, e.g. b"one thousand two hundred five"

Translate either way: "412" <-> "four hundred twelve". The words are American English without
"and", commas or hyphens: "twenty one", "one thousand two hundred five", "nine hundred ninety
nine thousand nine hundred ninety nine"; a round part is left out ("two thousand", "ten
thousand five"), and 0 is "zero". Numbers are written without leading zeros.

Splits:

    train        9,000 of the numbers 0 .. 9,999 (1 to 4 digits)
    test         the other 1,000 of them: the same lengths, never the same numbers
    test_longer  1,000 numbers of 5 digits and 1,000 of 6: longer than any seen in training, in
                 both languages (up to 6 digits and 9 words, against 4 and 6 in training)

The ten 1-digit numbers are all in train ("zero" appears in no other number), so every digit and
word of every split is seen in training. The splits are drawn by numpy generators with fixed
seeds: deterministic. `generate(split)` gives the same examples as the builder, as str.

Tokens: one vocabulary for both sides (T5's convention: pad 0, eos 1; then unk, the ten digits
and the 30 number words). A number is read digit by digit, words word by word:

    tok = NumberWordsTokenizer()
    tok.encode("412")                   # [7, 4, 5, 1]: "4" "1" "2" <eos>
    ids = tok.encode_batch(["412", "four hundred twelve"])   # (2, 4) int32, padded with 0
    tok.decode_batch(ids)               # ["412", "four hundred twelve"]
    tok.encode("fourty two")            # ValueError: unknown token 'fourty' in 'fourty two' ...
"""

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
WORDS = ONES + TENS[2:] + ("hundred", "thousand")
LIMIT = 1_000_000  # numbers 0 .. LIMIT - 1 have words here

SPLITS = ("train", "test", "test_longer")
SHORT_LIMIT = 10_000  # train and test share the numbers below this (1 to 4 digits)
TEST_SIZE = 1_000
LONGER_PER_LENGTH = {5: 1_000, 6: 1_000}  # test_longer: this many numbers of each length
SEEDS = {"test": 0, "test_longer": 1}


def to_words(number: int) -> str:
  """The English words of 0 <= number < LIMIT, e.g. 1205 -> "one thousand two hundred five".

  Raises:
    ValueError: for a number outside [0, LIMIT) or not an integer.
  """
  if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or not 0 <= number < LIMIT:
    raise ValueError(f"number words are defined for integers 0 .. {LIMIT - 1}, got {number!r}")
  number = int(number)
  if number == 0:
    return "zero"
  thousands, rest = divmod(number, 1000)
  words = _below_thousand(thousands) + ["thousand"] if thousands else []
  return " ".join(words + _below_thousand(rest))


def _below_thousand(n: int) -> list[str]:
  """The words of 0 <= n < 1000; none for 0 (a round part is left out)."""
  hundreds, rest = divmod(n, 100)
  words = [ONES[hundreds], "hundred"] if hundreds else []
  if rest >= 20:
    tens, ones = divmod(rest, 10)
    words += [TENS[tens]] + ([ONES[ones]] if ones else [])
  elif rest:
    words.append(ONES[rest])
  return words


def to_number(words: str) -> int:
  """The number whose words (as `to_words` writes them, spaces aside) are `words`: the way back.

  Raises:
    ValueError: if `words` are not the words of a number (unknown words, or known ones in an
      order `to_words` never writes, such as "twenty thirty" or "one hundred hundred").
  """
  values = {w: i for i, w in enumerate(ONES)} | {w: 10 * i for i, w in enumerate(TENS) if w}
  total = current = 0
  normal = " ".join(words.split())
  for word in normal.split(" "):
    if word in values:
      current += values[word]
    elif word == "hundred":
      current *= 100
    elif word == "thousand":
      total, current = total + current * 1000, 0
    else:
      raise ValueError(f"{words!r} are not the words of a number: unknown word {word!r}")
  number = total + current
  # A sum of known words is some number; the words are its words only if they round-trip.
  if number >= LIMIT or to_words(number) != normal:
    raise ValueError(f"{words!r} are not the words of a number (as to_words writes them)")
  return number


# ---------------------------------------------------------------------------------------
# The splits.


def numbers(split: str) -> np.ndarray:
  """The numbers of a split, (N,) int64 in increasing order.

  Raises:
    ValueError: for an unknown split.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown number_words split {split!r}; choose one of: {', '.join(SPLITS)}")
  if split == "test_longer":
    rng = np.random.default_rng(SEEDS["test_longer"])
    drawn = [10 ** (length - 1) + rng.choice(9 * 10 ** (length - 1), count, replace=False)
             for length, count in LONGER_PER_LENGTH.items()]
    return np.sort(np.concatenate(drawn)).astype(np.int64)
  # The 1-digit numbers stay in train; the test numbers are drawn from the rest.
  candidates = np.arange(10, SHORT_LIMIT)
  test = np.random.default_rng(SEEDS["test"]).choice(candidates, TEST_SIZE, replace=False)
  if split == "test":
    return np.sort(test).astype(np.int64)
  return np.setdiff1d(np.arange(SHORT_LIMIT), test).astype(np.int64)


def generate(split: str) -> dict[str, np.ndarray]:
  """The examples of a split as (N,) object arrays of str: `number` (digits) and `words`."""
  values = numbers(split)
  return {"number": np.asarray([str(n) for n in values], object),
          "words": np.asarray([to_words(int(n)) for n in values], object)}


class NumberWords(tfds.core.GeneratorBasedBuilder):
  """Numbers and their English words (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release (ArrayRecord files)."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"number": tfds.features.Text(), "words": tfds.features.Text()}),
        supervised_keys=("number", "words"))

  def _split_generators(self, dl_manager):
    del dl_manager  # generated here
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    data = generate(split)
    for number, words in zip(data["number"], data["words"]):
      yield number, {"number": number, "words": words}


# ---------------------------------------------------------------------------------------
# The tokenizer.

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DIGITS = tuple("0123456789")
VOCABULARY = (PAD, EOS, UNK) + DIGITS + WORDS


class NumberWordsTokenizer:
  """Digits one by one and number words one by one, in one fixed vocabulary of VOCABULARY.

  A text is split at whitespace; a run of digits is one token per digit, any other piece one
  token if it is a number word. `encode` appends </s>; `decode` stops at the first </s>.
  """

  kind = "number_words"

  def __init__(self):
    self.vocabulary = VOCABULARY
    self._ids = {token: i for i, token in enumerate(VOCABULARY)}

  @property
  def vocab_size(self) -> int:
    return len(self.vocabulary)

  def tokens(self, text: str | bytes) -> list[str]:
    """The tokens of `text` (bytes are read as UTF-8), </s> not included."""
    text = text.decode("utf-8") if isinstance(text, bytes) else text
    out = []
    for piece in text.split():
      out.extend(piece if piece.isascii() and piece.isdigit() else [piece])
    return out

  def encode(self, text: str | bytes, add_eos: bool = True, unknown: str = "error") -> list[int]:
    """The ids of `text`'s tokens, then EOS_ID.

    Args:
      text: digits ("412") or number words ("four hundred twelve"), str or UTF-8 bytes.
      add_eos: append EOS_ID.
      unknown: "error" raises for a token outside the vocabulary; "unk" maps it to UNK_ID.

    Raises:
      ValueError: for an unknown token (named) when unknown="error".
    """
    if unknown not in ("error", "unk"):
      raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
    ids = []
    for token in self.tokens(text):
      if token in self._ids and self._ids[token] > UNK_ID:
        ids.append(self._ids[token])
      elif unknown == "unk":
        ids.append(UNK_ID)
      else:
        raise ValueError(f"unknown token {token!r} in {text!r}; the vocabulary is the digits 0-9 and the "
                         f"number words ({', '.join(WORDS[:3])}, ..., {', '.join(WORDS[-3:])})")
    return ids + [EOS_ID] if add_eos else ids

  def encode_batch(self, texts: Sequence[str | bytes], length: int | None = None, add_eos: bool = True,
                   unknown: str = "error") -> np.ndarray:
    """Token ids (N, length) int32, each row its text's ids then PAD_ID; `ids != PAD_ID` is the mask.

    Args:
      texts: the texts, as for `encode`.
      length: the row length; by default the longest text's.
      add_eos: append EOS_ID to each text.
      unknown: as for `encode`.

    Raises:
      ValueError: for an unknown token, or a text longer than `length` tokens.
    """
    rows = [self.encode(text, add_eos, unknown) for text in texts]
    length = max((len(r) for r in rows), default=0) if length is None else length
    ids = np.full((len(rows), length), PAD_ID, np.int32)
    for i, row in enumerate(rows):
      if len(row) > length:
        raise ValueError(f"{texts[i]!r} has {len(row)} tokens{' with </s>' if add_eos else ''}; at most "
                         f"{length} fit")
      ids[i, :len(row)] = row
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids` up to the first EOS_ID: digits joined, words (and <unk>) spaced; padding left out.

    Raises:
      ValueError: for an id outside the vocabulary.
    """
    pieces, digits = [], ""
    for i in np.asarray(ids).reshape(-1).tolist():
      if not 0 <= i < len(self.vocabulary):
        raise ValueError(f"token id {i} is outside the vocabulary of {len(self.vocabulary)}")
      if i == EOS_ID:
        break
      if i == PAD_ID:
        continue
      token = self.vocabulary[i]
      if token in DIGITS:
        digits += token
        continue
      if digits:
        pieces, digits = pieces + [digits], ""
      pieces.append(token)
    return " ".join(pieces + ([digits] if digits else []))

  def decode_batch(self, ids) -> list[str]:
    """`decode` of each row of (N, length) ids."""
    return [self.decode(row) for row in np.asarray(ids)]
