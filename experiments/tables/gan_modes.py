"""VEEGAN / PacGAN Table 1 in shape: mode coverage of GAN, WGAN-GP and PacGAN-2 on ring8 and grid25.

For each dataset and method, `seeds` runs (default 10) train as ONE vmapped program
(research.sweep.run: the training loop's own step under lax.scan and vmap), then every
member's generator draws 2500 points, scored as PacGAN does (research/metrics/modes.py):
modes captured, and the percentage of high-quality samples (within 3 standard
deviations of the nearest mode). Reported as mean +- standard error over the seeds,
beside the numbers of Srivastava et al. (VEEGAN, 2017) and Lin et al. (PacGAN, 2018).

Member s is the run `python -m experiments.gan --config.seed=s` would make with the same
config (same key streams and data order; evaluated with the same key).

Run:
  python -m experiments.tables.gan_modes --outdir=experiments/tables/results/gan_modes
  python -m experiments.tables.gan_modes --outdir=/tmp/gan_modes --config.steps=200 --config.seeds=2
  python -m experiments.tables.gan_modes --outdir=/tmp/gan_modes --config=experiments/tables/gan_modes.py:smoke
"""

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import gan as gan_experiment
from experiments import harness
from research import data as data_lib
from research import sweep
from research.data import toy2d
from research.models import gan
from research.tasks import gan as gan_tasks
from research.train import Keys, check_positive, cli

DATASETS = ("ring8", "grid25")
# name -> (loss preset of experiments/gan.py, PacGAN packing degree).
METHODS = {"GAN": ("gan", 1), "WGAN-GP": ("wgan_gp", 1), "PacGAN-2": ("gan", 2)}
# (dataset, method) -> (modes captured, % high quality): VEEGAN Table 1 / PacGAN Table 1.
PAPER = {
    ("ring8", "GAN"): (6.3, 98.2),
    ("ring8", "VEEGAN"): (8.0, 52.9),
    ("ring8", "PacGAN-2"): (7.9, 95.6),
    ("grid25", "VEEGAN"): (24.6, 40.0),
    ("grid25", "PacGAN-4"): (24.8, 93.6),
}


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Short runs of two seeds, for tests."""
  config.steps, config.seeds = 20, 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's budget; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.steps = 1500  # generator updates per run (WGAN-GP makes 5 critic updates each)
  # Generator updates of WGAN-GP runs; 0: steps (steps / 5 gives every method the same number of critic updates).
  config.wgan_gp_steps = 0
  config.seeds = 10  # runs per dataset and method, vmapped in one program
  return cli.apply_presets(config, preset, PRESETS)


def table_config(dataset: str, method: str, steps: int):
  """The experiments/gan.py config of one table cell: the loss preset plus the table's sizes.

  The papers' nets (a 4 x 400 ReLU generator with batch norm, a 3 x 200 LinearMaxout-5
  discriminator, hundreds of epochs) do not fit a 10-minute CPU budget; the table keeps
  their kinds of layers at a smaller size and anneals every method's learning rate with
  a cosine schedule so short runs end sharp.
  """
  loss, pack = METHODS[method]
  config = gan_experiment.get_config(f"{loss},mode_table")
  config.dataset = dataset
  config.pack = pack
  config.steps = steps
  return config


def run_cell(config, seeds, data) -> dict:
  """Trains one member per seed in one vmapped program and scores every generator."""
  gan_experiment.check_config(config)
  task = gan_tasks.make_task(config)
  start = time.perf_counter()
  result = sweep.run(task, config, data, seeds=seeds)
  # The key research.train.train evaluates member s with (see its Keys and evaluate).
  eval_keys = jnp.stack([jax.random.split(Keys.from_seed(s).eval)[0] for s in seeds])
  scores = jax.jit(jax.vmap(functools.partial(gan.coverage, config)))(result.state.params["gen"], eval_keys)
  scores = jax.device_get(scores)
  wall = time.perf_counter() - start
  first_gen = jax.tree.map(lambda x: x[0], result.state.params["gen"])
  points = gan.generate(gan.make_models(config).gen, first_gen, eval_keys[0], config.eval_samples, config.latent_dim)
  modes_captured = [int(v) for v in scores.modes_captured]
  high_quality = [100.0 * float(v) for v in scores.high_quality_fraction]
  return {"modes_captured": modes_captured, "high_quality_percent": high_quality,
          "modes_captured_mean_se": harness.mean_se(modes_captured),
          "high_quality_percent_mean_se": harness.mean_se(high_quality),
          "final_loss": [float(v) for v in np.asarray(result.metrics["loss"])[:, -1]],
          "wall_time_s": round(wall, 2), "config": config.to_dict(), "points_seed0": np.asarray(points)}


def markdown(cells: dict, steps: int, wgan_gp_steps: int, seeds: int, total_s: float) -> str:
  """The table beside the papers' numbers, with the command that produced it."""
  rows = []
  for dataset in DATASETS:
    total = len(toy2d.MIXTURES[dataset][0])
    for method in METHODS:
      cell = cells[dataset][method]
      paper = PAPER.get((dataset, method))
      rows.append((f"{dataset} ({total} modes)", method, harness.pm(cell["modes_captured_mean_se"], 1),
                   harness.pm(cell["high_quality_percent_mean_se"], 1),
                   *((f"{paper[0]:g}", f"{paper[1]:g}") if paper else ("—", "—"))))
    for (paper_data, method), (modes_value, hq_value) in PAPER.items():
      if paper_data == dataset and method not in METHODS:
        rows.append((f"{dataset} ({total} modes)", f"{method} (paper only)", "—", "—", f"{modes_value:g}",
                     f"{hq_value:g}"))
  return harness.document(
      "GAN mode coverage (VEEGAN / PacGAN Table 1 in shape)",
      f"{seeds} seeds per cell, each cell one vmapped program (research.sweep.run); {steps} generator "
      f"updates per GAN / PacGAN run and {wgan_gp_steps} per WGAN-GP run (each after 5 critic updates), "
      "batch 64, 2500 generated points scored per run. Modes captured and % high quality "
      "(within 3 standard deviations of the nearest mode) as mean ± standard error over seeds. "
      f"Whole table: {total_s:.0f} s wall on {harness.environment()['devices']['kind']}.",
      harness.table(["data", "method", "modes captured", "% high quality", "paper: modes", "paper: % high quality"],
                    rows),
      "Setup: experiments/gan.py's settings per loss (GAN: Adam 1e-3, beta1 0.5; WGAN-GP: Adam 2e-3, "
      "beta1 0.5, beta2 0.9, n_critic 5, lambda 0.1 as in Gulrajani et al.'s toy code; PacGAN-2: the GAN "
      "with the discriminator judging "
      "2 samples at once), each annealed with a cosine schedule; generator 3 x 128 ReLU on a 2-D "
      "Gaussian latent, discriminator 2 x 64 LinearMaxout with 5 pieces. The papers train a 4 x 400 "
      "generator with batch norm and a 3 x 200 maxout discriminator for far longer, so this table "
      "reproduces the comparison's shape at a CPU budget, not the papers' absolute numbers.\n"
      "Paper numbers: GAN and PacGAN from Lin et al. (2018) Table 1, VEEGAN from Srivastava et al. "
      "(2017) Table 1.")


