"""TAMER with a simulated trainer vs DQN on the environment's reward (Knox & Stone 2009, in shape).

For CartPole-v1 and cliff walking: greedy-evaluation learning curves of TAMER (which sees only
the trainer's +1/-1 signals) under a grid of trainers (noise: the share of wrong signals;
sparsity: the share of steps that get a signal), and of DQN trained on the reward, over the
same environment steps. Every trainer and seed of one environment is a member of one vmapped
TAMER program (error_rate and feedback_prob are traced); DQN is one program per environment.
On cliff walking a row with the delay spread over 1..3 steps shows what blurred credit does.

Run:
  python -m experiments.tables.tamer --outdir=experiments/tables/results/tamer
  python -m experiments.tables.tamer --outdir=/tmp/tamer_table --config=experiments/tables/tamer.py:smoke
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import dqn as dqn_experiment
from experiments import harness
from experiments import tamer as tamer_experiment
from research.rl import dqn, tamer
from research.train import ConfigError, check_positive, cli

NAME = "tamer"


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Small enough for a test."""
  config.num_seeds = 2
  config.trainers = ((0.0, 1.0), (0.3, 0.3))
  config.cartpole_steps = 1_000
  config.cliff_steps = 1_000
  config.num_evaluations = 2
  config.eval_episodes = 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; preset "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; seed i of num_seeds uses split(key(seed), num_seeds)[i] in every program
  config.num_seeds = 5  # runs per cell
  config.trainers = ((0.0, 1.0), (0.1, 1.0), (0.2, 1.0), (0.3, 1.0), (0.0, 0.3), (0.0, 0.1), (0.2, 0.3))
  # ^ (error_rate, feedback_prob) of each simulated trainer
  config.cartpole_steps = 10_000  # environment steps of every CartPole run
  config.cliff_steps = 5_000  # environment steps of every cliff-walking run
  config.num_evaluations = 10  # greedy evaluations per run (the curves' points)
  config.eval_episodes = 8  # greedy episodes per evaluation
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  """Raises ConfigError on the first bad field."""
  for name in ("num_seeds", "cartpole_steps", "cliff_steps", "num_evaluations", "eval_episodes"):
    check_positive(name, config[name])
  if not config.trainers:
    raise ConfigError("trainers must list at least one (error_rate, feedback_prob) pair")
  for pair in config.trainers:
    if len(pair) != 2 or not all(0.0 <= v <= 1.0 for v in pair):
      raise ConfigError(f"each trainer is (error_rate, feedback_prob), both in [0, 1]; got {pair}")


def _tamer_config(config, env_name: str, steps: int, delay: tuple[int, int] | None = None):
  c = tamer_experiment.get_config("tabular" if env_name == "cliff_walking" else "")
  c.update(total_timesteps=steps, num_evaluations=config.num_evaluations, eval_episodes=config.eval_episodes,
           num_seeds=config.num_seeds, seed=config.seed)
  if delay is not None:
    c.delay_min, c.delay_max = delay
  return c


def _dqn_config(config, env_name: str, steps: int):
  c = dqn_experiment.get_config()
  c.update(env_name=env_name, total_timesteps=steps, num_evaluations=config.num_evaluations,
           eval_episodes=config.eval_episodes, num_seeds=config.num_seeds, seed=config.seed,
           learning_starts=min(c.learning_starts, steps // 10), exploration_fraction=0.5)
  if env_name == "cliff_walking":
    c.gamma = 0.99
  return c


def _keys(config):
  return jax.random.split(jax.random.key(config.seed), config.num_seeds)


def tamer_curves(config, env_name: str, steps: int, delay=None) -> tuple[np.ndarray, np.ndarray, dict]:
  """(env steps (E,), greedy returns (trainers, seeds, E), the TAMER config) of one vmapped program."""
  c = _tamer_config(config, env_name, steps, delay)
  trainers = np.asarray(config.trainers, np.float32)  # (T, 2)
  hparams = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(trainers),)), tamer.default_hparams(c))
  hparams = hparams._replace(error_rate=jnp.asarray(trainers[:, 0]), feedback_prob=jnp.asarray(trainers[:, 1]))
  program = jax.jit(jax.vmap(jax.vmap(tamer.make_train(c), in_axes=(0, None)), in_axes=(None, 0)))
  out = program(_keys(c), hparams)
  returns = np.asarray(out.evaluation.episode_return).mean(-1)  # (T, seeds, E)
  return np.asarray(out.evaluation.env_steps[0, 0]), returns, c


