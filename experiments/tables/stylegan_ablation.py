"""StyleGAN2 ablation on 8x8 digits: AdaIN against demodulation, and without R1, path length or style mixing.

Each row is experiments/stylegan.py's default config with one change, its `seeds` seeds trained side
by side as ONE vmapped program (research.train.Members) through the experiment's `run`:
  StyleGAN2    the default: weight demodulation, lazy R1 and path-length regularisation, mixing 0.9
  AdaIN        style_mode=adain (StyleGAN1's adaptive instance normalisation instead of demodulation)
  no R1        r1_gamma=0
  no PL        pl_weight=0
  no mixing    mixing_prob=0
Every member is scored as the experiment scores a run: `num_samples` samples, FID against the training
digits in the MLP digits classifier's features beside real held-out digits' FID at the same count, and
PPL (in W, in the same features). Mean ± standard error over the members. Under vmap the lazy
regularisers' `lax.cond` on each member's step becomes a select, so a member computes R1 and the
path length at every step: a row's program is slower per step than a single run's.

Run:
  python -m experiments.tables.stylegan_ablation --outdir=experiments/tables/results/stylegan_ablation
  python -m experiments.tables.stylegan_ablation --outdir=/tmp/ablation --config=experiments/tables/stylegan_ablation.py:smoke
"""

import os
import shutil
import tempfile
import time

import ml_collections

from experiments import harness
from experiments import stylegan as stylegan_experiment
from research.train import ConfigError, Members, check_positive, cli

# Row -> the fields it changes in experiments/stylegan.py's config.
ROWS = {"StyleGAN2": {}, "AdaIN": {"style_mode": "adain"}, "no R1": {"r1_gamma": 0.0},
        "no PL": {"pl_weight": 0.0}, "no mixing": {"mixing_prob": 0.0}}


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two rows (a program change and a traced one), two members of the experiment's smoke run, for tests."""
  config.rows, config.seeds, config.steps, config.num_samples, config.smoke = ("AdaIN", "no PL"), 2, 4, 16, True


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's rows and budget; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.rows = tuple(ROWS)  # rows of the table (names of ROWS)
  config.seeds = 2  # members (seeds) per row, trained as one vmapped program
  config.steps = 0  # training steps per run; 0: experiments/stylegan.py's
  config.num_samples = 1000  # samples scored per member (FID's bias depends on it)
  config.smoke = False  # start from experiments/stylegan.py's smoke preset instead of its default (tests)
  config.workdir = ""  # keep the runs here; "": a temporary directory, removed at the end
  return cli.apply_presets(config, preset, PRESETS)


def row_config(row: str, table) -> ml_collections.ConfigDict:
  """The experiment config of one row."""
  config = stylegan_experiment.table_config(table)
  for field, value in ROWS[row].items():
    config[field] = value
  return config


def check(table) -> None:
  """Raises ConfigError on a bad field, before anything is trained."""
  harness.check_names("rows", table.rows, tuple(ROWS))
  check_positive("seeds", table.seeds)
  check_positive("steps", table.steps, allow_zero=True)
  for row in table.rows:
    stylegan_experiment.check_config(row_config(row, table))


def run_row(row: str, table, workdir: str) -> dict:
  """Trains one row's members as one program and collects each member's FID and PPL."""
  config = row_config(row, table)
  start = time.perf_counter()
  results = stylegan_experiment.run(config, os.path.join(workdir, row.replace(" ", "_")),
                                    members=Members(tuple(range(table.seeds))))
  members = [m for m in results["members"] if "diverged_at_step" not in m]
  per_member = {name: [float(m[name]) for m in members] for name in ("fid", "fid_ratio", "precision", "recall", "ppl")}
  return {"steps": int(config.steps), "diverged_members": len(results["members"]) - len(members),
          "per_member": per_member, "mean_se": {name: harness.mean_se(v) for name, v in per_member.items()},
          "wall_time_s": round(time.perf_counter() - start, 1)}


def markdown(table, cells: dict, total_s: float) -> str:
  rows = []
  for row, cell in cells.items():
    stats = cell["mean_se"]
    diverged = f" ({cell['diverged_members']} diverged)" if cell["diverged_members"] else ""
    rows.append((row, f"{table.seeds}{diverged}", harness.pm(stats["fid"], 2), harness.pm(stats["fid_ratio"], 2),
                 harness.pm(stats["precision"], 3), harness.pm(stats["recall"], 3), harness.pm(stats["ppl"], 1),
                 f"{cell['wall_time_s']:.0f}"))
  steps = next(iter(cells.values()))["steps"]
  return harness.document(
      "StyleGAN2 ablation on 8x8 digits",
      f"Each row: experiments/stylegan.py with one change, {table.seeds} seeds as members of one vmapped "
      f"program, {steps} steps; {table.num_samples} samples per member scored against the training digits in "
      "the MLP digits classifier's features (FID ratio: over real held-out digits' FID at the same count; "
      "precision and recall with k = 3) and PPL in W in the same features. Mean ± standard error over the "
      f"members. Whole table: {total_s:.0f} s wall on {harness.environment()['devices']['kind']} "
      f"({os.cpu_count()} CPUs).",
      harness.table(["row", "members", "FID", "FID ratio", "precision", "recall", "PPL", "wall s"], rows,
                    "lrrrrrrr"))


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains every row, writes stylegan_ablation.md and results.json."""
  check(config)
  start = time.perf_counter()
  workdir = config.workdir or tempfile.mkdtemp(prefix="stylegan_ablation_")
  try:
    cells = {row: run_row(row, config, workdir) for row in config.rows}
  finally:
    if not config.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  total = time.perf_counter() - start
  return harness.write_report(outdir, "stylegan_ablation", {"rows": cells}, markdown(config, cells, total),
                              config=config, wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
