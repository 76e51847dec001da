"""Evaluating a code model as Codex (Chen et al. 2021): n samples per problem, each run against hidden tests, pass@k.

    completions = codex.sample(model, params, tokenizer, problems, n=100, temperature=0.8, key=key)
    results = codex.execute(problems, completions, timeout_s=3.0)      # [[Result, ...] per problem]
    scores = codex.pass_rates(results, ks=(1, 10, 100))                 # {"pass@1": ..., ...}

A problem is a python_functions (or HumanEval) mapping: `prompt` is the signature and docstring,
the model continues it with a body. Each sample is decoded from the new tokens and cut to the
function's body by `truncate` (Codex's stop sequences, in the form the indentation of a body gives
them): it ends before the first non-blank line that starts at column 0 (a new `def`, `class`,
statement or document) and before an end-of-text marker. Sampling is one compiled program for
every temperature (the temperature is traced) and each prompt length bucket: rows go through
research.models.gpt2.continue_prompts in batches of one problem's samples where n fills a batch,
each left-padded to the bucket of its longest prompt.
"""

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.evals import code
from research.models import gpt2

__all__ = ["END_MARKERS", "execute", "left_padded", "pass_rates", "prompt_ids", "sample", "truncate"]

# Texts that end a document in the training streams (GPT-2's end token; a blank-line separator is
# followed by a document at column 0, which the indentation rule cuts).
END_MARKERS = ("<|endoftext|>",)


def truncate(completion: str) -> str:
  """The function body at the start of `completion`: up to the first non-blank line at column 0.

  Lines of the body are indented; the first line that is not blank and not indented (a new `def`,
  a statement at module level, the next document) ends it, and so does an END_MARKERS text.
  Trailing blank lines and whitespace are dropped.
  """
  for marker in END_MARKERS:
    completion = completion.split(marker, 1)[0]
  kept = []
  for line in completion.split("\n"):
    if line.strip() and not line[0].isspace():
      break
    kept.append(line)
  return "\n".join(kept).rstrip()


def prompt_ids(tokenizer, problems: Sequence[Mapping]) -> list[list[int]]:
  """The problems' prompts as token ids, without the newline that ends each.

  A byte-level BPE (GPT-2's pre-tokenizer) reads a newline together with the indentation after it
  ("\\n   ", " return"); a prompt ending in a lone "\\n" token would tell the model that the next line
  starts at column 0, and a model that learned this ends the function at once (an empty body).
  So the model continues the docstring's closing line and writes the newline and indentation itself.
  """
  texts = [p["prompt"].decode("utf-8") if isinstance(p["prompt"], bytes) else p["prompt"] for p in problems]
  return [list(tokenizer.encode(text[:-1] if text.endswith("\n") else text)) for text in texts]


def _after_first_line(text: str) -> str:
  """What follows the first newline: a completion of a prompt cut before its last newline (prompt_ids)."""
  return text.split("\n", 1)[1] if "\n" in text else ""


