"""Loshchilov & Hutter (ICLR 2019) Figure 2 in shape: test error over learning rate x weight decay.

For each optimizer, the grid of `grid` learning rates x `grid` weight decays x `seeds`
seeds trains the digits classifier (experiments/classifier.py: an MLP 64-256-64-10, warmup
and cosine schedule, batch 64) as ONE vmapped program: research.train.train with
research.train.Members, each member the run `python -m experiments.classifier
--config.seed=s --config.optimizer.name=NAME --config.optimizer.learning_rate=a
--config.optimizer.weight_decay=w` would make. Optimizers (research/optim.py):

  adam_l2      Adam with L2 in the gradient (coupled; what the paper argues against)
  adamw        AdamW as optax and PyTorch define it: the decay is multiplied by the learning rate
  adamw_paper  the paper's AdamW: the decay is multiplied by the schedule multiplier only
  sgd_l2       SGD with momentum and L2 in the gradient
  sgdw         the paper's SGDW (decay multiplied by the schedule multiplier only)

The paper's claims, checked on the numbers: with decoupled decay the good region of the
(learning rate, decay) plane is axis-aligned (the best decay does not move with the learning
rate: the slope of log10(best decay) against log10(learning rate) is near 0, where coupled
L2, whose effective decay is divided by Adam's normaliser, and optax's adamw, whose decay is
multiplied by the learning rate, move it), and AdamW generalises at least as well as Adam with L2.

Run:
  python -m experiments.tables.adamw --outdir=experiments/tables/results/adamw
  python -m experiments.tables.adamw --outdir=/tmp/adamw --config.grid=3 --config.seeds=1 --config.steps=40 \
      --config.optimizers=adam_l2 --config.optimizers=adamw_paper
  python -m experiments.tables.adamw --outdir=/tmp/adamw --config=experiments/tables/adamw.py:smoke
"""

import math
import os
import time

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import classifier
from experiments import harness
from research.train import ConfigError, Members, check_positive, cli

# name -> (log10 range of learning rates, log10 range of weight decays): wide enough to hold
# each optimizer's good region (a decay multiplied by the learning rate needs larger values).
RANGES = {
    "adam_l2": ((-4.0, -1.0), (-6.0, -1.0)),
    "adamw": ((-4.0, -1.0), (-3.0, 2.0)),
    "adamw_paper": ((-4.0, -1.0), (-6.0, -1.0)),
    "sgd_l2": ((-3.0, 0.0), (-6.0, -1.0)),
    "sgdw": ((-3.0, 0.0), (-6.0, -1.0)),
}
DECOUPLED = ("adamw_paper", "sgdw")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two optimizers on a 2 x 2 grid of short runs, for tests."""
  config.grid, config.seeds, config.steps, config.optimizers = 2, 2, 20, ("adam_l2", "sgdw")


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The paper's grid at the digits classifier's budget; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.steps = 600  # updates per run (the classifier's default)
  config.seeds = 2  # seeds per grid cell
  config.grid = 8  # learning rates and weight decays per axis
  config.optimizers = tuple(RANGES)  # research.optim names gridded, each with its RANGES
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field."""
  harness.check_names("optimizers", config.optimizers, tuple(RANGES))
  check_positive("steps", config.steps)
  check_positive("seeds", config.seeds)
  if config.grid < 2:
    raise ConfigError(f"grid must be at least 2, got {config.grid}")


