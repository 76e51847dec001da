"""A small Codex (Chen et al. 2021): a GPT pre-trained on text plus code, scored by pass@k on held-out problems.

Run:
  python -m experiments.codex --workdir=/tmp/codex
  python -m experiments.codex --workdir=/tmp/codex_text --config.dataset=python_docs    # text only
  python -m experiments.codex --workdir=/tmp/codex_smoke --config=experiments/codex.py:smoke

Two stages in the workdir:

  1. pretrain/: experiments.gpt2's language model (byte-level BPE fitted on the training text) on
     `dataset`: by default python_docs_code, CPython's documentation text plus every
     python_functions train problem (signature, docstring and reference body; research/data/
     builders.py). The run is experiments.gpt2's own (its fields below), so it resumes, logs and
     writes its results.json, samples.txt and hf/ there.
  2. evaluation: the test problems of python_functions (templates shared with training, constants
     and names never), `num_problems` of them taken one template at a time; for each of
     `temperatures`, `samples_per_problem` completions of every prompt (research/evals/codex.py:
     one compiled KV-cache decoder for every temperature, bodies cut at the first line at column
     0), each run against the problem's hidden tests in the sandbox (research/evals/code.py,
     `workers` at a time). Each temperature's samples and verdicts are kept in
     evaluation/t<temperature>.json, so a rerun (or a killed run) samples only what is missing.

results.json: per temperature pass@1/10/100 (the unbiased estimator, averaged over problems), the
status counts and each problem's correct count; the best temperature for each k; the number of
problems and of samples; the pre-training's val_loss. samples.txt: for each temperature, one
passing and one failing completion (with its verdict) of each problem that has them.
"""

import json
import os
import time

import jax
import ml_collections
import numpy as np

from experiments import gpt2 as gpt2_experiment
from research.data import python_functions, tokenizers
from research.evals import codex
from research.tasks import gpt2 as gpt2_task
from research.train import ConfigError, Pipeline, check_positive, cli, write_results

KS = (1, 10, 100)  # the k of pass@k reported (those up to samples_per_problem)
DATASETS = ("python_docs_code", "python_docs")  # text + code, text only


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A tiny model, a few steps, few problems and samples, for tests."""
  config.n_layer, config.n_embd, config.n_head = 1, 32, 2
  config.bpe_vocab_size = 512
  config.seq_len, config.n_positions = 32, 144  # the context still holds a padded prompt and the new tokens
  config.steps, config.batch_size = 4, 8
  config.optimizer.warmup_steps = 2
  config.log_every = config.eval_every = config.checkpoint_every = 4
  config.eval_windows, config.eval_batch_size = 8, 8
  config.num_prompts, config.prompt_len, config.sample_tokens = 1, 8, 8
  config.num_problems, config.samples_per_problem, config.temperatures = 3, 4, (0.5, 1.0)
  config.max_new_tokens, config.sample_batch_size = 16, 8


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (about 1,700 CPU-seconds: some 14 minutes on 2 idle cores); preset "smoke" for tests."""
  config = gpt2_experiment.get_config()
  # Pre-training: experiments.gpt2's fields, with these defaults.
  config.dataset = "python_docs_code"  # python_docs_code (text + code) or python_docs (text only)
  config.eval_split = "test"  # python_docs' held-out topics: the pre-training val_loss
  config.tokenizer = "bpe"
  config.bpe_vocab_size = 2048
  config.n_layer, config.n_embd, config.n_head = 4, 128, 4
  config.n_positions = config.seq_len = 192  # a prompt (up to 125 tokens, padded to 128) plus 64 new tokens
  config.steps, config.batch_size = 1000, 16  # 3M tokens: about 18 passes over the 171k-token stream
  config.optimizer.warmup_steps = 100
  config.log_every, config.eval_every, config.checkpoint_every = 100, 500, 250
  config.eval_windows = 64
  # Evaluation by pass@k.
  config.num_problems = 40  # test problems scored, taken one template at a time: each of the 29 once, 11 twice (0: all 69)
  config.samples_per_problem = 100  # n: completions sampled per problem and temperature
  config.temperatures = (0.2, 0.5, 0.8, 1.0)  # sampling temperatures (Chen et al.'s Figure 5 sweeps 0.1 .. 1.0)
  config.top_p = 0.95  # nucleus sampling threshold, as Codex's evaluation (1: off)
  config.max_new_tokens = 64  # tokens decoded per completion (the body must end within them)
  config.sample_batch_size = 100  # completions decoded per call
  config.timeout_s = 3.0  # wall-clock and CPU-time limit per program in the sandbox
  config.workers = 4  # programs run in the sandbox at once (each its own process)
  config.sample_seed = 0  # draws the completions
  return cli.apply_presets(config, preset, PRESETS)


