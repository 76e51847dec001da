"""Brown et al. (2020) in shape (GPT-3, Figures 1.2 and 3.10): accuracy against demonstrations K by model size.

Character-level GPTs of the scaling table's sizes (experiments/tables/gpt_scaling.py), each
trained by `experiments.gpt2.run` (the one training loop) with the same steps, batch, context and
optimizer on `python_docs_tasks`: the python_docs text plus generated documents of the five tasks
of research/evals/prompting.py (addition, reversal, unscramble, number_words, cloze), each a
description line and "Q: ... A: ..." demonstrations. Every model is then prompted with K in
`shots` demonstrations (K = 0: the description line and the query only) on `count` held-out
queries per task (their keys never appear among the training demonstrations, except that cloze
sentences are also part of the python_docs text) and scored two ways (`prompting.score`):

  likelihood  the candidate answer (of 4) whose continuation has the highest summed log-probability
  generate    greedy decoding with the KV cache, exact match of the line it writes

Runs go into `workdir_root` (default <outdir>/models), one directory per config (named by its
fields and a hash of the whole config), so a rerun reuses finished runs and resumes interrupted
ones.

Run:
  python -m experiments.tables.in_context --outdir=experiments/tables/results/in_context
  python -m experiments.tables.in_context --outdir=/tmp/in_context --config=experiments/tables/in_context.py:smoke
"""

import os
import time

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import gpt2 as gpt2_experiment
from experiments import harness
from experiments.tables import gpt_scaling
from research.evals import prompting
from research.models import gpt2
from research.train import ConfigError, check_positive, cli


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two one-block sizes, a few steps, K = 0 and 2 on a few queries per task, for tests."""
  config.sizes = ("1:16:2", "1:24:2")
  config.shots = (0, 2)
  config.steps, config.batch_size, config.seq_len, config.warmup_steps, config.eval_windows = 4, 2, 192, 1, 2
  config.count = 3


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's sizes, budget, tasks and shots; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.sizes = ("1:32:2", "2:48:4", "2:64:4", "3:96:4", "4:128:4")  # n_layer:n_embd:n_head (the scaling table's)
  config.tasks = prompting.TASKS  # tasks scored (research/evals/prompting.py)
  config.shots = (0, 1, 4)  # K, demonstrations per prompt: zero-, one- and few-shot
  config.modes = prompting.MODES  # likelihood (argmax over candidates) and/or generate (greedy, exact match)
  config.count = 100  # held-out queries per task
  config.seed = 0  # draws the queries and their demonstrations
  config.steps = 1500  # training steps of every run
  config.batch_size = 16  # windows per step
  config.seq_len = 320  # training context T = n_positions (characters): the 4-shot cloze prompts need about 250
  config.warmup_steps = 100  # learning-rate warmup steps (then cosine decay)
  config.eval_windows = 64  # held-out python_docs windows of T + 1 characters (the loop's validation loss)
  config.eval_batch_size = 32  # queries (likelihood: query candidates) per forward pass
  config.workdir_root = ""  # directory of the training runs; "": <outdir>/models
  return cli.apply_presets(config, preset, PRESETS)


def run_config(size: gpt_scaling.Size, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """experiments/gpt2.py's default config (character-level) on python_docs_tasks with this size and budget."""
  run = gpt2_experiment.get_config()
  run.dataset = "python_docs_tasks"
  run.n_layer, run.n_embd, run.n_head = size.n_layer, size.n_embd, size.n_head
  run.seq_len = run.n_positions = config.seq_len
  run.steps, run.batch_size = config.steps, config.batch_size
  run.optimizer.warmup_steps = config.warmup_steps
  run.eval_windows = config.eval_windows
  run.eval_every = 0  # the validation loss once, at the end
  run.checkpoint_every = config.steps
  run.log_every = max(1, min(100, config.steps))
  run.num_prompts, run.prompt_len, run.sample_tokens = 2, 32, 32  # samples are a by-product here
  return run


def _shared_shapes(config, k: int) -> dict:
  """One padded length (and, generating, one number of new tokens) for every task at this K: one program per mode.

  Characters are tokens (the runs are character-level), so lengths are counted on the text.
  """
  prompts = [(text, query) for task in config.tasks for text, query in prompting.prompts(task, k, config.count,
                                                                                         config.seed)]
  answer = max(len(prompting.continuation(c)) for _, q in prompts for c in q.candidates)
  longest_prompt = max(len(text) for text, _ in prompts)
  return {"likelihood": {"length": min(gpt2.bucket(longest_prompt + answer), config.seq_len)},
          "generate": {"length": gpt2.bucket(longest_prompt),
                       "max_new_tokens": max(len(prompting.continuation(q.answer)) for _, q in prompts) + 1},
          "longest": longest_prompt + answer}