def figure(cells: dict) -> Figure:
  """Seed 0's generated points of every cell, over the mixture's modes."""
  fig = Figure(figsize=(3.2 * len(METHODS), 3.2 * len(DATASETS)), dpi=100)
  axes = fig.subplots(len(DATASETS), len(METHODS))
  for row, dataset in enumerate(DATASETS):
    centres, _ = toy2d.MIXTURES[dataset]
    for col, method in enumerate(METHODS):
      ax, cell = axes[row, col], cells[dataset][method]
      points = cell["points_seed0"]
      ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4)
      ax.scatter(centres[:, 0], centres[:, 1], s=12, c="red", marker="x")
      lim = 1.6 * np.abs(centres).max()
      ax.set_xlim(-lim, lim)
      ax.set_ylim(-lim, lim)
      ax.set_aspect("equal")
      ax.set_title(f"{dataset} {method} (seed 0)\n{cell['modes_captured'][0]} modes, "
                   f"{cell['high_quality_percent'][0]:.0f}% HQ", fontsize=8)
      ax.tick_params(labelsize=6)
  fig.tight_layout()
  return fig


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains and scores every cell; writes results.json, gan_modes.md and gan_modes.png into `outdir`."""
  check_positive("steps", config.steps)
  check_positive("wgan_gp_steps", config.wgan_gp_steps, allow_zero=True)
  check_positive("seeds", config.seeds)
  steps, seeds = config.steps, list(range(config.seeds))
  wgan_gp_steps = config.wgan_gp_steps or steps
  start = time.perf_counter()
  cells = {}
  for dataset in DATASETS:
    data = data_lib.load(dataset, "train")
    cells[dataset] = {}
    for method in METHODS:
      method_steps = wgan_gp_steps if METHODS[method][0] == "wgan_gp" else steps
      cell = run_cell(table_config(dataset, method, method_steps), seeds, data)
      cells[dataset][method] = cell
      print(f"{dataset} {method}: modes {harness.pm(cell['modes_captured_mean_se'], 2)}, "
            f"% high quality {harness.pm(cell['high_quality_percent_mean_se'], 1)} ({cell['wall_time_s']} s)",
            flush=True)
  total = time.perf_counter() - start
  text = markdown(cells, steps, wgan_gp_steps, len(seeds), total)
  results = {"steps": steps, "wgan_gp_steps": wgan_gp_steps, "seeds": seeds,
             "paper": {f"{d}/{m}": {"modes_captured": v[0], "high_quality_percent": v[1]}
                       for (d, m), v in PAPER.items()},
             "cells": {d: {m: {k: v for k, v in cell.items() if k != "points_seed0"} for m, cell in row.items()}
                       for d, row in cells.items()}}
  print(text)
  return harness.write_report(outdir, "gan_modes", results, text, figure=figure(cells), config=config,
                              wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
