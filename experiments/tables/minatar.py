"""MinAtar (Young & Tian 2019): final return of DQN, Double DQN, A2C and PPO on four games.

Every cell (algorithm x game) is one program of num_seeds vmapped seeds, each algorithm with
its experiment's "minatar" preset (PPO: experiments/ppo.py's config with the conv torso,
which every algorithm picks for MinAtar's 10x10 grids). DQN's and Double DQN's final return
is greedy (epsilon = 0) evaluation episodes at the end; A2C's and PPO's that of the training
episodes of the last 10% of updates (their stochastic policy). Young & Tian (2019) train DQN
for 5M frames with one environment and sticky actions (probability 0.1); gymnax's games have no
sticky actions, so their curves are a reference for shape, not a number to match (they are not
copied here).

Run:
  python -m experiments.tables.minatar --outdir=experiments/tables/results/minatar
  python -m experiments.tables.minatar --outdir=/tmp/minatar --config=experiments/tables/minatar.py:smoke
"""

import time

import jax
import ml_collections
import numpy as np

from experiments import a2c as a2c_experiment
from experiments import dqn as dqn_experiment
from experiments import ppo as ppo_experiment
from experiments import harness
from research.rl import a2c, dqn, experiment, ppo, rollout
from research.train import ConfigError, check_positive, cli

NAME = "minatar"
ALGORITHMS = ("DQN", "Double DQN", "A2C", "PPO")

def _smoke(config: ml_collections.ConfigDict) -> None:
  """Small enough for a test."""
  config.num_seeds = 1
  config.games = "Breakout-MinAtar"
  config.total_timesteps = 2_048  # one PPO rollout (16 environments x 128 steps), the least PPO's cell runs


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; preset "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; seed i of num_seeds uses split(key(seed), num_seeds)[i] in every program
  config.num_seeds = 3  # runs per cell
  config.games = ",".join(rollout.MINATAR)  # comma-separated gymnax MinAtar names
  config.total_timesteps = 1_000_000  # environment steps per run, every algorithm
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  check_positive("num_seeds", config.num_seeds)
  check_positive("total_timesteps", config.total_timesteps)
  for game in config.games.split(","):
    if game not in rollout.MINATAR:
      raise ConfigError(f"unknown game {game!r}; choose from: {', '.join(rollout.MINATAR)}")


def algorithm_config(config, algorithm: str, game: str):
  """(module, config) of one cell: the algorithm's MinAtar preset on `game`, this table's sizes."""
  if algorithm in ("DQN", "Double DQN"):
    module, c = dqn, dqn_experiment.get_config("minatar")
    c.double_dqn = algorithm == "Double DQN"
    c.learning_starts = min(c.learning_starts, config.total_timesteps // 10)
  elif algorithm == "A2C":
    module, c = a2c, a2c_experiment.get_config("minatar")
  else:
    module, c = ppo, ppo_experiment.get_config()
    c.update(num_envs=16, num_steps=128, hidden_size=128, learning_rate=5e-4)
  c.update(env_name=game, total_timesteps=config.total_timesteps, num_seeds=config.num_seeds, seed=config.seed)
  return module, c


def run_cell(module, c) -> np.ndarray:
  """Final return per seed of one cell (its own program)."""
  keys = jax.random.split(jax.random.key(c.seed), c.num_seeds)
  out = jax.device_get(jax.jit(jax.vmap(module.make_train(c)))(keys))
  return experiment.returns(out)[1]


def markdown(config, finals: dict, wall_time_s: float) -> str:
  games = config.games.split(",")
  table = harness.table(["algorithm"] + games,
                        [[algorithm] + [harness.pm(harness.mean_se(finals[algorithm][g]), 1) for g in games]
                         for algorithm in ALGORITHMS], align="l" + "r" * len(games))
  return harness.document(
      "MinAtar: DQN, Double DQN, A2C and PPO",
      f"{config.total_timesteps:,} environment steps per run, {config.num_seeds} seeds per cell (mean ± s.e.), one "
      "vmapped program per cell. DQN: greedy evaluation at the end; A2C and PPO: training episodes of the last 10% "
      "of updates.",
      table,
      f"Wall time (compilation included): {wall_time_s:.0f} s.")


def run(config, outdir: str) -> dict:
  """Runs every cell and writes results.json and minatar.md into outdir."""
  check_config(config)
  start = time.time()
  finals = {algorithm: {} for algorithm in ALGORITHMS}
  for game in config.games.split(","):
    for algorithm in ALGORITHMS:
      finals[algorithm][game] = run_cell(*algorithm_config(config, algorithm, game))
      print(f"{algorithm} on {game}: " + ", ".join(f"{r:.1f}" for r in finals[algorithm][game]))
  wall_time_s = time.time() - start
  metrics = {"final_return_per_seed": {a: {g: v.tolist() for g, v in per.items()} for a, per in finals.items()}}
  return harness.write_report(outdir, NAME, metrics, markdown(config, finals, wall_time_s), config=config,
                             wall_time_s=wall_time_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