def check_config(config: ml_collections.ConfigDict) -> list[gpt_scaling.Size]:
  """Parses and checks every field; raises ConfigError before anything is loaded, compiled or written."""
  sizes = [gpt_scaling.parse_size(s) for s in config.sizes]
  if not sizes or len(set(sizes)) != len(sizes):
    raise ConfigError(f"sizes must name at least one size, each once, got {', '.join(config.sizes)}")
  harness.check_names("tasks", config.tasks, prompting.TASKS)
  harness.check_names("modes", config.modes, prompting.MODES)
  if not config.shots or any(int(k) != k or k < 0 for k in config.shots) or len(set(config.shots)) != len(config.shots):
    raise ConfigError(f"shots must be distinct integers >= 0, got {tuple(config.shots)}")
  for name in ("count", "steps", "batch_size", "eval_batch_size"):
    check_positive(name, config[name])
  for size in sizes:
    gpt2_experiment.check_config(run_config(size, config))
  for k in config.shots:
    shapes = _shared_shapes(config, k)
    needed = shapes["longest"]
    if "generate" in config.modes:
      needed = max(needed, max(len(text) for task in config.tasks
                               for text, _ in prompting.prompts(task, k, config.count, config.seed))
                   + shapes["generate"]["max_new_tokens"])
    if needed > config.seq_len:
      raise ConfigError(f"K = {k}: prompts with their answers take up to {needed} characters, more than seq_len "
                        f"{config.seq_len} (the models' context); use a smaller K or a longer seq_len")
  return sizes


def accuracy_rows(sizes, config, runs: gpt_scaling.Runs) -> list[dict]:
  """Trains (or reuses) one run per size and scores every (task, K, mode) on it."""
  rows = []
  for size in sizes:
    run = run_config(size, config)
    results = runs.results(run)
    model, params, tokenizer = gpt_scaling.trained_model(run, runs.workdir(run))
    row = {"size": size.name, "non_embedding_params": gpt2.count_params(model.cfg, embeddings=False),
           "val_loss": results["val_loss"], "accuracy": {}, "examples": {}}
    for mode in config.modes:
      for k in config.shots:
        shapes = _shared_shapes(config, k)[mode]
        for task in config.tasks:
          scored = prompting.score(model, params, tokenizer, task, k, mode=mode, count=config.count,
                                   seed=config.seed, batch_size=config.eval_batch_size, **shapes)
          row["accuracy"][f"{mode}/{task}/{k}"] = scored["accuracy"]
          row["examples"][f"{mode}/{task}/{k}"] = {key: scored["records"][0][key]
                                                   for key in ("prompt", "answer", "prediction")}
      means = {k: _mean(row, mode, config.tasks, k) for k in config.shots}
      print(f"size {size.name} {mode}: " + ", ".join(f"K={k} {v:.3f}" for k, v in means.items()), flush=True)
    rows.append(row)
  return rows


def _mean(row: dict, mode: str, tasks, k: int) -> float:
  return float(np.mean([row["accuracy"][f"{mode}/{task}/{k}"] for task in tasks]))


