"""In-context learning (Brown et al. 2020, "Language Models are Few-Shot Learners"): zero-, one- and few-shot prompts.

    examples = prompting.examples("addition", 100, split="test")   # [Example(query='47 plus 38', answer='85', ...)]
    text = prompting.prompt("addition", demos, examples[0], k=4)
    result = prompting.score(model, params, tokenizer, "addition", k=4)             # likelihood mode
    result = prompting.score(model, params, tokenizer, "addition", k=4, mode="generate")
    result["accuracy"], result["records"][0]

Tasks (research/data/prompt_tasks.py, re-exported here: `examples`, `prompt`, `document`, ...),
generated in the style of GPT-3's synthetic ones, deterministic in a seed, nothing downloaded:

    addition      2- and 3-digit sums (half each): "47 plus 38" -> "85"
    reversal      a word's letters backwards: "python" -> "nohtyp"
    unscramble    a word's letters shuffled back: "htypno" -> "python"
    number_words  a number below 1000 in English words: "412" -> "four hundred twelve"
    cloze         the last word of a short sentence of the Python documentation:
                  "Mappings are mutable" -> "objects"

Every example has a key and belongs to the "test" split when the CRC-32 of its key is 0 mod 5
(mod 2 for the few cloze sentences), else to "train": the two never share a key.
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

import jax
import jax.numpy as jnp
import numpy as np

from research.data import prompt_tasks
from research.data.prompt_tasks import (CANDIDATES, DESCRIPTIONS, SPLITS, TASKS, WORDS, Example,  # re-exported
                                        cloze_sentences, continuation, document, examples, prompt)
from research.models import gpt2

__all__ = ["CANDIDATES", "DESCRIPTIONS", "MODES", "SPLITS", "TASKS", "WORDS", "Example", "cloze_sentences",
           "continuation", "document", "examples", "prompt", "prompts", "score"]

MODES = ("likelihood", "generate")

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
  prompt_tasks.check_task(task)
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
  prompt_tasks.check_task(task)
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
