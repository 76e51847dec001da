"""PPO (or REINFORCE with a baseline) on a gymnax environment, seeds vmapped in one jitted program.

Run:
  python -m experiments.ppo --workdir=/tmp/ppo
  python -m experiments.ppo --workdir=/tmp/ppo --config=experiments/ppo.py:smoke
  python -m experiments.ppo --workdir=/tmp/ppo_acrobot --config.env_name=Acrobot-v1
  python -m experiments.sweep --config=experiments/ppo.py --workdir=/tmp/ppo_clip --seeds=2 \
      --vary=clip_eps=0.1,0.2,0.3 --metric=final_return_mean

A sweep (experiments/sweep.py, `run(..., members=...)`) trains every member, each with its own
config.num_seeds inner seeds, as one jitted program: the vmap over inner seeds under a vmap
over members. Only the fields of research.rl.ppo.HParams can vary.
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from research.rl import ppo  # pylint: disable=wrong-import-position
from research.train import (Members, NonFiniteLossError, check_positive, cli, save_pytree,  # pylint: disable=wrong-import-position
                            write_results)
from research import train as train_lib  # pylint: disable=wrong-import-position

# Share of the updates averaged into the initial and final returns; half of it is the plot's smoothing window.
FINAL_FRACTION = 0.1


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Short enough for a test (seconds once compiled), long enough that CartPole clearly learns."""
  config.num_seeds = 2
  config.total_timesteps = 50_000


PRESETS = {"smoke": _smoke}


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
  return cli.apply_presets(config, preset, PRESETS)


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


def _return_metrics(initial: np.ndarray, final: np.ndarray) -> dict:
  """One run's returns for results.json: initial and final per inner seed, and the final mean."""
  return {
      # None (JSON null) for a seed that completed no episode in the final updates.
      "final_return_per_seed": _json_floats(final),
      # The same over the first FINAL_FRACTION of training, which starts from a near-uniform policy.
      "initial_return_per_seed": _json_floats(initial),
      "final_return_mean": float(np.nanmean(final)) if np.isfinite(final).any() else None,
  }


def _values_label(values: dict[str, float]) -> str:
  return ", ".join(f"{name}={value:g}" for name, value in values.items()) or "every member"


def _plot_members(path: str, metrics: ppo.UpdateMetrics, members: Members, config) -> None:
  """One mean curve per setting, over the inner seeds of all its members (seeds of the sweep)."""
  steps = np.asarray(metrics.env_steps[0, 0])
  window = max(1, int(round(steps.shape[0] * FINAL_FRACTION / 2)))
  settings: dict[tuple, list[int]] = {}
  for i in range(members.count):
    settings.setdefault(tuple(members.values(i).items()), []).append(i)
  fig, ax = plt.subplots(figsize=(6, 4))
  for values, indices in settings.items():
    runs = jax.tree.map(lambda x: np.asarray(x)[indices].reshape((-1, x.shape[-1])), metrics)
    curves = _smoothed(runs, window)  # (members of the setting * num_seeds, updates)
    with np.errstate(all="ignore"):
      ax.plot(steps, np.nanmean(curves, 0), label=f"{_values_label(dict(values))} ({curves.shape[0]} runs)")
  ax.set_xlabel("environment steps")
  ax.set_ylabel(f"episodic return ({window}-update moving mean)")
  ax.set_title(f"{config.algorithm} on {config.env_name}: {members.count} members x {config.num_seeds} seeds")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def member_configs(config, members: Members) -> list:
  """Each member's config: `config` with that member's seed and values (research.rl.ppo.HParams's fields),
  validated as a single run's; ConfigError on another field, a wrong number of values or a bad value."""
  return train_lib.member_configs(config, members, sorted(ppo.HParams._fields), ppo.check_config)


def _timing_metrics(config, steps: int, compile_time: float, run_time: float, steps_per_s: float) -> dict:
  """The run-wide fields of results.json: environment steps, updates and timings."""
  return {"env_steps_per_seed": steps, "num_updates": ppo.num_updates(config),
          "compile_time_s": round(compile_time, 3), "train_time_s": round(run_time, 3),
          "env_steps_per_s": round(steps_per_s, 1)}