CODEX_FIELDS = ("num_problems", "samples_per_problem", "temperatures", "top_p", "max_new_tokens",
                "sample_batch_size", "timeout_s", "workers", "sample_seed")


def pretrain_config(config) -> ml_collections.ConfigDict:
  """experiments.gpt2's config of the pre-training stage: `config` without the evaluation's fields."""
  out = gpt2_experiment.get_config()
  for name in out.keys():
    out[name] = config[name]
  return out


def check_config(config) -> None:
  """Raises ConfigError on a bad field, before anything is loaded, compiled or written."""
  if config.mode != "pretrain":
    raise ConfigError(f"experiments.codex pre-trains a language model: mode must be 'pretrain', got {config.mode!r}")
  if config.model != "gpt":
    raise ConfigError(f"experiments.codex samples a GPT, not model={config.model!r}")
  if config.tokenizer == "char":
    raise ConfigError("tokenizer 'char' cannot encode every test prompt; use bpe (byte-level) or gpt2:<dir>")
  gpt2_experiment.check_config(pretrain_config(config))
  check_positive("num_problems", config.num_problems, allow_zero=True)
  for name in ("samples_per_problem", "max_new_tokens", "sample_batch_size", "timeout_s", "workers"):
    check_positive(name, config[name])
  temperatures = tuple(config.temperatures)
  if not temperatures or any(not isinstance(t, (int, float)) or not 0 < t <= 2 for t in temperatures):
    raise ConfigError(f"temperatures must be numbers in (0, 2], got {temperatures!r}")
  if len(set(temperatures)) != len(temperatures):
    raise ConfigError(f"temperatures must be distinct, got {temperatures!r}")
  if not 0 < config.top_p <= 1:
    raise ConfigError(f"top_p must be in (0, 1], got {config.top_p!r}")
  if config.max_new_tokens >= config.n_positions:
    raise ConfigError(f"max_new_tokens {config.max_new_tokens} leaves no room for a prompt in n_positions "
                      f"{config.n_positions}")


def test_problems(count: int) -> list[dict]:
  """`count` python_functions test problems (0: all), one template at a time: the first of each, the second, ..."""
  by_template: dict[str, list[dict]] = {}
  for problem in python_functions.problems("test"):
    by_template.setdefault(problem["template"], []).append(problem)
  order = [group[i] for i in range(max(map(len, by_template.values())))
           for group in by_template.values() if i < len(group)]
  return order[:count] if count else order


def _temperature_name(temperature: float) -> str:
  return f"t{temperature:g}"


