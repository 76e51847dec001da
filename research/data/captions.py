"""Captions of the captioned image datasets (shapes, digits_captions) and their word-level tokenizer.

A caption is one of several templates filled with an image's attributes:

    caption = captions.shapes_caption({"shape": "circle", "colour": "red", "size": "small",
                                       "position": "top left"}, template=0)
    # "a small red circle at the top left"

Templates 0 .. TRAIN_TEMPLATES - 1 caption the training split; the rest are held out (they caption
test images only), for zero-shot evaluation on phrasings never seen in training. Held-out
templates reorder the training templates' words and use no word of their own, so every test
caption is in the vocabulary of the training captions.

    tok = captions.CaptionTokenizer.fit(train_captions)
    ids, mask = tok.encode(["a small red circle at the top left"], length=16)   # (1, 16) int32, bool
    tok.encode(["a purple circle"], length=16)   # ValueError: the word 'purple' is not in ...

Token ids: 0 <pad>, 1 <eot>, 2 <sot>, then the words in sorted order. A caption is encoded as
<sot> words <eot> <pad>...; CLIP's text tower pools the state at the (first) <eot>.
"""

import json
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

PAD, EOT, SOT = "<pad>", "<eot>", "<sot>"
SPECIALS = (PAD, EOT, SOT)
PAD_ID, EOT_ID, SOT_ID = 0, 1, 2

# ---------------------------------------------------------------------------------------
# Templates. Slots: {size} {colour} {shape} {position}; variants of a word come from the
# template's own word table (WORDS), so "disc" is only ever a circle.

SHAPE_TEMPLATES = (
    "a {size} {colour} {shape} at the {position}",
    "{position} : a {size2} {colour} {shape2}",
    "a {colour} {shape} , {size} , at the {position}",
    "the {shape} is {colour} and {size} , at the {position}",
    # Held out of training: the same words in new orders.
    "at the {position} : the {size} {shape} is {colour}",
    "{size2} {colour} {shape2} , {position}",
)
DIGIT_TEMPLATES = (
    "a {thickness} {digit} {slant}",
    "the digit {digit} , {thickness} and {slant}",
    "{digit} written {thickness} , {slant}",
    # Held out of training.
    "the {thickness} digit {digit} , {slant}",
    "{slant} , a {digit} written {thickness}",
)
TRAIN_TEMPLATES = {"shapes": 4, "digits": 3}  # templates [0, n) caption training images

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "magenta": (1, 0, 1),
           "cyan": (0, 1, 1), "white": (1, 1, 1)}
SIZES = ("small", "large")
# The 3 x 3 grid, row-major: rows top, middle, bottom by columns left, center, right.
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
# Second words of template 1 (and the held-out template 5): "a little red disc".
WORDS = {"size2": {"small": "little", "large": "big"}, "shape2": {"circle": "disc", "square": "box",
                                                                 "triangle": "triangle"}}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESSES = ("thin", "thick")
SLANTS = ("leaning left", "upright", "leaning right")


def shapes_caption(attributes: Mapping[str, str], template: int) -> str:
  """The caption of a shapes image: its attribute words (shape, colour, size, position) in one template."""
  words = dict(attributes)
  words["size2"] = WORDS["size2"][attributes["size"]]
  words["shape2"] = WORDS["shape2"][attributes["shape"]]
  return SHAPE_TEMPLATES[template].format(**words)


# Every word a shapes caption names an attribute value with, and the value.
_SHAPE_WORDS = {"shape": {**{s: s for s in SHAPES}, **{w: s for s, w in WORDS["shape2"].items()}},
                "colour": {c: c for c in COLOURS},
                "size": {**{s: s for s in SIZES}, **{w: s for s, w in WORDS["size2"].items()}}}
_POSITION_WORDS = frozenset(w for p in POSITIONS for w in p.split())


