"""Codex (Chen et al. 2021): pass@k against the sampling temperature, and text-only against text + code pre-training.

Chen et al. (2021, Figure 5) sample a code model at temperatures from 0.1 to 1.0: the best temperature
for pass@1 is low (a model's most likely program), for pass@100 high (diverse samples cover more
of the problems). Code in pre-training is what makes a language model write programs at all.
Here, on the bundled data, two pre-trainings of the same GPT at the same budget:

  text + code   experiments.codex's default dataset, python_docs_code (CPython's documentation
                plus the python_functions train problems with their reference bodies);
  text only     python_docs alone;

each `seeds` seeds as members of one vmapped program (research.train.Members: one program per
dataset, since a data mixture is not a hyperparameter the members can vary), then every member
scored as experiments.codex scores its run: `samples_per_problem` completions of each of
`num_problems` held-out test problems at each temperature, run against the hidden tests, pass@k by
the unbiased estimator. Table 1 is pass@k of text + code at each temperature, table 2 both
pre-trainings at each k's best temperature (chosen on the mean over seeds), mean ± standard error
over seeds, with every seed's value.

Run:
  python -m experiments.tables.codex --outdir=experiments/tables/results/codex
  python -m experiments.tables.codex --outdir=/tmp/codex_table --config=experiments/tables/codex.py:smoke
"""

import os
import time

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import codex as codex_experiment
from experiments import gpt2 as gpt2_experiment
from experiments import harness
from research.train import ConfigError, Members, Pipeline, check_positive, cli

ROWS = {"text + code": "python_docs_code", "text only": "python_docs"}


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two seeds of experiments.codex's smoke model, for tests."""
  config.seeds = 2
  config.preset = "smoke"


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's budget: experiments.codex's default run per member; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.seeds = 3  # pre-training members (seeds) per dataset, vmapped in one program
  config.preset = ""  # experiments.codex's preset every run starts from ("": its default config)
  config.steps = 0  # pre-training updates per run (0: the preset's)
  config.num_problems = 0  # test problems scored (0: the preset's)
  config.samples_per_problem = 0  # completions per problem and temperature (0: the preset's)
  config.temperatures = ()  # sampling temperatures (empty: the preset's)
  config.workdir_root = ""  # directory of the runs; "": <outdir>/runs
  return cli.apply_presets(config, preset, PRESETS)


def run_config(table, dataset: str) -> ml_collections.ConfigDict:
  """experiments.codex's config of one row: its preset, the table's overrides, `dataset`."""
  config = codex_experiment.get_config(table.preset)
  config.dataset = dataset
  for name in ("steps", "num_problems", "samples_per_problem"):
    if table[name]:
      config[name] = table[name]
  if table.temperatures:
    config.temperatures = tuple(table.temperatures)
  return config


def check_config(table) -> None:
  """Raises ConfigError on the first bad field, then on experiments.codex's checks of each row's run."""
  check_positive("seeds", table.seeds)
  for name in ("steps", "num_problems", "samples_per_problem"):
    check_positive(name, table[name], allow_zero=True)
  if table.preset not in ("", *codex_experiment.PRESETS):
    raise ConfigError(f"unknown preset {table.preset!r}; choose '' or one of: {', '.join(codex_experiment.PRESETS)}")
  for dataset in ROWS.values():
    codex_experiment.check_config(run_config(table, dataset))


def _row(table, dataset: str, root: str, members: Members) -> list[dict]:
  """Pre-trains `dataset`'s members (or reads the finished stage) and scores each; their metrics."""
  config = run_config(table, dataset)
  workdir = os.path.join(root, dataset)
  pretraining = codex_experiment.pretrain_config(config)
  stage = Pipeline(workdir).stage("pretrain", config.steps,
                                  lambda directory: gpt2_experiment.run(pretraining, directory, members=members))
  out = []
  for i, seed in enumerate(members.seeds):
    metrics = codex_experiment.evaluate(config, os.path.join(workdir, f"member_{i}"), stage, member=i)
    metrics["val_loss"] = stage.results["members"][i]["val_loss"]
    metrics["seed"] = seed
    out.append(metrics)
  return out


def _values(runs: list[dict], temperature: float, k: int) -> list[float]:
  name = f"t{temperature:g}"
  return [r["pass_at_k"][name][f"pass@{k}"] for r in runs]


