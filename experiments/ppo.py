"""PPO (or REINFORCE with a baseline) on a gymnax environment, seeds vmapped in one jitted program.

Run:
  python -m experiments.ppo --workdir=/tmp/ppo
  python -m experiments.ppo --workdir=/tmp/ppo --config=experiments/ppo.py:smoke
  python -m experiments.ppo --workdir=/tmp/ppo_acrobot --config.env_name=Acrobot-v1
"""

import os
import time

import jax
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from research.rl import ppo  # pylint: disable=wrong-import-position
from research.train import NonFiniteLossError, check_positive, cli, save_pytree, write_results  # pylint: disable=wrong-import-position

# Share of the updates averaged into the initial and final returns; half of it is the plot's smoothing window.
FINAL_FRACTION = 0.1


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; preset "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; seed i of num_seeds uses split(key(seed), num_seeds)[i]
  config.env_name = "CartPole-v1"  # gymnax environment: CartPole-v1, Acrobot-v1 or MountainCar-v0
  config.algorithm = "ppo"  # "ppo" or "reinforce" (REINFORCE with a value baseline)
  config.num_seeds = 4  # independent runs, vmapped in one program
  config.num_envs = 4  # parallel environments per run
  config.num_steps = 128  # steps per environment per rollout
  config.total_timesteps = 500_000  # environment steps per run (summed over envs)
  config.update_epochs = 4  # PPO passes over each rollout (reinforce: unused, one step)
  config.num_minibatches = 4  # PPO minibatches per epoch (reinforce: unused, whole rollout)
  config.gamma = 0.99  # discount factor
  config.gae_lambda = 0.95  # GAE lambda (reinforce: unused, lambda = 1)
  config.clip_eps = 0.2  # PPO ratio clipping range (and value clipping range)
  config.clip_value_loss = True  # PPO: clip the value update around the rollout's values
  config.ent_coef = 0.01  # weight of the entropy bonus
  config.vf_coef = 0.5  # weight of the value loss
  config.max_grad_norm = 0.5  # clip gradients to this global norm
  config.learning_rate = 2.5e-4  # Adam learning rate (initial, if annealed)
  config.anneal_lr = True  # anneal the learning rate linearly to 0 over the updates
  config.hidden_size = 64  # width of the two tanh hidden layers of actor and critic
  if preset == "smoke":
    # Short enough for a test (seconds once compiled), long enough that CartPole clearly learns.
    config.num_seeds = 2
    config.total_timesteps = 50_000
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; choose one of: smoke")
  return config


def _json_floats(values: np.ndarray) -> list[float | None]:
  return [float(v) if np.isfinite(v) else None for v in values]


def _check_finite(metrics: ppo.UpdateMetrics) -> None:
  """Raises NonFiniteLossError naming the first seed and update whose loss is not finite."""
  bad = ~np.isfinite(np.asarray(metrics.total_loss))  # (seeds, updates)
  if bad.any():
    seed, update = np.argwhere(bad)[0]
    raise NonFiniteLossError(f"non-finite loss in seed {seed} at update {update} "
                             f"(env step {int(metrics.env_steps[seed, update])}); nothing was written")


def _smoothed(metrics: ppo.UpdateMetrics, window: int) -> np.ndarray:
  """Episode-weighted moving mean of the per-update returns: (seeds, updates) -> same, NaN before any episode."""
  episodes = np.asarray(metrics.episodes, np.float64)
  returns = np.where(episodes > 0, np.asarray(metrics.episode_return, np.float64) * episodes, 0.0)
  kernel = np.ones(window)
  total = np.stack([np.convolve(r, kernel)[:r.shape[0]] for r in returns])
  count = np.stack([np.convolve(e, kernel)[:e.shape[0]] for e in episodes])
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _plot(path: str, metrics: ppo.UpdateMetrics, config) -> None:
  steps = np.asarray(metrics.env_steps[0])
  window = max(1, int(round(steps.shape[0] * FINAL_FRACTION / 2)))
  curves = _smoothed(metrics, window)  # (seeds, updates)
  fig, ax = plt.subplots(figsize=(6, 4))
  with np.errstate(all="ignore"):
    ax.fill_between(steps, np.nanmin(curves, 0), np.nanmax(curves, 0), alpha=0.3, label="min / max over seeds")
    ax.plot(steps, np.nanmean(curves, 0), label=f"mean of {curves.shape[0]} seeds")
  ax.set_xlabel("environment steps")
  ax.set_ylabel(f"episodic return ({window}-update moving mean)")
  ax.set_title(f"{config.algorithm} on {config.env_name}")
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(config, workdir: str) -> dict:
  """Trains config.num_seeds seeds as one vmapped program and writes the run's outputs.

  Writes into workdir: results.json (final and initial return per seed, timings, config,
  versions, wall time), returns.png (return vs environment steps, mean and range over seeds)
  and params/ (an orbax checkpoint of the final parameters, leaves (num_seeds, ...)).

  Args:
    config: the experiment config (see get_config); validated before anything is compiled.
    workdir: output directory (created if missing).

  Returns:
    The dict written to results.json.

  Raises:
    ConfigError: on a bad config, before anything is compiled or written.
    NonFiniteLossError: if a loss became NaN or infinite; nothing is written then.
  """
  start = time.perf_counter()
  check_positive("num_seeds", config.num_seeds)
  train = ppo.make_train(config)  # validates the rest before anything is traced
  keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)

  compiled = jax.jit(jax.vmap(train)).lower(keys).compile()
  compile_time = time.perf_counter() - start
  print(f"compiled {config.algorithm} on {config.env_name} x {config.num_seeds} seeds in {compile_time:.1f}s")

  run_start = time.perf_counter()
  out = jax.block_until_ready(compiled(keys))
  run_time = time.perf_counter() - run_start
  steps = int(out.metrics.env_steps[0, -1])
  steps_per_s = config.num_seeds * steps / run_time
  print(f"trained {ppo.num_updates(config)} updates x {config.num_seeds} seeds ({steps} env steps each) "
        f"in {run_time:.1f}s: {steps_per_s:,.0f} env steps/s over all seeds")

  _check_finite(out.metrics)
  initial = ppo.initial_return(out.metrics, FINAL_FRACTION)
  final = ppo.final_return(out.metrics, FINAL_FRACTION)
  print("initial return per seed: " + ", ".join(f"{r:.1f}" for r in initial))
  print("final return per seed: " + ", ".join(f"{r:.1f}" for r in final))
  os.makedirs(workdir, exist_ok=True)
  _plot(os.path.join(workdir, "returns.png"), out.metrics, config)
  save_pytree(os.path.join(workdir, "params"), jax.device_get(out.params))
  metrics = {
      # None (JSON null) for a seed that completed no episode in the final updates.
      "final_return_per_seed": _json_floats(final),
      # The same over the first FINAL_FRACTION of training, which starts from a near-uniform policy.
      "initial_return_per_seed": _json_floats(initial),
      "final_return_mean": float(np.nanmean(final)) if np.isfinite(final).any() else None,
      "env_steps_per_seed": steps,
      "num_updates": ppo.num_updates(config),
      "compile_time_s": round(compile_time, 3),
      "train_time_s": round(run_time, 3),
      "env_steps_per_s": round(steps_per_s, 1),
  }
  return write_results(workdir, metrics, config=config, wall_time_s=time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run)
