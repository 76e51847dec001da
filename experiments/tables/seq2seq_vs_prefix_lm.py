"""Encoder-decoder vs a decoder-only prefix LM of the same size on number_words (Raffel et al. 2020, Section 3.2 in shape).

Both models are trained by `experiments.seq2seq.run` (the one training loop) on the same
numbers_to_words pairs ("412" -> "four hundred twelve", 1 to 4 digits), with the same steps,
batch, optimizer and data order, each model's seeds as members of one vmapped program
(research.train.Members):

  encoder-decoder  experiments/seq2seq.py's default T5 ("t5-tiny": 2 + 2 layers, width 64).
  prefix LM        a decoder-only GPT (`gpt`: n_layer:n_embd:n_head) whose total parameter count
                   is within `max_params_gap` of the T5's, trained on the same pairs as one
                   sequence each: source, separator, target, the source attended in both
                   directions, the loss on the target only (research/tasks/prefix_lm.py).

Both decode greedily and are scored by the same code: exact match and corpus BLEU on `test`
(held-out numbers of the training lengths) and on `test_longer` (5 and 6 digits: longer sources
and targets than any in training), `eval_examples` of each, mean ± standard deviation over seeds.

Runs go into `workdir_root` (default <outdir>/models), one directory per model, so a rerun resumes
interrupted runs and reuses finished ones.

Run:
  python -m experiments.tables.seq2seq_vs_prefix_lm --outdir=experiments/tables/results/seq2seq_vs_prefix_lm
  python -m experiments.tables.seq2seq_vs_prefix_lm --outdir=/tmp/seq2seq_vs_prefix_lm \\
      --config=experiments/tables/seq2seq_vs_prefix_lm.py:smoke
"""

import os
import time

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import harness
from experiments import seq2seq as seq2seq_experiment
from experiments.tables import gpt_scaling
from research.data import number_words
from research.models import gpt2
from research.models import seq2seq as seq2seq_model
from research.tasks import prefix_lm, seq2seq
from research.train import ConfigError, Members, check_positive, cli

MODELS = ("encoder_decoder", "prefix_lm")
LABELS = {"encoder_decoder": "encoder-decoder (T5)", "prefix_lm": "decoder-only prefix LM (GPT)"}
SPLITS = ("test", "test_longer")
METRICS = ("exact_match", "bleu")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two seeds of both models, a few steps and a small evaluation, for tests."""
  config.seeds, config.steps, config.warmup_steps = 2, 6, 2
  config.eval_examples, config.eval_batch_size = 6, 6


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's models and budget; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.gpt = "6:64:4"  # the prefix LM's n_layer:n_embd:n_head (6 x 64 has t5-tiny's parameter count within 1 %)
  config.max_params_gap = 0.05  # the largest relative difference of the two total parameter counts allowed
  config.seeds = 3  # seeds per model, vmapped in one program
  config.steps = 600  # optimizer updates of every run (both reach ~99 % exact match on test by 300)
  config.batch_size = 64  # (source, target) pairs per update
  config.warmup_steps = 60  # learning-rate warmup steps (then cosine decay)
  config.eval_examples = 500  # examples of each evaluation split decoded (evenly spaced over it)
  config.eval_batch_size = 250  # sources per decoding call
  config.workdir_root = ""  # directory of the training runs; "": <outdir>/models
  return cli.apply_presets(config, preset, PRESETS)


def run_config(model: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """experiments/seq2seq.py's default config with this table's model (the T5 or the GPT) and budget."""
  run = seq2seq_experiment.get_config()
  if model == "prefix_lm":
    size = gpt_scaling.parse_size(config.gpt)
    run.model = seq2seq_experiment.PREFIX_LM
    run.n_layer, run.n_embd, run.n_head = size.n_layer, size.n_embd, size.n_head
  run.steps, run.batch_size = config.steps, config.batch_size
  run.optimizer.warmup_steps = config.warmup_steps
  run.eval_examples, run.eval_batch_size = config.eval_examples, config.eval_batch_size
  run.num_beams = 1  # greedy decoding for both (the T5's "beam" decoding is then greedy too)
  run.attention_examples = 0
  run.log_every = max(1, min(500, config.steps))
  run.checkpoint_every = config.steps
  return run


def param_count(model: str, run: ml_collections.ConfigDict) -> int:
  """The total parameter count (embeddings included) of a run config's model, from shapes alone."""
  vocab = number_words.NumberWordsTokenizer().vocab_size
  if model == "prefix_lm":
    return gpt2.count_params(prefix_lm.model_config(run, vocab))
  return seq2seq_model.count_params(seq2seq.model_config(run, vocab))