def figure(rows: dict, temperatures, ks):
  """Left: pass@k of text + code against temperature; right: both rows at each k's best temperature."""
  fig = Figure(figsize=(10, 4), dpi=100)
  left, right = fig.subplots(1, 2)
  code_runs = rows["text + code"]
  for k in ks:
    stats = [harness.mean_se(_values(code_runs, t, k)) for t in temperatures]
    means, errors = np.array([100 * m for m, _ in stats]), np.array([100 * e for _, e in stats])
    left.errorbar(temperatures, means, yerr=errors, marker="o", capsize=3, label=f"pass@{k}")
    best = int(np.argmax(means))
    left.plot([temperatures[best]], [means[best]], marker="*", markersize=14, color="black")
  left.set(xlabel="sampling temperature", ylabel="pass@k (%)", title="text + code: pass@k vs temperature (★ best)")
  left.legend()
  width = 0.8 / len(rows)
  for j, (name, runs) in enumerate(rows.items()):
    best = [max(temperatures, key=lambda t: np.mean(_values(runs, t, k))) for k in ks]
    stats = [harness.mean_se(_values(runs, t, k)) for t, k in zip(best, ks)]
    right.bar(np.arange(len(ks)) + j * width, [100 * m for m, _ in stats], width, yerr=[100 * e for _, e in stats],
              capsize=3, label=name)
  right.set_xticks(np.arange(len(ks)) + width * (len(rows) - 1) / 2, [f"pass@{k}" for k in ks])
  right.set(ylabel="pass@k (%) at the best temperature", title="pre-training data")
  right.legend()
  fig.tight_layout()
  return fig


def markdown(rows: dict, table, config, temperatures, ks, wall_s: float) -> str:
  """The report: the budget, pass@k by temperature (text + code), then both rows side by side."""
  code_runs = rows["text + code"]
  by_temperature = []
  for t in temperatures:
    by_temperature.append([f"{t:g}"] + [harness.pm(harness.mean_se(_values(code_runs, t, k)), 1, 100.0) for k in ks])
  best = [f"best T = {max(temperatures, key=lambda t: np.mean(_values(code_runs, t, k))):g}" for k in ks]
  side = []
  for name, runs in rows.items():
    cells = []
    for k in ks:
      t = max(temperatures, key=lambda t, k=k: np.mean(_values(runs, t, k)))
      values = _values(runs, t, k)
      cells.append(f"{harness.pm(harness.mean_se(values), 1, 100.0)} (T = {t:g}; "
                   + ", ".join(f"{100 * v:.1f}" for v in values) + ")")
    loss = harness.pm(harness.mean_se([r["val_loss"] for r in runs]), 3)
    side.append([name, loss] + cells)
  return harness.document(
      "Codex (Chen et al. 2021): pass@k vs sampling temperature, and code in pre-training",
      f"A GPT of {config.n_layer} blocks, {config.n_embd} wide, {config.n_head} heads, context {config.n_positions}, "
      f"byte-level BPE of {config.bpe_vocab_size} fitted on its training text; {config.steps} updates of "
      f"{config.batch_size} windows of {config.seq_len} tokens (experiments.codex). Scored on "
      f"{code_runs[0]['num_problems']} held-out python_functions problems, n = {config.samples_per_problem} "
      f"completions per problem and temperature (top-p {config.top_p:g}), each run against the hidden tests in the "
      f"sandbox; pass@k is the unbiased estimator averaged over problems. {table.seeds} seeds per row as members "
      f"of one vmapped program; mean ± standard error over seeds (percent). Total wall time {wall_s / 60:.1f} min.",
      "## Text + code: pass@k by temperature\n\n"
      + harness.table(["temperature"] + [f"pass@{k}" for k in ks], by_temperature + [[""] + best],
                      align="l" + "r" * len(ks)),
      "## Text only vs text + code, each k at its best temperature (every seed in brackets)\n\n"
      + harness.table(["pre-training", "val_loss (nats/token, python_docs test)"] + [f"pass@{k}" for k in ks],
                      side, align="llr" + "r" * (len(ks) - 1)))


def run(table: ml_collections.ConfigDict, outdir: str) -> dict:
  """Pre-trains and scores both rows; writes results.json, codex.md and codex.png."""
  check_config(table)
  start = time.perf_counter()
  root = table.workdir_root or os.path.join(outdir, "runs")
  members = Members(seeds=tuple(range(table.seeds)))
  rows = {name: _row(table, dataset, root, members) for name, dataset in ROWS.items()}
  config = run_config(table, ROWS["text + code"])
  temperatures = [float(t) for t in config.temperatures]
  ks = [k for k in codex_experiment.KS if k <= config.samples_per_problem]
  wall = time.perf_counter() - start
  text = markdown(rows, table, config, temperatures, ks, wall)
  print(text)
  metrics = {"rows": {name: [{key: r[key] for key in ("seed", "val_loss", "pass_at_k", "best_temperature")}
                             for r in runs] for name, runs in rows.items()},
             "temperatures": temperatures, "ks": ks, "num_problems": rows["text + code"][0]["num_problems"],
             "samples_per_problem": config.samples_per_problem}
  return harness.write_report(outdir, "codex", metrics, text, figure=figure(rows, temperatures, ks), config=table,
                              wall_time_s=wall)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