def left_padded(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Rows of ids left-padded to the bucket of the longest (research.models.gpt2.bucket), and their mask."""
  length = gpt2.bucket(max(len(r) for r in rows))
  tokens = np.zeros((len(rows), length), np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    tokens[i, length - len(r):], mask[i, length - len(r):] = r, True
  return tokens, mask


@functools.lru_cache(maxsize=8)
def _sampler(model: gpt2.GPT2, max_new_tokens: int):
  """One jitted decoder per (model, max_new_tokens): temperature and top_p are traced."""

  @jax.jit
  def run(params, tokens, prompt_mask, key, temperature, top_p):
    return gpt2.continue_prompts(model, params, tokens, prompt_mask, key, max_new_tokens, temperature, 0, top_p)

  return run


def sample(model: gpt2.GPT2, params, tokenizer, problems: Sequence[Mapping], n: int, temperature: float, key, *,
           max_new_tokens: int = 64, batch_size: int = 100, top_p: float = 1.0) -> list[list[str]]:
  """n completions (function bodies, cut by `truncate`) of every problem's prompt, sampled from a GPT.

  Rows (problem i's prompt n times, for each problem in order) are decoded `batch_size` at a time
  with the KV cache, the last batch padded with copies of the last row; batch b uses `fold_in(key, b)`, so the samples are a
  pure function of (params, problems, n, temperature, key, max_new_tokens, batch_size).

  Args:
    model: a GPT2 module.
    params: its parameters (the inner dict, without the "params" key).
    tokenizer: the model's tokenizer (`encode`, `decode`).
    problems: mappings with `prompt`.
    n: samples per problem.
    temperature: the sampling temperature (> 0; 0 decodes greedily, the same sample n times).
    key: the sampling key.
    max_new_tokens: tokens decoded per sample (the body must end within them).
    batch_size: rows per decoding call.
    top_p: nucleus sampling threshold (1: off).

  Returns:
    One list of n completions per problem.

  Raises:
    ValueError: for n or batch_size < 1, sampling controls out of range, or a prompt plus
      max_new_tokens longer than the model's learned context.
  """
  if n < 1 or batch_size < 1:
    raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
  gpt2.check_sampling(max_new_tokens, temperature, 0, top_p)
  prompts = prompt_ids(tokenizer, problems)
  longest = gpt2.bucket(max(len(p) for p in prompts))
  if model.cfg.positions == "learned" and longest + max_new_tokens > model.cfg.n_positions:
    raise ValueError(f"prompts padded to {longest} tokens plus {max_new_tokens} new ones exceed the "
                     f"context of {model.cfg.n_positions}")
  rows = np.repeat(np.arange(len(problems)), n)  # (P * n,): each row's problem
  count = -(-len(rows) // batch_size) * batch_size
  rows_padded = np.concatenate([rows, np.full(count - len(rows), rows[-1])])
  run = _sampler(model, int(max_new_tokens))
  new = []
  for b, start in enumerate(range(0, count, batch_size)):
    # Each batch is padded to its own longest prompt's bucket: with batch_size = n, one problem's
    # length (a few compiled shapes in all, and no prefill of padding up to the longest prompt).
    tokens, mask = left_padded([prompts[i] for i in rows_padded[start:start + batch_size]])
    new.append(np.asarray(run(params, tokens, mask, jax.random.fold_in(key, b), jnp.float32(temperature),
                              jnp.float32(top_p))))
  new = np.concatenate(new)[:len(rows)]  # (P * n, max_new_tokens)
  texts = [truncate(_after_first_line(tokenizer.decode(ids.tolist()))) for ids in new]
  return [texts[i * n:(i + 1) * n] for i in range(len(problems))]


def _compiles(source: str) -> code.Result | None:
  """An "error" Result for a program that does not compile (no need to start a sandbox), else None."""
  try:
    compile(source, "<program>", "exec", dont_inherit=True)
  except (SyntaxError, ValueError) as e:  # ValueError: a null byte in the source
    return code.Result("error", f"{type(e).__name__}: {e}"[:200])
  return None


def execute(problems: Sequence[Mapping], completions: Sequence[Sequence[str]], timeout_s: float = 3.0,
            workers: int | None = None) -> list[list[code.Result]]:
  """Every completion run against its problem's tests in the sandbox (research.evals.code.execute_many).

  A program that does not compile is an "error" without being run (compiling runs none of its
  code); identical programs run once.

  Args:
    problems: mappings with `prompt`, `tests` and `entry_point`.
    completions: one list of completions per problem.
    timeout_s: wall-clock (and CPU-time) limit per program.
    workers: programs run at once (default: the CPU count).

  Returns:
    One list of Results per problem, in the order of `completions`.
  """
  programs = [code.program(p, c) for p, cs in zip(problems, completions) for c in cs]
  verdicts = [_compiles(source) for source in programs]
  to_run = [source for source, verdict in zip(programs, verdicts) if verdict is None]
  ran = iter(code.execute_many(to_run, timeout_s, workers) if to_run else [])
  flat = [verdict if verdict is not None else next(ran) for verdict in verdicts]
  out, start = [], 0
  for cs in completions:
    out.append(flat[start:start + len(cs)])
    start += len(cs)
  return out


def pass_rates(results: Sequence[Sequence[code.Result]], ks: Sequence[int]) -> dict[str, float]:
  """pass@k for each k (up to the samples per problem), the unbiased estimate averaged over problems.

  Args:
    results: one list of n Results per problem (the same n for every problem).
    ks: the k values; those above n are left out.

  Returns:
    {"pass@<k>": mean over problems}.
  """
  n = len(results[0])
  if any(len(r) != n for r in results):
    raise ValueError("every problem needs the same number of samples")
  correct = np.array([sum(r.status == "passed" for r in rs) for rs in results])
  return {f"pass@{k}": float(np.mean(code.pass_at_k(n, correct, k))) for k in ks if k <= n}
