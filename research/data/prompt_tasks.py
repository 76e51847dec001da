"""Few-shot tasks generated here, in the style of GPT-3's synthetic ones: examples, prompts, training documents.

Deterministic in a seed, nothing downloaded. research.evals.prompting scores a model on them (its
docstring gives the prompt format); the python_docs_tasks dataset (research/data/builders.py)
holds training documents of them.

    addition      2- and 3-digit sums (half each): "47 plus 38" -> "85"
    reversal      a word's letters backwards: "python" -> "nohtyp"
    unscramble    a word's letters shuffled back: "htypno" -> "python"
    number_words  a number below 1000 in English words (research/data/number_words.py):
                  "412" -> "four hundred twelve"
    cloze         the last word of a short sentence of the Python documentation
                  (pydoc_data.topics, as the python_docs dataset): "Mappings are mutable" -> "objects"

Every example has a key (the sum's operands, the word, the number, the sentence) and belongs to
the "test" split when the CRC-32 of its key is 0 mod 5 (mod 2 for the few cloze sentences), else
to "train": the two never share a key.
"""

import functools
import re
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from research.data import number_words

__all__ = ["CANDIDATES", "DESCRIPTIONS", "SPLITS", "TASKS", "WORDS", "Example", "check_task", "cloze_sentences",
           "continuation", "document", "examples", "prompt"]

DESCRIPTIONS = {
    "addition": "Add the numbers.",
    "reversal": "Reverse the word.",
    "unscramble": "Unscramble the word.",
    "number_words": "Write the number in words.",
    "cloze": "Complete the sentence.",
}
TASKS = tuple(DESCRIPTIONS)
SPLITS = ("train", "test")
CANDIDATES = 4  # answers per example in likelihood mode (the right one and three distractors)
TEST_EVERY = 5  # keys whose CRC-32 is 0 mod this are test examples
CLOZE_TEST_EVERY = 2  # the cloze task has few sentences: every 2nd is a test one

# Common English words of 4 to 8 letters, none a palindrome: the reversal and unscramble tasks' vocabulary.
WORDS = (
    "about", "above", "access", "action", "active", "actual", "advice", "after", "again", "agent", "album", "allow",
    "almost", "along", "always", "amount", "animal", "answer", "apple", "argue", "around", "arrive", "artist",
    "basket", "battle", "beach", "become", "before", "begin", "behind", "better", "beyond", "bottle", "bottom",
    "branch", "bread", "bridge", "bright", "broken", "budget", "button", "camera", "candle", "carbon", "castle",
    "center", "chance", "change", "charge", "choice", "circle", "class", "clean", "client", "close", "cloud",
    "coffee", "color", "corner", "cotton", "count", "country", "course", "cover", "create", "credit", "dance",
    "danger", "debate", "decide", "defend", "define", "degree", "design", "detail", "device", "dinner", "doctor",
    "double", "dragon", "dream", "drink", "driver", "early", "earth", "effect", "effort", "eight", "energy",
    "engine", "enough", "entire", "error", "event", "exact", "family", "father", "field", "figure", "final",
    "finger", "first", "flight", "flower", "follow", "forest", "format", "friend", "front", "future", "garden",
    "gather", "giant", "glass", "global", "golden", "green", "ground", "group", "guitar", "handle", "happen",
    "health", "heart", "heavy", "hidden", "history", "honest", "horse", "house", "human", "image", "import",
    "island", "jacket", "joint", "judge", "jungle", "kitchen", "knife", "ladder", "large", "laugh", "layer",
    "leader", "lemon", "letter", "light", "limit", "liquid", "listen", "little", "local", "lucky", "magic",
    "market", "master", "matter", "medium", "memory", "metal", "middle", "minute", "mirror", "model", "moment",
    "money", "month", "mother", "motion", "mountain", "music", "nature", "needle", "night", "noise", "north",
    "number", "object", "ocean", "office", "orange", "order", "output", "owner", "paper", "parent", "party",
    "pencil", "people", "period", "person", "picture", "pilot", "planet", "plant", "pocket", "point", "police",
    "potato", "power", "price", "print", "private", "public", "purple", "python", "queen", "quick", "quiet",
    "rabbit", "random", "reason", "record", "region", "result", "return", "river", "robot", "rocket", "sample",
    "school", "screen", "search", "second", "secret", "select", "shadow", "silver", "simple", "single", "sister",
    "smile", "smooth", "source", "spirit", "spring", "square", "stone", "storm", "story", "street", "string",
    "strong", "studio", "summer", "switch", "symbol", "system", "table", "target", "teacher", "thread", "ticket",
    "tiger", "timber", "token", "travel", "triangle", "trust", "tunnel", "turtle", "unique", "update", "useful",
    "valley", "value", "vector", "velvet", "violin", "visit", "voice", "wallet", "water", "weather", "window",
    "winter", "wizard", "wonder", "worker", "world", "writer", "yellow", "young", "zebra",
)

# A cloze sentence: a capital, 2 to 9 more words (letters, commas, brackets, apostrophes), a
# lowercase last word and a full stop; at most CLOZE_MAX_CHARS characters.
_SENTENCE = re.compile(r"^[A-Z][A-Za-z]*( [A-Za-z(),']+){1,8} [a-z]+\.$")
CLOZE_MAX_CHARS = 40


class Example(NamedTuple):
  """One query of a task."""

  query: str  # the input text, after "Q: "
  answer: str  # the right answer, after "A: "
  candidates: tuple[str, ...]  # the answers likelihood mode chooses among, the right one included


