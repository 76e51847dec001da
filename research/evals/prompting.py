"""In-context learning (Brown et al. 2020, "Language Models are Few-Shot Learners"): zero-, one- and few-shot prompts.

    examples = prompting.examples("addition", 100, split="test")   # [Example(query='47 plus 38', answer='85', ...)]
    text = prompting.prompt("addition", demos, examples[0], k=4)
    result = prompting.score(model, params, tokenizer, "addition", k=4)             # likelihood mode
    result = prompting.score(model, params, tokenizer, "addition", k=4, mode="generate")
    result["accuracy"], result["records"][0]

Tasks, generated here in the style of GPT-3's synthetic ones (deterministic in a seed, nothing
downloaded):

    addition      2- and 3-digit sums (half each): "47 plus 38" -> "85"
    reversal      a word's letters backwards: "python" -> "nohtyp"
    unscramble    a word's letters shuffled back: "htypno" -> "python"
    number_words  a number below 1000 in English words (research/data/number_words.py):
                  "412" -> "four hundred twelve"
    cloze         the last word of a short sentence of the Python documentation
                  (pydoc_data.topics, as the python_docs dataset): "Mappings are mutable" -> "objects"

Words come from WORDS, a fixed list in this module. Every example has a key (the sum's operands,
the word, the number, the sentence) and belongs to the "test" split when the CRC-32 of its key is
0 mod 5 (mod 2 for the few cloze sentences), else to "train": the two never share a key.
Demonstrations come from "train", queries from "test". The cloze sentences are taken from all of
the documentation, so a model trained on python_docs has read most of them (the split keeps
demonstrations and queries apart only).

The prompt format (one line per field; K demonstrations, then the query):

    Add the numbers.          <- the task's description line (GPT-3's task description)
    Q: 12 plus 30             <- demonstration 1
    A: 42
    ...                       <- demonstrations 2 .. K
    Q: 47 plus 38             <- the query
    A:

and the answer the model should continue with is " 85\\n": a space, the answer and the newline
that ends it (the newline makes a candidate that is a prefix of another, "8" of "85", score as
the shorter answer, not as its start). The prompt and the continuation are encoded separately and
concatenated, so a BPE merge never crosses the boundary.

Scoring (`score`): "likelihood" sums the log-probabilities of each candidate's continuation
tokens given the prompt and picks the argmax (GPT-3's multiple-choice scoring, unnormalized);
"generate" decodes greedily with the KV cache (research.models.gpt2.continue_prompts), cuts at
the first newline and compares the stripped text with the answer. Either runs as one compiled
program per (model, shape): rows padded to one length and one batch, the padding masked.
"""

import functools
import re
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from research.data import number_words
from research.models import gpt2

__all__ = ["DESCRIPTIONS", "MODES", "TASKS", "WORDS", "Example", "continuation", "document", "examples", "prompt",
           "prompts", "score"]

DESCRIPTIONS = {
    "addition": "Add the numbers.",
    "reversal": "Reverse the word.",
    "unscramble": "Unscramble the word.",
    "number_words": "Write the number in words.",
    "cloze": "Complete the sentence.",
}
TASKS = tuple(DESCRIPTIONS)
MODES = ("likelihood", "generate")
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


def _check_task(task: str) -> None:
  if task not in DESCRIPTIONS:
    raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def examples(task: str, count: int, *, split: str = "test", seed: int = 0) -> list[Example]:
  """`count` examples of a task, a pure function of (task, count, split, seed).

  Raises:
    ValueError: for an unknown task or split, or a negative count.
  """
  _check_task(task)
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
  _check_task(task)
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
  _check_task(task)
  return DESCRIPTIONS[task] + "\n" + "".join(_demonstration(_GENERATORS[task](rng, "train")) for _ in range(count))


# ---------------------------------------------------------------------------------------
# Scoring a model.


@functools.partial(jax.jit, static_argnames=("model",))
def _continuation_logprobs(model: gpt2.GPT2, params, tokens, scored):
  """Summed log-probabilities of the tokens where `scored` is True, per row of right-padded (R, L) ids."""
  logits = model.apply({"params": params}, tokens[:, :-1])  # (R, L - 1, vocab)
  logp = jax.nn.log_softmax(logits, axis=-1)
  target = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]  # (R, L - 1)
  return jnp.sum(jnp.where(scored[:, 1:], target, 0.0), axis=1)  # (R,)