def evaluate_temperature(config, model, params, tokenizer, problems, temperature: float, directory: str) -> dict:
  """Samples and scores one temperature, or reads what an earlier run kept in `directory`; returns that record."""
  path = os.path.join(directory, f"{_temperature_name(temperature)}.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved["task_ids"] == [p["task_id"] for p in problems] and saved["n"] == config.samples_per_problem:
      return saved
  start = time.perf_counter()
  key = jax.random.fold_in(jax.random.key(config.sample_seed), round(1000 * temperature))
  completions = codex.sample(model, params, tokenizer, problems, config.samples_per_problem, temperature, key,
                             max_new_tokens=config.max_new_tokens, batch_size=config.sample_batch_size,
                             top_p=config.top_p)
  sampled = time.perf_counter()
  verdicts = codex.execute(problems, completions, config.timeout_s, config.workers)
  record = {"temperature": temperature, "task_ids": [p["task_id"] for p in problems], "n": config.samples_per_problem,
            "completions": completions, "statuses": [[r.status for r in rs] for rs in verdicts],
            "messages": [[r.message for r in rs] for rs in verdicts],
            "sample_s": round(sampled - start, 2), "execute_s": round(time.perf_counter() - sampled, 2)}
  os.makedirs(directory, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f)
  os.replace(path + ".tmp", path)
  return record


def summarize(record: dict) -> dict:
  """pass@k, status counts and each problem's correct count of one temperature's record."""
  results = [[codex.code.Result(s, m) for s, m in zip(ss, ms)]
             for ss, ms in zip(record["statuses"], record["messages"])]
  statuses = [s for ss in record["statuses"] for s in ss]
  return {**codex.pass_rates(results, KS),
          "statuses": {s: statuses.count(s) for s in codex.code.STATUSES},
          "correct": {t: ss.count("passed") for t, ss in zip(record["task_ids"], record["statuses"])},
          "unique_completions": len({c for cs in record["completions"] for c in cs}),
          "sample_s": record["sample_s"], "execute_s": record["execute_s"]}


def samples_text(problems, records: list[dict]) -> str:
  """samples.txt: per temperature, one passing and one failing completion of each problem that has them."""
  lines = []
  for record in records:
    lines.append(f"######## temperature {record['temperature']:g}\n")
    for problem, completions, statuses, messages in zip(problems, record["completions"], record["statuses"],
                                                        record["messages"]):
      correct = statuses.count("passed")
      lines.append(f"==== {problem['task_id']}: {correct}/{len(statuses)} passed\n")
      passing = next((i for i, s in enumerate(statuses) if s == "passed"), None)
      failing = next((i for i, s in enumerate(statuses) if s != "passed"), None)
      for i, label in ((passing, "PASSED"), (failing, "FAILED")):
        if i is None:
          continue
        verdict = "" if label == "PASSED" else f" ({statuses[i]}: {messages[i]})"
        lines.append(f"---- {label}{verdict}\n{problem['prompt']}{completions[i]}\n")
  return "\n".join(lines)


def evaluate(config, workdir: str, stage, member: int | None = None) -> dict:
  """pass@k of the pre-trained GPT of `stage` (member i of a sweep) at every temperature; writes samples.txt.

  Returns the metrics results.json holds (without the config and environment).
  """
  tokenizer = tokenizers.load(os.path.join(stage.directory, "tokenizer.json"))
  vocab_size = -(-tokenizer.vocab_size // config.vocab_multiple) * config.vocab_multiple
  model = gpt2_task.make_model(config, vocab_size)
  params = stage.params["params"]
  if member is not None:
    params = jax.tree.map(lambda x: x[member], params)
  problems = test_problems(config.num_problems)
  directory = os.path.join(workdir, "evaluation")
  records = []
  for temperature in config.temperatures:
    records.append(evaluate_temperature(config, model, params, tokenizer, problems, float(temperature), directory))
    summary = summarize(records[-1])
    print(f"temperature {temperature:g}: " + ", ".join(f"pass@{k} {100 * summary[f'pass@{k}']:.1f}%" for k in KS
                                                        if f"pass@{k}" in summary)
          + f" ({summary['sample_s']:.0f} s sampling, {summary['execute_s']:.0f} s executing)", flush=True)
  with open(os.path.join(workdir, "samples.txt"), "w") as f:
    f.write(samples_text(problems, records))
  per_temperature = {_temperature_name(r["temperature"]): summarize(r) for r in records}
  best = {f"pass@{k}": max(config.temperatures, key=lambda t: per_temperature[_temperature_name(t)][f"pass@{k}"])
          for k in KS if k <= config.samples_per_problem}
  return {"temperatures": list(config.temperatures), "pass_at_k": per_temperature, "best_temperature": best,
          "num_problems": len(problems), "samples_per_problem": config.samples_per_problem,
          "val_loss": stage.results.get("val_loss")}


def run(config, workdir: str) -> dict:
  """Pre-trains the GPT on `dataset` and scores it by pass@k; returns what results.json holds."""
  check_config(config)
  start = time.perf_counter()
  pretraining = pretrain_config(config)
  stage = Pipeline(workdir).stage("pretrain", config.steps,
                                  lambda directory: gpt2_experiment.run(pretraining, directory))
  metrics = evaluate(config, workdir, stage)
  return write_results(workdir, metrics, config, time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run)