def shapes_attributes(text: str) -> dict[str, str | None]:
  """The attribute values a shapes caption names, read from its words (any template, or a free prompt).

  "the disc is blue and little , at the top left" -> {"shape": "circle", "colour": "blue",
  "size": "small", "position": "top left"}. A position is a run of position words ("top left").

  Returns:
    {shape, colour, size, position: the value named, or None where the text names none, or two
    different ones, or a position that is not one of POSITIONS}.
  """
  ws = words(text.decode("utf-8") if isinstance(text, bytes) else text)
  named = {name: {table[w] for w in ws if w in table} for name, table in _SHAPE_WORDS.items()}
  runs, run = set(), []
  for w in ws + [""]:
    if w in _POSITION_WORDS:
      run.append(w)
    elif run:
      runs.add(" ".join(run))
      run = []
  named["position"] = runs
  return {name: (next(iter(values)) if len(values) == 1 and (name != "position" or values <= set(POSITIONS))
                 else None) for name, values in named.items()}


def digits_caption(attributes: Mapping[str, str], template: int) -> str:
  """The caption of a digit: its words (digit, thickness, slant) in one template."""
  return DIGIT_TEMPLATES[template].format(**attributes)


def held_out_template(dataset: str, template: int) -> bool:
  """Whether `template` of "shapes" or "digits" is held out of training."""
  return template >= TRAIN_TEMPLATES[dataset]


# ---------------------------------------------------------------------------------------
# The tokenizer.

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
  """Lower-cased words and punctuation marks of `text`: "Top left: a disc" -> [top, left, :, a, disc]."""
  return _TOKEN.findall(text.lower())


class CaptionTokenizer:
  """One id per word of the captions it was fitted on; an unknown word is an error that names it."""

  kind = "words"

  def __init__(self, vocabulary: Sequence[str]):
    self.vocabulary = list(SPECIALS) + [w for w in vocabulary if w not in SPECIALS]
    self._ids = {w: i for i, w in enumerate(self.vocabulary)}

  @classmethod
  def fit(cls, texts: Iterable[str]) -> "CaptionTokenizer":
    """The tokenizer of every word in `texts` (bytes or str), in sorted order."""
    vocabulary = set()
    for text in texts:
      vocabulary.update(words(text.decode("utf-8") if isinstance(text, bytes) else text))
    return cls(sorted(vocabulary))

  @property
  def vocab_size(self) -> int:
    return len(self.vocabulary)

  def tokens(self, text: str) -> list[int]:
    """<sot> word ids <eot> of one text.

    Raises:
      ValueError: for an empty text or a word outside the vocabulary (named).
    """
    text = text.decode("utf-8") if isinstance(text, bytes) else text
    ws = words(text)
    if not ws:
      raise ValueError("the prompt is empty")
    for w in ws:
      if w not in self._ids:
        raise ValueError(f"the word {w!r} is not in the captions' vocabulary of {self.vocab_size - len(SPECIALS)} "
                         f"words (e.g. {', '.join(self.vocabulary[len(SPECIALS):len(SPECIALS) + 6])}, ...)")
    return [SOT_ID] + [self._ids[w] for w in ws] + [EOT_ID]

  def encode(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, length) int32 padded with <pad>, and the attention mask (N, length) bool.

    Raises:
      ValueError: for an empty text, an unknown word, or a text longer than `length` tokens.
    """
    ids = np.full((len(texts), length), PAD_ID, np.int32)
    for i, text in enumerate(texts):
      row = self.tokens(text)
      if len(row) > length:
        raise ValueError(f"the prompt has {len(row)} tokens with <sot> and <eot>; at most {length} fit")
      ids[i, :len(row)] = row
    return ids, ids != PAD_ID

  def decode(self, ids: Sequence[int]) -> str:
    """The words of `ids`, specials left out."""
    return " ".join(self.vocabulary[i] for i in ids if i >= len(SPECIALS))

  def to_json(self) -> dict:
    return {"kind": self.kind, "vocabulary": self.vocabulary[len(SPECIALS):]}

  @classmethod
  def from_json(cls, data: Mapping) -> "CaptionTokenizer":
    return cls(data["vocabulary"])

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump(self.to_json(), f)

  @classmethod
  def load(cls, path: str) -> "CaptionTokenizer":
    with open(path) as f:
      return cls.from_json(json.load(f))