def grid_axes(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(learning rates, weight decays) of an optimizer's grid, log-spaced."""
  (lr_lo, lr_hi), (wd_lo, wd_hi) = RANGES[name]
  return np.logspace(lr_lo, lr_hi, size), np.logspace(wd_lo, wd_hi, size)


def best_decays(errors: np.ndarray, losses: np.ndarray) -> np.ndarray:
  """For each learning rate (column), the index of the best decay (row): least error, then least loss."""
  out = []
  for j in range(errors.shape[1]):
    order = np.lexsort((np.nan_to_num(losses[:, j], nan=np.inf), np.nan_to_num(errors[:, j], nan=np.inf)))
    out.append(int(order[0]))
  return np.asarray(out)


# Learning rates whose best cell is further than this (percentage points of test error) from the
# optimizer's best train too little or diverge: their "best decay" says nothing about the basin.
USABLE_MARGIN = 5.0


def usable(mean_error: np.ndarray) -> np.ndarray:
  """The learning rates (columns) whose best decay reaches within USABLE_MARGIN of the best cell."""
  column_best = np.nanmin(np.where(np.isnan(mean_error), np.inf, mean_error), axis=0)
  return column_best <= column_best.min() + USABLE_MARGIN


def slope(lrs: np.ndarray, decays: np.ndarray) -> float:
  """Least-squares slope of log10(best decay) against log10(learning rate)."""
  x, y = np.log10(lrs), np.log10(decays)
  return float(np.polyfit(x, y, 1)[0]) if len(x) > 1 else math.nan


def run_optimizer(name: str, steps: int, seeds: list[int], size: int, model_dir: str) -> dict:
  """Trains one optimizer's grid as one vmapped program; returns its error and loss grids (decay x lr)."""
  lrs, wds = grid_axes(name, size)
  config = classifier.get_config()
  config.steps = steps
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)  # short (smoke) runs: 10 % warm-up
  config.log_every = config.checkpoint_every = steps
  config.optimizer.name = name
  cells = [(wd, lr) for wd in wds for lr in lrs]
  members = Members(seeds=tuple(s for _ in cells for s in seeds),
                    hparams={"optimizer.learning_rate": tuple(float(lr) for _, lr in cells for _ in seeds),
                             "optimizer.weight_decay": tuple(float(wd) for wd, _ in cells for _ in seeds)})
  start = time.perf_counter()
  results = classifier.run(config, model_dir, members=members)
  wall = time.perf_counter() - start
  error = np.full((size, size, len(seeds)), np.nan)
  loss = np.full((size, size, len(seeds)), np.nan)
  for k, member in enumerate(results["members"]):
    cell, s = divmod(k, len(seeds))
    i, j = divmod(cell, size)
    if member.get("test_error") is not None and "diverged_at_step" not in member:
      error[i, j, s], loss[i, j, s] = 100.0 * member["test_error"], member["test_loss"]
  mean_error, mean_loss = np.nanmean(error, -1), np.nanmean(loss, -1)
  best = best_decays(mean_error, mean_loss)
  keep = usable(mean_error)
  i_best, j_best = np.unravel_index(np.nanargmin(np.where(np.isnan(mean_error), np.inf, mean_error)), mean_error.shape)
  return {"learning_rates": lrs, "weight_decays": wds, "test_error_percent": error,
          "mean_test_error_percent": mean_error, "mean_test_loss": mean_loss,
          "best_decay_per_learning_rate": wds[best], "usable_learning_rates": lrs[keep],
          "best_decay_slope": slope(lrs[keep], wds[best][keep]),
          "best_decay_spread_decades": float(np.std(np.log10(wds[best][keep]))),
          "best_test_error_percent": float(mean_error[i_best, j_best]),
          "best_cell": {"learning_rate": float(lrs[j_best]), "weight_decay": float(wds[i_best])},
          "diverged_members": int(sum("diverged_at_step" in m for m in results["members"])),
          "members": len(results["members"]), "wall_time_s": round(wall, 1)}


def claims(cells: dict) -> list[str]:
  """The paper's two claims, judged from the measured numbers."""
  lines = []
  coupled = [n for n in cells if n not in DECOUPLED]
  decoupled = [n for n in cells if n in DECOUPLED]
  if coupled and decoupled:
    worst_decoupled = max(abs(cells[n]["best_decay_slope"]) for n in decoupled)
    least_coupled = min(abs(cells[n]["best_decay_slope"]) for n in coupled)
    holds = worst_decoupled + 0.1 < least_coupled  # a clear gap, not a rounding difference
    slopes = ", ".join(f"{n} {abs(cells[n]['best_decay_slope']):.2f}" for n in cells)
    lines.append(f"- Axis-aligned region: |slope| of log10(best decay) vs log10(learning rate) is "
                 f"{slopes}; the decoupled "
                 f"forms' largest ({worst_decoupled:.2f}) is {'below' if holds else 'not below'} the coupled "
                 f"forms' smallest ({least_coupled:.2f}) by more than 0.1: the claim {'holds' if holds else 'does not hold'} "
                 f"here. (Fitted over the learning rates whose best cell is within {USABLE_MARGIN:g} points of "
                 "the optimizer's best.)")
  for ours, theirs in (("adamw_paper", "adam_l2"), ("adamw", "adam_l2"), ("sgdw", "sgd_l2")):
    if ours in cells and theirs in cells:
      a, b = cells[ours]["best_test_error_percent"], cells[theirs]["best_test_error_percent"]
      lines.append(f"- Best test error, {ours} {a:.2f}% vs {theirs} {b:.2f}%: {ours} generalises "
                   f"{'at least as well' if a <= b else 'worse'} here (one test error is "
                   f"{100.0 / 300:.2f}% of the 300 test digits).")
  return lines


def _error_cell(value: float, best: bool) -> str:
  return "—" if not math.isfinite(value) else f"{value:.1f}{'*' if best else ''}"