def _split_of(key: str, every: int = TEST_EVERY) -> str:
  return "test" if zlib.crc32(key.encode()) % every == 0 else "train"


def _distinct(right: str, others: Sequence[str], count: int = CANDIDATES) -> tuple[str, ...]:
  """The right answer and the first `count - 1` distinct others, as a tuple."""
  out = [right]
  for other in others:
    if other not in out:
      out.append(other)
    if len(out) == count:
      break
  return tuple(out)


def _addition(rng: np.random.Generator, split: str):
  while True:
    digits = int(rng.integers(2, 4))
    a, b = (int(x) for x in rng.integers(10 ** (digits - 1), 10 ** digits, size=2))
    query = f"{a} plus {b}"
    if _split_of(query) == split:
      s = a + b
      return Example(query, str(s), _distinct(str(s), [str(s + 1), str(s - 1), str(s + 10), str(s - 10)]))


def _words_of(split: str) -> list[str]:
  return [w for w in WORDS if _split_of(w) == split]


def _reversal(rng: np.random.Generator, split: str):
  words = _words_of(split)
  word = words[int(rng.integers(len(words)))]
  right = word[::-1]
  swapped = right[:1] + right[2:3] + right[1:2] + right[3:]  # two letters of the answer exchanged
  other = WORDS[int(rng.integers(len(WORDS)))][::-1]
  return Example(word, right, _distinct(right, [word, swapped, other, word[1:] + word[:1]]))


def _unscramble(rng: np.random.Generator, split: str):
  words = _words_of(split)
  word = words[int(rng.integers(len(words)))]
  while True:
    scrambled = "".join(rng.permutation(list(word)))
    if scrambled != word:
      break
  same_length = [w for w in WORDS if len(w) == len(word) and w != word]
  others = [same_length[int(i)] for i in rng.permutation(len(same_length))]
  return Example(scrambled, word, _distinct(word, others + [scrambled]))


def _number_words(rng: np.random.Generator, split: str):
  while True:
    n = int(rng.integers(0, 1000))
    if _split_of(str(n)) == split:
      others = [number_words.to_words(m % 1000) for m in (n + 1, n + 10, n + 100, n + 2)]
      return Example(str(n), number_words.to_words(n), _distinct(number_words.to_words(n), others))


@functools.lru_cache(maxsize=1)
def cloze_sentences() -> tuple[str, ...]:
  """The documentation's short sentences (sorted, distinct) that the cloze task draws from."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  found = set()
  for name in sorted(topics.topics):
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(topics.topics[name].split())):
      if len(sentence) <= CLOZE_MAX_CHARS and _SENTENCE.match(sentence):
        found.add(sentence)
  return tuple(sorted(found))


def _cloze(rng: np.random.Generator, split: str):
  sentences = [s for s in cloze_sentences() if _split_of(s, CLOZE_TEST_EVERY) == split]
  sentence = sentences[int(rng.integers(len(sentences)))]
  query, answer = sentence[:-1].rsplit(" ", 1)
  finals = sorted({s[:-1].rsplit(" ", 1)[1] for s in cloze_sentences()} - {answer})
  return Example(query, answer, _distinct(answer, [finals[int(i)] for i in rng.permutation(len(finals))]))


_GENERATORS = {"addition": _addition, "reversal": _reversal, "unscramble": _unscramble,
               "number_words": _number_words, "cloze": _cloze}


def check_task(task: str) -> None:
  """Raises ValueError naming the tasks unless `task` is one of them."""
  if task not in DESCRIPTIONS:
    raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def examples(task: str, count: int, *, split: str = "test", seed: int = 0) -> list[Example]:
  """`count` examples of a task, a pure function of (task, count, split, seed).

  Raises:
    ValueError: for an unknown task or split, or a negative count.
  """
  check_task(task)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
  if count < 0:
    raise ValueError(f"count must be >= 0, got {count}")
  rng = np.random.default_rng([seed, TASKS.index(task), SPLITS.index(split)])
  return [_GENERATORS[task](rng, split) for _ in range(count)]


def _demonstration(example: Example) -> str:
  return f"Q: {example.query}\nA: {example.answer}\n"


def prompt(task: str, demos: Sequence[Example], query: Example, k: int) -> str:
  """The description line, the first `k` of `demos` and the query (format in the module docstring).

  The text ends with "A:"; `continuation(answer)` is what follows it.

  Raises:
    ValueError: for an unknown task, k < 0 or fewer than k demonstrations.
  """
  check_task(task)
  if k < 0:
    raise ValueError(f"k (demonstrations per prompt) must be >= 0, got {k}")
  if len(demos) < k:
    raise ValueError(f"k = {k} demonstrations asked for, {len(demos)} given")
  return DESCRIPTIONS[task] + "\n" + "".join(_demonstration(d) for d in demos[:k]) + f"Q: {query.query}\nA:"


def continuation(answer: str) -> str:
  """The text after a prompt's "A:" that gives `answer`: a space, the answer, a newline."""
  return f" {answer}\n"


def document(task: str, count: int, rng: np.random.Generator) -> str:
  """A training document: the description line and `count` demonstrations of train-split examples, drawn by rng."""
  check_task(task)
  return DESCRIPTIONS[task] + "\n" + "".join(_demonstration(_GENERATORS[task](rng, "train")) for _ in range(count))