@functools.lru_cache(maxsize=32)
def _greedy_program(model: gpt2.GPT2, max_new_tokens: int):
  """One jitted greedy decoder per (model, max_new_tokens); jax compiles it once per prompt shape."""

  @jax.jit
  def run(params, tokens, prompt_mask):
    return gpt2.continue_prompts(model, params, tokens, prompt_mask, jax.random.key(0), max_new_tokens, 0.0)

  return run


def _rows_in_batches(rows: np.ndarray, batch_size: int):
  """Chunks of `batch_size` rows, the last padded with copies of the first row: one shape for every chunk."""
  count = -(-len(rows) // batch_size) * batch_size
  padded = np.concatenate([rows, np.repeat(rows[:1], count - len(rows), axis=0)])
  return [padded[i:i + batch_size] for i in range(0, count, batch_size)]


def prompts(task: str, k: int, count: int, seed: int = 0) -> list[tuple[str, Example]]:
  """(prompt text, query) pairs: `count` test-split queries, each after k train-split demonstrations.

  The demonstrations of each query are drawn from a pool of train examples without replacement, a
  pure function of (task, k, count, seed); the first n of `count` pairs are those of count = n.

  Raises:
    ValueError: for an unknown task, k < 0 or count < 0.
  """
  _check_task(task)
  if k < 0:
    raise ValueError(f"k (demonstrations per prompt) must be >= 0, got {k}")
  queries = examples(task, count, split="test", seed=seed)
  pool = examples(task, max(4 * k, 1) * 8, split="train", seed=seed)
  rng = np.random.default_rng([seed, 7, k])
  demos = [[pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)] for _ in queries]
  return [(prompt(task, d, q, k), q) for q, d in zip(queries, demos)]


def score(model: gpt2.GPT2, params, tokenizer, task: str, k: int, *, mode: str = "likelihood", count: int = 100,
          seed: int = 0, batch_size: int = 32, length: int | None = None, max_new_tokens: int | None = None) -> dict:
  """Accuracy of a GPT on `count` test queries of a task with k demonstrations each.

  Args:
    model: a GPT2 module.
    params: its parameters (the inner dict, without the "params" key).
    tokenizer: the model's tokenizer (`encode`, `decode`).
    task: one of TASKS.
    k: demonstrations per prompt (0: zero-shot, the description line and the query only).
    mode: "likelihood" (argmax over the candidates of the summed log-probabilities of their
      continuation tokens) or "generate" (greedy decoding, exact match of the stripped text up to
      the first newline).
    count: test queries.
    seed: draws the queries and the demonstrations.
    batch_size: rows per forward pass (likelihood: one row per candidate of each query).
    length: likelihood mode: every row's padded length in tokens (default: the next power of two
      above the longest, at most n_positions); a caller scoring several tasks passes one length
      so that they share one compiled program.
    max_new_tokens: generate mode: tokens decoded (default: the longest right continuation's, plus
      one); with one value, and prompts padded to `length`, several tasks share one program.

  Returns:
    {"accuracy": fraction right, "count": queries, "k", "task", "mode", "records": one dict per
    query with prompt, answer, prediction, correct, and in likelihood mode the candidates and their
    log-probabilities}.

  Raises:
    ValueError: for an unknown task or mode, k < 0, count or batch_size < 1, a prompt (with its
      continuation) longer than the learned context n_positions, or a `length` that does not fit.
  """
  _check_task(task)
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
  if k < 0:
    raise ValueError(f"k (demonstrations per prompt) must be >= 0, got {k}")
  if count < 1 or batch_size < 1:
    raise ValueError(f"count and batch_size must be >= 1, got {count} and {batch_size}")
  pairs = prompts(task, k, count, seed)
  texts, queries = [p for p, _ in pairs], [q for _, q in pairs]
  encoded = [list(tokenizer.encode(p)) for p in texts]
  context = model.cfg.n_positions if model.cfg.positions == "learned" else None
  if mode == "likelihood":
    return _score_likelihood(model, params, tokenizer, task, k, queries, texts, encoded, context, batch_size,
                             length)
  return _score_generate(model, params, tokenizer, task, k, queries, texts, encoded, context, batch_size, length,
                         max_new_tokens)