def check_config(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Checks every field and both runs' configs; returns each model's parameter count. Raises ConfigError first."""
  gpt_scaling.parse_size(config.gpt)
  for name in ("seeds", "steps", "batch_size", "eval_examples", "eval_batch_size"):
    check_positive(name, config[name])
  if not 0.0 < config.max_params_gap < 1.0:
    raise ConfigError(f"max_params_gap must be in (0, 1), got {config.max_params_gap}")
  if not 0 <= config.warmup_steps < config.steps:
    raise ConfigError(f"warmup_steps must be in [0, steps {config.steps}), got {config.warmup_steps}")
  counts = {}
  for model in MODELS:
    run = run_config(model, config)
    seq2seq_experiment.check_config(run)  # the experiment's own checks on every run the table makes
    counts[model] = param_count(model, run)
  gap = counts["prefix_lm"] / counts["encoder_decoder"] - 1.0
  if abs(gap) > config.max_params_gap:
    raise ConfigError(f"the GPT {config.gpt} has {counts['prefix_lm']:,} parameters, {100 * gap:+.1f}% from the "
                      f"encoder-decoder's {counts['encoder_decoder']:,} (max_params_gap {config.max_params_gap:g}); "
                      "choose another --config.gpt")
  return counts


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof 1; NaN for one value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def model_row(model: str, config: ml_collections.ConfigDict, params: int, root: str) -> dict:
  """Trains (or resumes) one model's seeds as one vmapped program and gathers each member's scores."""
  run = run_config(model, config)
  seeds = tuple(range(config.seeds))
  start = time.perf_counter()
  results = seq2seq_experiment.run(run, os.path.join(root, model), members=Members(seeds=seeds))
  wall = time.perf_counter() - start
  members = results["members"]
  diverged = [i for i, m in enumerate(members) if "diverged_at_step" in m]
  if diverged:
    raise RuntimeError(f"the {model} members {diverged} diverged; the table needs every seed")
  row = {"model": model, "params": params, "seeds": list(seeds), "wall_time_s": round(wall, 1),
         "shape": (config.gpt if model == "prefix_lm" else run.model),
         "train_loss": [m.get("train_loss") for m in members]}
  for split in SPLITS:
    for metric in METRICS:
      values = [float(m[f"{split}_greedy_{metric}"]) for m in members]
      row[f"{split}_{metric}"] = values
      row[f"{split}_{metric}_mean"], row[f"{split}_{metric}_std"] = mean_std(values)
  print(f"{model} ({params:,} parameters): exact match test {row['test_exact_match_mean']:.3f}, "
        f"test_longer {row['test_longer_exact_match_mean']:.3f} ({wall:.0f} s)", flush=True)
  return row


def markdown(rows: list[dict], config: ml_collections.ConfigDict, total_s: float) -> str:
  """The table with the command that produced it."""
  env = harness.environment()["devices"]
  enc, dec = rows
  run = run_config("encoder_decoder", config)
  cell = lambda r, key, scale, digits: harness.pm((r[f"{key}_mean"], r[f"{key}_std"]), digits, scale)
  table = harness.table(
      ["model", "parameters", "exact match, test (%)", "exact match, test_longer (%)", "BLEU, test",
       "BLEU, test_longer"],
      [(f"{LABELS[r['model']]} {r['shape']}", f"{r['params']:,}", cell(r, "test_exact_match", 100, 1),
        cell(r, "test_longer_exact_match", 100, 1), cell(r, "test_bleu", 1, 1), cell(r, "test_longer_bleu", 1, 1))
       for r in rows], align="lrrrrr")
  seeds = lambda key: "; ".join(f"{LABELS[r['model']].split(' (')[0]} "
                                f"{', '.join(f'{100 * v:.1f}' for v in r[key])}" for r in rows)
  blocks = [
      f"Both trained by `experiments.seq2seq.run` on number_words numbers_to_words (9,000 numbers of 1 to 4 "
      f"digits): {config.steps} steps of {config.batch_size} pairs, {run.optimizer.name} at "
      f"{run.optimizer.learning_rate:g} (weight decay {run.optimizer.weight_decay:g}) with {config.warmup_steps} "
      f"warmup steps and cosine decay; {config.seeds} seeds per model as members of one vmapped program. The "
      f"encoder-decoder is experiments/seq2seq.py's default {run.model}; the decoder-only GPT "
      f"(n_layer:n_embd:n_head {config.gpt}) reads each pair as one sequence (source, separator, target) with "
      "the source attended in both directions and the loss on the target only (a prefix LM, Raffel et al. "
      f"2020). Parameter counts, embeddings included: {enc['params']:,} and {dec['params']:,} "
      f"({100 * (dec['params'] / enc['params'] - 1):+.1f}%). This command: {total_s:.0f} s on {env['kind']} "
      f"({env['cpu_count']} CPU cores, shared with other jobs); the runs' own wall times "
      f"{enc['wall_time_s']:.0f} s and {dec['wall_time_s']:.0f} s.",
      table,
      f"Greedy decoding of {config.eval_examples} examples of each split (evenly spaced over it), scored by the "
      "same code: exact match of the whole string and corpus BLEU (0 .. 100) over tokens; mean ± standard "
      f"deviation over the {config.seeds} seeds. `test`: numbers of 1 to 4 digits never trained on; "
      "`test_longer`: 5 and 6 digits, longer sources and targets than any in training. Exact match per seed "
      f"(%), test: {seeds('test_exact_match')}; test_longer: {seeds('test_longer_exact_match')}."]
  return harness.document("Encoder-decoder vs decoder-only prefix LM on number_words", *blocks)


def figure(rows: list[dict]) -> Figure:
  """Exact match and BLEU per split: bars at the mean over seeds, each seed a dot."""
  fig = Figure(figsize=(10, 4), dpi=100)
  axes = fig.subplots(1, 2)
  width = 0.38
  for ax, metric, scale, unit in zip(axes, METRICS, (100.0, 1.0), ("exact match (%)", "BLEU")):
    for i, r in enumerate(rows):
      x = np.arange(len(SPLITS)) + (i - 0.5) * width
      means = [scale * r[f"{s}_{metric}_mean"] for s in SPLITS]
      stds = [scale * np.nan_to_num(r[f"{s}_{metric}_std"]) for s in SPLITS]
      ax.bar(x, means, width, yerr=stds, capsize=3, color=f"C{i}", alpha=0.75,
             label=f"{LABELS[r['model']]}, {r['params']:,} params")
      for xi, s in zip(x, SPLITS):
        values = scale * np.asarray(r[f"{s}_{metric}"])
        ax.plot(np.full(len(values), xi), values, "k.", markersize=5)
    ax.set_xticks(np.arange(len(SPLITS)), ["test (1-4 digits)", "test_longer (5-6 digits)"])
    ax.set_ylabel(unit)
    ax.set_ylim(0, 100)
    ax.set_title(f"{unit}, greedy (bars: mean ± std over seeds, dots: seeds)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
  axes[0].legend(fontsize=8, loc="center right")  # test_longer's exact match leaves room there
  fig.tight_layout()
  return fig


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains (or reuses) both models' seeds; writes results.json, seq2seq_vs_prefix_lm.md and .png into `outdir`."""
  counts = check_config(config)
  root = config.workdir_root or os.path.join(outdir, "models")
  start = time.perf_counter()
  rows = [model_row(model, config, counts[model], root) for model in MODELS]
  total = time.perf_counter() - start
  text = markdown(rows, config, total)
  print(text)
  return harness.write_report(outdir, "seq2seq_vs_prefix_lm", {"rows": rows}, text, figure=figure(rows),
                              config=config, wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