def markdown(rows, config, runs: gpt_scaling.Runs, total_s: float) -> str:
  """Mean accuracy against K per size and mode, then each task's, with the command that produced them."""
  env = harness.environment()["devices"]
  shots, tasks = list(config.shots), list(config.tasks)
  few, zero = max(shots), min(shots)
  optimizer = run_config(gpt_scaling.parse_size(config.sizes[0]), config).optimizer
  blocks = [f"Character-level GPT-2s trained by `experiments.gpt2.run` on python_docs_tasks (python_docs plus "
            f"generated task documents): {config.steps} steps of {config.batch_size} windows of T = {config.seq_len} "
            f"characters, {optimizer.name} at {optimizer.learning_rate:g}, {config.warmup_steps} warmup steps and "
            f"cosine decay. Accuracy on {config.count} held-out queries per task (seed {config.seed}), K "
            "demonstrations per prompt drawn from the training split of each task; likelihood: the best of "
            f"{prompting.CANDIDATES} candidate answers by summed log-probability (chance "
            f"{1 / prompting.CANDIDATES:.2f}); generate: greedy decoding, exact match. {len(runs.wall_time_s)} "
            f"training runs, {sum(w or 0.0 for w in runs.wall_time_s.values()):.0f} s of their own wall time "
            f"({len(runs.trained)} trained by this command, {len(runs.reused)} reused); this command: {total_s:.0f} s "
            f"on {env['kind']} ({env['cpu_count']} CPU cores, shared with other jobs)."]
  for mode in config.modes:
    header = ["n_layer x n_embd x n_head", "N (non-embedding)", "val loss"] + [f"K = {k}" for k in shots]
    if few != zero:
      header.append(f"gain K = {few} vs {zero}")
    body = []
    for row in rows:
      means = [_mean(row, mode, tasks, k) for k in shots]
      cells = [row["size"], f"{row['non_embedding_params']:,}", f"{row['val_loss']:.4f}"] + [f"{m:.3f}" for m in means]
      if few != zero:
        cells.append(f"{_mean(row, mode, tasks, few) - _mean(row, mode, tasks, zero):+.3f}")
      body.append(cells)
    blocks += [f"## {mode}: mean accuracy over {len(tasks)} tasks", harness.table(header, body),
               harness.table(["size", "task"] + [f"K = {k}" for k in shots],
                             [(row["size"], task, *(f"{row['accuracy'][f'{mode}/{task}/{k}']:.3f}" for k in shots))
                              for row in rows for task in tasks])]
  if len(rows) > 1 and few != zero:
    gains = {mode: [_mean(r, mode, tasks, few) - _mean(r, mode, tasks, zero) for r in rows] for mode in config.modes}
    order = ", ".join(f"{mode}: {' -> '.join(f'{g:+.3f}' for g in values)}" for mode, values in gains.items())
    blocks.append(f"Gain from K = {zero} to K = {few} demonstrations, smallest to largest model: {order}. GPT-3 found "
                  "the gap between zero- and few-shot widening with size (Figure 1.2); these models are small and "
                  "briefly trained, so the numbers above are what this budget gives, whichever way they point.")
  return harness.document("In-context learning against model size (Brown et al. 2020 in shape)", *blocks)


def figure(rows, config) -> Figure:
  """Accuracy against K, one line per size: the mean over tasks and each task, one row of panels per mode."""
  panels = ["mean"] + list(config.tasks)
  fig = Figure(figsize=(2.6 * len(panels), 2.6 * len(config.modes)), dpi=100)
  axes = np.asarray(fig.subplots(len(config.modes), len(panels), squeeze=False))
  shots = list(config.shots)
  for i, mode in enumerate(config.modes):
    for j, panel in enumerate(panels):
      ax = axes[i, j]
      for row in rows:
        values = [_mean(row, mode, config.tasks, k) if panel == "mean" else row["accuracy"][f"{mode}/{panel}/{k}"]
                  for k in shots]
        ax.plot(range(len(shots)), values, "o-", label=row["size"])
      if mode == "likelihood":
        ax.axhline(1 / prompting.CANDIDATES, color="gray", linestyle=":", linewidth=1)  # chance
      ax.set_xticks(range(len(shots)), [str(k) for k in shots])
      ax.set_ylim(-0.05, 1.05)
      ax.set_title(f"{panel} ({mode})", fontsize=8)
      ax.set_xlabel("K (demonstrations)", fontsize=7)
      ax.grid(True, alpha=0.3)
    axes[i, 0].set_ylabel("accuracy")
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  return fig


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains (or reuses) every run and writes results.json, in_context.md and in_context.png into `outdir`."""
  sizes = check_config(config)
  runs = gpt_scaling.Runs(config.workdir_root or os.path.join(outdir, "models"))
  start = time.perf_counter()
  rows = accuracy_rows(sizes, config, runs)
  total = time.perf_counter() - start
  text = markdown(rows, config, runs, total)
  results = {"rows": rows, "tasks": list(config.tasks), "shots": list(config.shots), "modes": list(config.modes),
             "runs": {"trained": sorted(os.path.basename(w) for w in runs.trained),
                      "reused": sorted(os.path.basename(w) for w in runs.reused),
                      "wall_time_s": {os.path.basename(w): t for w, t in runs.wall_time_s.items()}}}
  print(text)
  return harness.write_report(outdir, "in_context", results, text, figure=figure(rows, config), config=config,
                              wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