def dqn_curves(config, env_name: str, steps: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """(env steps (E,), greedy returns (seeds, E), the DQN config)."""
  c = _dqn_config(config, env_name, steps)
  out = jax.jit(jax.vmap(dqn.make_train(c)))(_keys(c))
  return np.asarray(out.evaluation.env_steps[0]), np.asarray(out.evaluation.episode_return).mean(-1), c


def _label(error_rate: float, feedback_prob: float) -> str:
  return f"TAMER, {error_rate:.0%} wrong, {feedback_prob:.0%} of steps"


def results(config) -> dict:
  """Every curve: {env: {"steps": [...], "curves": {label: (seeds, E) returns}}}."""
  out = {}
  for env_name, steps in (("CartPole-v1", config.cartpole_steps), ("cliff_walking", config.cliff_steps)):
    env_steps, returns, tamer_config = tamer_curves(config, env_name, steps)
    curves = {_label(*pair): r for pair, r in zip(config.trainers, returns)}
    if env_name == "cliff_walking":
      _, spread, _ = tamer_curves(config, env_name, steps, delay=(1, 3))
      curves[_label(*config.trainers[0]) + ", delay 1..3"] = spread[0]
    _, dqn_returns, dqn_config = dqn_curves(config, env_name, steps)
    curves["DQN on the reward"] = dqn_returns
    out[env_name] = {"steps": env_steps, "curves": curves,
                     "delay": (tamer_config.delay_min, tamer_config.delay_max),
                     "dqn_config": {k: dqn_config[k] for k in dqn.CONFIG_FIELDS}}
  return out


def plot(curves: dict) -> Figure:
  fig = Figure(figsize=(11, 4), dpi=100)
  for ax, (env_name, result) in zip(fig.subplots(1, 2), curves.items()):
    for label, returns in result["curves"].items():
      style = "k--" if label.startswith("DQN") else "-"
      ax.plot(result["steps"], returns.mean(0), style, marker="o", markersize=3, label=label)
    ax.set(xlabel="environment steps", ylabel="greedy return (environment reward)", title=env_name)
    if env_name == "cliff_walking":
      ax.set_yscale("symlog", linthresh=100)  # -13 (optimal) to thousands below (walking into the cliff)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def markdown(config, curves: dict, wall_time_s: float) -> str:
  blocks = []
  for env_name, result in curves.items():
    delay = result["delay"]
    blocks += [
        f"## {env_name}",
        f"Greedy return after each number of environment steps (mean ± s.e. over {config.num_seeds} seeds, "
        f"{config.eval_episodes} episodes each); the trainer's signals arrive {delay[0]}..{delay[1]} steps late.",
        harness.table(["learner"] + [f"{s:,}" for s in result["steps"]],
                      [[label] + [harness.pm(harness.mean_se(returns[:, e]), 1) for e in range(returns.shape[1])]
                       for label, returns in result["curves"].items()], align="l" + "r" * len(result["steps"]))]
  return harness.document(
      "TAMER with a simulated trainer vs DQN",
      "TAMER (Knox & Stone 2009) learns a model H^(s, a) of a trainer's +1/-1 signals and acts greedily on it; it "
      "never sees the reward. The trainer is simulated: it approves the best actions of a hidden action-value "
      "function (CartPole: a linear controller that balances the pole; cliff walking: Q* from value iteration), "
      "answers a share of the steps (sparsity), gets a share of its signals wrong (noise), and answers late; TAMER "
      "credits each signal uniformly over the steps of its assumed delay window. DQN learns from the environment's "
      "reward over the same steps (experiments/dqn.py's config, learning from a tenth of the run, epsilon falling "
      "over half of it).",
      *blocks,
      f"Wall time (compilation included): {wall_time_s:.0f} s.",
      f"![learning curves]({NAME}.png)")


def run(config, outdir: str) -> dict:
  """Runs every program and writes results.json, tamer.md and tamer.png into outdir."""
  check_config(config)
  start = time.time()
  curves = results(config)
  wall_time_s = time.time() - start
  metrics = {env_name: {"env_steps": r["steps"].tolist(), "delay": r["delay"], "dqn_config": r["dqn_config"],
                        "greedy_return_mean": {k: v.mean(0).tolist() for k, v in r["curves"].items()},
                        "greedy_return_per_seed": {k: v.tolist() for k, v in r["curves"].items()}}
             for env_name, r in curves.items()}
  return harness.write_report(outdir, NAME, metrics, markdown(config, curves, wall_time_s), figure=plot(curves),
                             config=config, wall_time_s=wall_time_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