def markdown(cells: dict, steps: int, seeds: list[int], size: int, total_s: float) -> str:
  """The summary table and each optimizer's heatmap as numbers, with the command."""
  blocks = [f"Digits MLP classifier (experiments/classifier.py), {steps} steps of batch 64, warmup + cosine "
            f"schedule; {size} learning rates x {size} weight decays x {len(seeds)} seed(s) per optimizer, each "
            f"optimizer's grid one vmapped program ({size * size * len(seeds)} members). Test error on the 300 "
            f"held-out digits, mean over seeds; one misclassified digit is {100.0 / 300:.2f}%, and each optimizer's "
            f"best cell is the best of {size * size} on the test digits themselves, so it is optimistic and "
            f"differences of a few tenths of a percent are within the noise. Whole table: {total_s:.0f} s wall.",
            harness.table(["optimizer", "best test error %", "at (learning rate, decay)",
                           "slope of log10 best decay vs log10 lr", "spread of best decay (decades)",
                           "usable learning rates", "diverged members", "wall s"],
                          [(name, f"{cell['best_test_error_percent']:.2f}",
                            f"({cell['best_cell']['learning_rate']:.2g}, {cell['best_cell']['weight_decay']:.2g})",
                            f"{cell['best_decay_slope']:.2f}", f"{cell['best_decay_spread_decades']:.2f}",
                            f"{len(cell['usable_learning_rates'])} of {len(cell['learning_rates'])}",
                            f"{cell['diverged_members']} / {cell['members']}", f"{cell['wall_time_s']:.0f}")
                           for name, cell in cells.items()]),
            "What the paper claims, against these numbers:", "\n".join(claims(cells))]
  for name, cell in cells.items():
    lrs, wds = cell["learning_rates"], cell["weight_decays"]
    best = list(cell["best_decay_per_learning_rate"])
    blocks += [f"## {name}: mean test error % (rows: weight decay, columns: learning rate; * best decay per "
               "learning rate)",
               harness.table(["decay \\ lr", *(f"{lr:.2g}" for lr in lrs)],
                             [(f"{wd:.2g}", *(_error_cell(cell["mean_test_error_percent"][i, j], best[j] == wd)
                                             for j in range(len(lrs)))) for i, wd in enumerate(wds)])]
  return harness.document("Adam vs AdamW (Loshchilov & Hutter 2019, Figure 2 in shape) on digits", *blocks)


def figure(cells: dict) -> Figure:
  """One heatmap per optimizer: mean test error over (learning rate, weight decay), best decays marked."""
  fig = Figure(figsize=(3.6 * len(cells), 3.6), dpi=100)
  axes = np.atleast_1d(fig.subplots(1, len(cells)))
  for ax, (name, cell) in zip(axes, cells.items()):
    lrs, wds = cell["learning_rates"], cell["weight_decays"]
    grid = cell["mean_test_error_percent"]
    image = ax.imshow(np.clip(grid, 0, 20), origin="lower", aspect="auto", cmap="viridis_r")
    fig.colorbar(image, ax=ax, fraction=0.046, label="test error % (clipped at 20)")
    best = [list(wds).index(w) for w in cell["best_decay_per_learning_rate"]]
    ax.plot(range(len(lrs)), best, "r.-", lw=1, label="best decay per lr")
    ax.set_xticks(range(len(lrs)), [f"{v:.0e}" for v in lrs], rotation=90, fontsize=6)
    ax.set_yticks(range(len(wds)), [f"{v:.0e}" for v in wds], fontsize=6)
    ax.set_xlabel("learning rate", fontsize=8)
    ax.set_ylabel("weight decay", fontsize=8)
    ax.set_title(f"{name}: best {cell['best_test_error_percent']:.2f}%", fontsize=9)
    ax.legend(fontsize=6, loc="upper right")
  fig.tight_layout()
  return fig


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains every optimizer's grid and writes results.json, adamw.md and adamw.png into `outdir`."""
  check_config(config)
  seeds = list(range(config.seeds))
  start = time.perf_counter()
  cells = {}
  for name in config.optimizers:
    cells[name] = run_optimizer(name, config.steps, seeds, config.grid, os.path.join(outdir, "models", name))
    print(f"{name}: best {cells[name]['best_test_error_percent']:.2f}% at {cells[name]['best_cell']}, "
          f"slope {cells[name]['best_decay_slope']:.2f} ({cells[name]['wall_time_s']} s)", flush=True)
  total = time.perf_counter() - start
  text = markdown(cells, config.steps, seeds, config.grid, total)
  print(text)
  return harness.write_report(outdir, "adamw", {"steps": config.steps, "seeds": seeds, "grid": config.grid,
                                                "optimizers": cells}, text, figure=figure(cells), config=config,
                              wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