def _run_members(config, workdir: str, members: Members, start: float) -> dict:
  """A sweep: every member's num_seeds runs in one jitted program (see `run`)."""
  configs = member_configs(config, members)
  check_positive("num_seeds", config.num_seeds)
  train = ppo.make_train(configs[0])  # the program; each member brings its own keys and hparams
  keys = jnp.stack([jax.random.split(jax.random.key(c.seed), c.num_seeds) for c in configs])  # (members, seeds)
  hparams = jax.tree.map(lambda *xs: jnp.stack(xs), *[ppo.default_hparams(c) for c in configs])  # (members,)
  program = jax.jit(jax.vmap(jax.vmap(train, in_axes=(0, None))))

  compiled = program.lower(keys, hparams).compile()
  compile_time = time.perf_counter() - start
  runs = members.count * config.num_seeds
  print(f"compiled {config.algorithm} on {config.env_name} x {members.count} members x {config.num_seeds} seeds "
        f"in {compile_time:.1f}s")

  run_start = time.perf_counter()
  out = jax.block_until_ready(compiled(keys, hparams))
  run_time = time.perf_counter() - run_start
  steps = int(out.metrics.env_steps[0, 0, -1])
  steps_per_s = runs * steps / run_time
  print(f"trained {ppo.num_updates(config)} updates x {runs} runs ({steps} env steps each) "
        f"in {run_time:.1f}s: {steps_per_s:,.0f} env steps/s over all runs")

  total_loss = np.asarray(out.metrics.total_loss)  # (members, seeds, updates)
  initial = ppo.initial_return(out.metrics, FINAL_FRACTION)  # (members, seeds)
  final = ppo.final_return(out.metrics, FINAL_FRACTION)
  results = []
  for i, seed in enumerate(members.seeds):
    member = {"seed": int(seed), "values": members.values(i)}
    bad_updates = np.flatnonzero(~np.isfinite(total_loss[i]).all(0))
    if len(bad_updates):
      # As the loop reports a diverged member: the first update (1-based) whose loss is not finite in some seed.
      member.update(train_loss=None, diverged_at_step=int(bad_updates[0]) + 1)
      print(f"member {i} (seed {seed}, {_values_label(members.values(i))}): non-finite loss at update "
            f"{member['diverged_at_step']}")
    else:
      # The final update's loss (mean over its gradient steps), averaged over the inner seeds.
      member.update(train_loss=float(total_loss[i, :, -1].mean()), **_return_metrics(initial[i], final[i]))
      print(f"member {i} (seed {seed}, {_values_label(members.values(i))}): final return per seed "
            + ", ".join(f"{r:.1f}" for r in final[i]))
    results.append(member)
  if all("diverged_at_step" in m for m in results):
    raise NonFiniteLossError(f"every member's loss became non-finite (member 0 at update "
                             f"{results[0]['diverged_at_step']}); nothing was written")

  os.makedirs(workdir, exist_ok=True)
  _plot_members(os.path.join(workdir, "returns.png"), out.metrics, members, config)
  save_pytree(os.path.join(workdir, "params"), jax.device_get(out.params))
  metrics = {
      "members": results,
      **_timing_metrics(config, steps, compile_time, run_time, steps_per_s),
  }
  return write_results(workdir, metrics, config=config, wall_time_s=time.perf_counter() - start)


def run(config, workdir: str, members: Members | None = None) -> dict:
  """Trains config.num_seeds seeds as one vmapped program and writes the run's outputs.

  Writes into workdir: results.json (final and initial return per seed, timings, config,
  versions, wall time), returns.png (return vs environment steps, mean and range over seeds)
  and params/ (an orbax checkpoint of the final parameters, leaves (num_seeds, ...)).

  With `members` (a sweep, experiments/sweep.py), member i is the run with config.seed =
  seeds[i] and its values of the HParams fields, each with its own num_seeds inner seeds; all
  members train in one jitted program (a vmap over members of the vmap over seeds).
  results.json then lists `members` (seed, values, train_loss: the final update's loss averaged
  over the inner seeds, and the returns above), returns.png draws one mean curve per setting
  and params/ has leaves (members, num_seeds, ...). A member whose loss turns non-finite is
  reported with `diverged_at_step` (an update, 1-based) and the others finish.

  Args:
    config: the experiment config (see get_config); validated before anything is compiled.
    workdir: output directory (created if missing).
    members: research.train.Members: seeds and {HParams field: one value per member}, or None.

  Returns:
    The dict written to results.json.

  Raises:
    ConfigError: on a bad config or sweep, before anything is compiled or written.
    NonFiniteLossError: if a loss became NaN or infinite (in a sweep: in every member); nothing
      is written then.
  """
  start = time.perf_counter()
  if members is not None:
    return _run_members(config, workdir, members, start)
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
      **_return_metrics(initial, final),
      **_timing_metrics(config, steps, compile_time, run_time, steps_per_s),
  }
  return write_results(workdir, metrics, config=config, wall_time_s=time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run)