def _too_long(task: str, k: int, tokens: int, context: int | None) -> None:
  if context is not None and tokens > context:
    raise ValueError(f"task {task} with k = {k}: a prompt and its continuation take {tokens} tokens, more than the "
                     f"model's context of {context} (use a smaller k)")


def _score_likelihood(model, params, tokenizer, task, k, queries, texts, encoded, context, batch_size, length):
  pieces = [(p, list(tokenizer.encode(continuation(c)))) for q, p in zip(queries, encoded) for c in q.candidates]
  longest = max(len(p) + len(c) for p, c in pieces)
  _too_long(task, k, longest, context)
  if length is None:
    length = gpt2.bucket(longest) if context is None else min(gpt2.bucket(longest), context)
  elif length < longest or (context is not None and length > context):
    raise ValueError(f"length {length} must lie between the longest prompt and continuation ({longest} tokens) "
                     f"and the context ({context})")
  tokens = np.zeros((len(pieces), length), np.int32)  # right-padded: causal attention never reads the padding
  scored = np.zeros((len(pieces), length), bool)
  for i, (p, c) in enumerate(pieces):
    tokens[i, :len(p) + len(c)] = p + c
    scored[i, len(p):len(p) + len(c)] = True
  rows = np.concatenate([tokens, scored.astype(np.int32)], axis=1)
  out = []
  for chunk in _rows_in_batches(rows, batch_size):
    out.append(np.asarray(_continuation_logprobs(model, params, jnp.asarray(chunk[:, :length]),
                                                 jnp.asarray(chunk[:, length:].astype(bool)))))
  logprobs = np.concatenate(out)[:len(pieces)]
  records, start = [], 0
  for q, text in zip(queries, texts):
    values = logprobs[start:start + len(q.candidates)]
    start += len(q.candidates)
    prediction = q.candidates[int(np.argmax(values))]
    records.append({"prompt": text, "answer": q.answer, "prediction": prediction, "correct": prediction == q.answer,
                    "candidates": list(q.candidates), "logprobs": [float(v) for v in values]})
  return _result(task, k, "likelihood", records)


def _score_generate(model, params, tokenizer, task, k, queries, texts, encoded, context, batch_size, length,
                    max_new_tokens):
  if max_new_tokens is None:
    max_new_tokens = max(len(tokenizer.encode(continuation(q.answer))) for q in queries) + 1
  longest = max(len(p) for p in encoded)
  _too_long(task, k, longest + max_new_tokens, context)
  if length is None:
    length = gpt2.bucket(longest)
  elif length < longest:
    raise ValueError(f"length {length} is shorter than the longest prompt ({longest} tokens)")
  tokens = np.zeros((len(encoded), length), np.int32)  # left-padded, as research.models.gpt2.generate
  mask = np.zeros((len(encoded), length), np.int32)
  for i, p in enumerate(encoded):
    tokens[i, length - len(p):], mask[i, length - len(p):] = p, 1
  run = _greedy_program(model, int(max_new_tokens))
  rows = np.concatenate([tokens, mask], axis=1)
  new = np.concatenate([np.asarray(run(params, jnp.asarray(chunk[:, :length]), jnp.asarray(chunk[:, length:] > 0)))
                        for chunk in _rows_in_batches(rows, batch_size)])[:len(encoded)]
  records = []
  for q, text, ids in zip(queries, texts, new):
    generated = tokenizer.decode([int(i) for i in ids])
    prediction = generated.split("\n", 1)[0].strip()
    records.append({"prompt": text, "answer": q.answer, "prediction": prediction, "correct": prediction == q.answer,
                    "generated": generated, "tokens": [int(i) for i in ids]})
  return _result(task, k, "generate", records)


def _result(task: str, k: int, mode: str, records: list[dict]) -> dict:
  return {"task": task, "k": k, "mode": mode, "count": len(records),
          "accuracy": float(np.mean([r["correct"] for r in records])), "records": records}
