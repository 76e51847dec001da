"""What made DQN work, and how much it overestimates: two tables on CartPole-v1.

1. Mnih et al. 2015, Extended Data Table 3 in shape: DQN with and without experience replay
   and with and without a target network. "Without replay" learns from a buffer of one batch:
   the latest `batch_size` transitions, in a sliding window. "Without a target network" copies
   the online network into the target after every update (the TD target moves with every step).
2. van Hasselt et al. 2016, Figure 3 in shape: DQN's and Double DQN's value estimate of the
   start state, max_a Q(s_0, a), against the discounted return the greedy policy then obtains
   from it, at every evaluation during training.

Each cell is one program of num_seeds vmapped seeds (the cells differ in shapes or in static
switches, so they are separate programs).

Run:
  python -m experiments.tables.dqn --outdir=experiments/tables/results/dqn
  python -m experiments.tables.dqn --outdir=/tmp/dqn_table --config=experiments/tables/dqn.py:smoke
"""

import time

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import dqn as dqn_experiment
from experiments import harness
from research.rl import dqn
from research.train import check_positive, cli

NAME = "dqn"
CELLS = {  # name: (replay, target network)
    "replay + target network": (True, True),
    "replay, no target network": (True, False),
    "no replay, target network": (False, True),
    "no replay, no target network": (False, False),
}


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Small enough for a test."""
  config.num_seeds = 2
  config.total_timesteps = 2_000
  config.num_evaluations = 2
  config.eval_episodes = 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; preset "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; seed i of num_seeds uses split(key(seed), num_seeds)[i] in every program
  config.num_seeds = 5  # runs per cell
  config.total_timesteps = 100_000  # environment steps per run; the rest of DQN's config is experiments/dqn.py's
  config.num_evaluations = 10  # greedy evaluations per run
  config.eval_episodes = 8  # greedy episodes per evaluation
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  for name in ("num_seeds", "total_timesteps", "num_evaluations", "eval_episodes"):
    check_positive(name, config[name])


def dqn_config(config, replay: bool = True, target: bool = True, double: bool = False):
  """experiments/dqn.py's default config with this table's sizes and the cell's switches."""
  c = dqn_experiment.get_config()
  c.update(total_timesteps=config.total_timesteps, num_evaluations=config.num_evaluations,
           eval_episodes=config.eval_episodes, num_seeds=config.num_seeds, seed=config.seed, double_dqn=double)
  c.learning_starts = min(c.learning_starts, config.total_timesteps // 10)
  if not replay:
    c.buffer_size = c.batch_size
  if not target:
    c.target_update_period, c.tau = 1, 1.0
  return c


def train(c) -> dqn.TrainOutput:
  keys = jax.random.split(jax.random.key(c.seed), c.num_seeds)
  return jax.device_get(jax.jit(jax.vmap(dqn.make_train(c)))(keys))


def results(config) -> dict:
  """Per cell: greedy returns (seeds, evaluations); per algorithm: value estimates and discounted returns."""
  out = {"ablation": {}, "overestimation": {}}
  for name, (replay, target) in CELLS.items():
    run = train(dqn_config(config, replay, target))
    out["ablation"][name] = np.asarray(run.evaluation.episode_return).mean(-1)  # (seeds, E)
    if replay and target:
      out["steps"] = np.asarray(run.evaluation.env_steps[0])
      out["overestimation"]["DQN"] = run.evaluation
  out["overestimation"]["Double DQN"] = train(dqn_config(config, double=True)).evaluation
  return out


def plot(out: dict) -> Figure:
  fig = Figure(figsize=(11, 4), dpi=100)
  left, right = fig.subplots(1, 2)
  steps = out["steps"]
  for name, returns in out["ablation"].items():
    left.plot(steps, returns.mean(0), marker="o", markersize=3, label=name)
  left.set(xlabel="environment steps", ylabel="greedy return", title="CartPole-v1: replay and target network")
  left.legend(fontsize=8)
  for (name, evaluation), color in zip(out["overestimation"].items(), ("C0", "C3")):
    value = np.asarray(evaluation.initial_value).mean((0, 2))
    actual = np.asarray(evaluation.discounted_return).mean((0, 2))
    right.plot(steps, value, color=color, label=f"{name}: estimate max_a Q(s0, a)")
    right.plot(steps, actual, color=color, linestyle="--", label=f"{name}: discounted return obtained")
  right.set(xlabel="environment steps", ylabel="value of the start state", title="Overestimation")
  right.legend(fontsize=8)
  fig.tight_layout()
  return fig


def markdown(config, out: dict, wall_time_s: float) -> str:
  ablation = harness.table(
      ["DQN variant", "final greedy return", "best evaluation"],
      [(name, harness.pm(harness.mean_se(returns[:, -1]), 1), harness.pm(harness.mean_se(returns.max(-1)), 1))
       for name, returns in out["ablation"].items()], align="lrr")
  rows = []
  for name, evaluation in out["overestimation"].items():
    value = np.asarray(evaluation.initial_value).mean(-1)  # (seeds, E)
    actual = np.asarray(evaluation.discounted_return).mean(-1)
    rows.append((name, harness.pm(harness.mean_se(value.mean(-1)), 1), harness.pm(harness.mean_se(actual.mean(-1)), 1),
                 harness.pm(harness.mean_se((value - actual).mean(-1)), 1),
                 harness.pm(harness.mean_se(value[:, -1] - actual[:, -1]), 1)))
  over = harness.table(["algorithm", "estimate max_a Q(s0, a)", "discounted return obtained",
                        "overestimation (all evaluations)", "overestimation (last)"], rows, align="lrrrr")
  return harness.document(
      "What made DQN work, and its overestimation (CartPole-v1)",
      f"{config.num_seeds} seeds per row, {config.total_timesteps:,} environment steps each, experiments/dqn.py's "
      f"defaults otherwise; returns are greedy (epsilon = 0), {config.eval_episodes} episodes per evaluation, "
      "mean ± standard error over seeds.",
      "## Replay and target network (Mnih et al. 2015, Extended Data Table 3 in shape)",
      '"No replay": a buffer of one batch (the latest transitions). "No target network": the target copies '
      "the online network after every update.",
      ablation,
      "## Overestimation (van Hasselt et al. 2016, Figure 3 in shape)",
      "The start state's value estimate against the discounted return (gamma 0.99) the greedy policy "
      f"obtained from it, averaged over the {config.num_evaluations} evaluations of training and at the last.",
      over,
      f"Wall time (compilation included): {wall_time_s:.0f} s.",
      f"![curves]({NAME}.png)")


def run(config, outdir: str) -> dict:
  """Runs every cell and writes results.json, dqn.md and dqn.png into outdir."""
  check_config(config)
  start = time.time()
  out = results(config)
  wall_time_s = time.time() - start
  metrics = {
      "env_steps": out["steps"].tolist(),
      "greedy_return_per_seed": {k: v.tolist() for k, v in out["ablation"].items()},
      "start_value_estimate": {k: np.asarray(e.initial_value).mean(-1).tolist()
                               for k, e in out["overestimation"].items()},
      "start_discounted_return": {k: np.asarray(e.discounted_return).mean(-1).tolist()
                                  for k, e in out["overestimation"].items()},
  }
  return harness.write_report(outdir, NAME, metrics, markdown(config, out, wall_time_s), figure=plot(out),
                             config=config, wall_time_s=wall_time_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
