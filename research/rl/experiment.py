"""A deep RL experiment's run: every seed (and a sweep's every member) as one jitted program, and its files.

experiments/ppo.py, a2c.py and dqn.py are a config each and one call:

    def run(config, workdir, members=None):
      return experiment.run(ppo, config, workdir, members, name=config.algorithm)

`algorithm` is a module with the scan convention of research/rl: `check_config(config)`,
`make_train(config) -> train(key, hparams=None)` returning an output with `params` and
per-update `metrics` (env_steps, episodes, episode_return, total_loss, ...), `HParams` (the
traced fields), `default_hparams(config)` and `num_updates(config)`. An output with an
`evaluation` (DQN's greedy episodes, research.rl.dqn.Evaluation) reports those as the final
returns; otherwise the final return is that of the training episodes in the last
FINAL_FRACTION of updates.

An algorithm with `make_chunks(config)` (research.rl.ppo, a2c, dqn) runs a single run's updates, or
a sweep's members', a chunk at a time (config.updates_per_chunk): a progress line after each
chunk, a checkpoint every config.checkpoint_every updates, a stop at the next chunk's end on
SIGINT/SIGTERM, and a rerun of the same command that resumes from the newest checkpoint to the
same results, bit for bit.
"""

import json
import os
import time
import warnings
from types import ModuleType

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from research.checks import ConfigError, check_positive  # pylint: disable=wrong-import-position
from research.rl import config as rl_config  # pylint: disable=wrong-import-position
from research.rl import rollout  # pylint: disable=wrong-import-position
from research import train as train_lib  # pylint: disable=wrong-import-position
from research.train import (Checkpointer, Members, NonFiniteLossError,  # pylint: disable=wrong-import-position
                            save_pytree, schedule, write_results)
from research.train.config import changed_fields, check_workdir  # pylint: disable=wrong-import-position

# Share of the updates averaged into the initial and final returns; half of it is the plot's smoothing window.
FINAL_FRACTION = 0.1


def _json_floats(values: np.ndarray) -> list[float | None]:
  return [float(v) if np.isfinite(v) else None for v in values]


def _check_finite(metrics) -> None:
  """Raises NonFiniteLossError naming the first seed and update whose loss is not finite."""
  bad = ~np.isfinite(np.asarray(metrics.total_loss))  # (seeds, updates)
  if bad.any():
    seed, update = np.argwhere(bad)[0]
    raise NonFiniteLossError(f"non-finite loss in seed {seed} at update {update + 1} "
                             f"(env step {int(metrics.env_steps[seed, update])}); nothing was written")


def smoothed(metrics, window: int) -> np.ndarray:
  """Episode-weighted moving mean of the per-update returns: (runs, updates) -> same, NaN before any episode."""
  episodes = np.asarray(metrics.episodes, np.float64)
  returns = np.where(episodes > 0, np.asarray(metrics.episode_return, np.float64) * episodes, 0.0)
  kernel = np.ones(window)
  total = np.stack([np.convolve(r, kernel)[:r.shape[0]] for r in returns])
  count = np.stack([np.convolve(e, kernel)[:e.shape[0]] for e in episodes])
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def returns(out, fraction: float = FINAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
  """(initial, final) return per run, each (...): training episodes, or greedy evaluation episodes at the end.

  Args:
    out: a train output with leaves (..., num_updates) (and (..., num_evaluations, episodes)).
    fraction: the share of the first and last updates whose training episodes are averaged.
  """
  initial = rollout.initial_return(out.metrics, fraction)
  evaluation = getattr(out, "evaluation", None)
  if evaluation is None:
    return initial, rollout.final_return(out.metrics, fraction)
  return initial, np.asarray(evaluation.episode_return, np.float64)[..., -1, :].mean(-1)


def _plot_curves(ax, steps: np.ndarray, curves: np.ndarray, label: str, band: bool) -> None:
  # Updates before any episode ended are NaN in every run: left out of the curve, silently.
  with warnings.catch_warnings(), np.errstate(all="ignore"):
    warnings.simplefilter("ignore", RuntimeWarning)
    if band:
      ax.fill_between(steps, np.nanmin(curves, 0), np.nanmax(curves, 0), alpha=0.3,
                      label="min / max over seeds")
    ax.plot(steps, np.nanmean(curves, 0), label=label)


def _plot(path: str, out, title: str) -> None:
  """Return vs environment steps: the mean and range over seeds (leaves (seeds, updates))."""
  metrics = out.metrics
  steps = np.asarray(metrics.env_steps[0])
  window = max(1, int(round(steps.shape[0] * FINAL_FRACTION / 2)))
  curves = smoothed(metrics, window)  # (seeds, updates)
  fig, ax = plt.subplots(figsize=(6, 4))
  _plot_curves(ax, steps, curves, f"training episodes, mean of {curves.shape[0]} seeds", band=True)
  evaluation = getattr(out, "evaluation", None)
  if evaluation is not None:
    greedy = np.asarray(evaluation.episode_return).mean(-1)  # (seeds, evaluations)
    ax.errorbar(np.asarray(evaluation.env_steps[0]), greedy.mean(0),
                yerr=[greedy.mean(0) - greedy.min(0), greedy.max(0) - greedy.mean(0)], fmt="o-", capsize=3,
                label="greedy evaluation: mean, min / max over seeds")
  ax.set_xlabel("environment steps")
  ax.set_ylabel(f"episodic return ({window}-update moving mean)")
  ax.set_title(title)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


MEMBER_METRICS = ("final_return_mean",)  # the scalar metrics of a sweep's member (`_return_metrics`)


def _return_metrics(initial: np.ndarray, final: np.ndarray) -> dict:
  """One run's returns for results.json: initial and final per inner seed, and the final mean."""
  return {
      # None (JSON null) for a seed that completed no episode in the final updates.
      "final_return_per_seed": _json_floats(final),
      # The training episodes' return over the first FINAL_FRACTION of training (an untrained policy).
      "initial_return_per_seed": _json_floats(initial),
      "final_return_mean": float(np.nanmean(final)) if np.isfinite(final).any() else None,
  }


def _values_label(values: dict[str, float]) -> str:
  return ", ".join(f"{name}={value:g}" for name, value in values.items()) or "every member"


def _plot_members(path: str, metrics, members: Members, title: str) -> None:
  """One mean curve per setting, over the inner seeds of all its members (seeds of the sweep)."""
  steps = np.asarray(metrics.env_steps[0, 0])
  window = max(1, int(round(steps.shape[0] * FINAL_FRACTION / 2)))
  settings: dict[tuple, list[int]] = {}
  for i in range(members.count):
    settings.setdefault(tuple(members.values(i).items()), []).append(i)
  fig, ax = plt.subplots(figsize=(6, 4))
  for values, indices in settings.items():
    runs = jax.tree.map(lambda x: np.asarray(x)[indices].reshape((-1, x.shape[-1])), metrics)
    curves = smoothed(runs, window)  # (members of the setting * num_seeds, updates)
    _plot_curves(ax, steps, curves, f"{_values_label(dict(values))} ({curves.shape[0]} runs)", band=False)
  ax.set_xlabel("environment steps")
  ax.set_ylabel(f"episodic return ({window}-update moving mean)")
  ax.set_title(title)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def member_configs(algorithm: ModuleType, config, members: Members) -> list:
  """Each member's config: `config` with that member's seed and values (the fields of algorithm.HParams),
  validated as a single run's; ConfigError on another field, a wrong number of values or a bad value."""
  return train_lib.member_configs(config, members, sorted(algorithm.HParams._fields), algorithm.check_config)


def _timing_metrics(algorithm: ModuleType, config, steps: int, compile_time: float, run_time: float,
                    steps_per_s: float) -> dict:
  """The run-wide fields of results.json: environment steps, updates and timings."""
  return {"env_steps_per_seed": steps, "num_updates": algorithm.num_updates(config),
          "compile_time_s": round(compile_time, 3), "train_time_s": round(run_time, 3),
          "env_steps_per_s": round(steps_per_s, 1)}


def _run_members(algorithm: ModuleType, config, workdir: str, members: Members, name: str, start: float) -> dict:
  """A sweep of an algorithm without chunks (research.rl.tamer): every member's num_seeds runs in one jitted program
  (see `run`)."""
  configs = member_configs(algorithm, config, members)
  check_positive("num_seeds", config.num_seeds)
  train = algorithm.make_train(configs[0])  # the program; each member brings its own keys and hparams
  keys, hparams = _member_inputs(algorithm, configs)
  program = jax.jit(jax.vmap(jax.vmap(train, in_axes=(0, None))))

  compiled = program.lower(keys, hparams).compile()
  compile_time = time.perf_counter() - start
  runs = members.count * config.num_seeds
  print(f"compiled {name} on {config.env_name} x {members.count} members x {config.num_seeds} seeds "
        f"in {compile_time:.1f}s")

  run_start = time.perf_counter()
  out = jax.block_until_ready(compiled(keys, hparams))
  run_time = time.perf_counter() - run_start
  steps = int(out.metrics.env_steps[0, 0, -1])
  steps_per_s = runs * steps / run_time
  print(f"trained {algorithm.num_updates(config)} updates x {runs} runs ({steps} env steps each) "
        f"in {run_time:.1f}s: {steps_per_s:,.0f} env steps/s over all runs")
  return _write_members(algorithm, config, workdir, members, name, out, compile_time, run_time, start, steps_per_s)


def _member_inputs(algorithm: ModuleType, configs: list) -> tuple[jax.Array, object]:
  """The keys (members, seeds) and stacked HParams (members,) of a sweep's member configs."""
  keys = jnp.stack([jax.random.split(jax.random.key(c.seed), c.num_seeds) for c in configs])
  hparams = jax.tree.map(lambda *xs: jnp.stack(xs), *[algorithm.default_hparams(c) for c in configs])
  return keys, hparams


def _write_members(algorithm: ModuleType, config, workdir: str, members: Members, name: str, out,
                   compile_time: float, run_time: float, start: float, steps_per_s: float) -> dict:
  """A sweep's report and files (results.json, returns.png, params/) from its output (leaves (members, seeds, ...))."""
  steps = int(out.metrics.env_steps[0, 0, -1])
  total_loss = np.asarray(out.metrics.total_loss)  # (members, seeds, updates)
  initial, final = returns(out)  # (members, seeds)
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
  title = f"{name} on {config.env_name}: {members.count} members x {config.num_seeds} seeds"
  _plot_members(os.path.join(workdir, "returns.png"), out.metrics, members, title)
  save_pytree(os.path.join(workdir, "params"), jax.device_get(out.params))
  metrics = {
      "members": results,
      **_timing_metrics(algorithm, config, steps, compile_time, run_time, steps_per_s),
  }
  return write_results(workdir, metrics, config=config, wall_time_s=time.perf_counter() - start)


# Config fields a resumed run may change: how the run is carried out, not what it trains.
RESUMABLE_FIELDS = ("updates_per_chunk", "checkpoint_every", "keep_checkpoints")


def _report(line: str) -> None:
  """Prints one progress line (a function of its own, so a test can act on each)."""
  print(line, flush=True)


def _chunk_ends(done: int, total: int, per_chunk: int) -> list[int]:
  """The updates completed at each chunk end after `done`: multiples of per_chunk, and the total."""
  return list(range((done // per_chunk + 1) * per_chunk, total, per_chunk)) + [total] if done < total else []


def _chunk_return(metrics) -> float:
  """Mean return of the episodes that ended in a chunk's updates, over all seeds (NaN if none)."""
  episodes = np.asarray(metrics.episodes, np.float64)
  total = np.where(episodes > 0, np.asarray(metrics.episode_return, np.float64) * episodes, 0.0).sum()
  return float(total / episodes.sum()) if episodes.sum() > 0 else float("nan")


def _latest_evaluation(carry) -> str:
  """", greedy evaluation at env step S: R" for the newest greedy evaluation a carry holds (DQN's), mean over runs and
  episodes; "" for a carry without evaluations or before the first."""
  evaluation = getattr(carry, "evaluation", None)
  if evaluation is None:
    return ""
  returns = np.asarray(jax.device_get(evaluation.episode_return), np.float64)  # (...runs, evaluations, episodes)
  returns = returns.reshape((-1,) + returns.shape[-2:])
  done = np.flatnonzero(np.isfinite(returns).all(axis=(0, 2)))  # NaN until training reaches an evaluation
  if not done.size:
    return ""
  steps = np.asarray(jax.device_get(evaluation.env_steps))
  steps = int(steps.reshape(-1, steps.shape[-1])[0, done[-1]])
  return f", greedy evaluation at env step {steps}: {returns[:, done[-1]].mean():.1f}"


def _finished_results(workdir: str, updates: int) -> dict | None:
  """The results.json of this run when the workdir already holds it finished, else None."""
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  return results if results.get("num_updates") == updates else None


def chunked_train(algorithm: ModuleType, config, key: jax.Array, per_chunk: int | None = None) -> tuple[object, list]:
  """One seed's run of `algorithm.make_chunks(config)` a chunk at a time, without files or signals.

  Chunks of `per_chunk` updates (default config.updates_per_chunk; 0: one chunk), each a jitted call,
  as `run` makes them. Returns (output, carries): the output `algorithm.make_train(config)(key)`
  returns, and the carry after each chunk (what a checkpoint there saves). With the config's own
  hyperparameters the output equals make_train's one scan bit for bit (docs/results.md).
  """
  chunks = algorithm.make_chunks(config)
  total = chunks.num_updates
  per_chunk = (config.updates_per_chunk if per_chunk is None else per_chunk) or total
  advance = {}
  carry, carries, parts = jax.jit(chunks.init)(key), [], []
  for first in range(0, total, per_chunk):
    length = min(per_chunk, total - first)
    if length not in advance:
      advance[length] = jax.jit(lambda c, first, n=length: chunks.advance(c, first, n))
    carry, metrics = advance[length](carry, jnp.int32(first))
    carries.append(carry)
    parts.append(metrics)
  return chunks.output(carry, jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)), carries


def _run_chunks(algorithm: ModuleType, config, workdir: str, name: str, start: float,
                members: Members | None = None) -> dict:
  """A single run, or a sweep's members, a chunk of updates at a time: progress lines, checkpoints, a stop on a
  signal, a resume.

  Each chunk is one call of a compiled program (vmapped over seeds, and over members in a sweep);
  chunk ends are fixed update numbers (multiples of updates_per_chunk), so a resumed run makes the
  same calls as one never stopped and ends with the same results, bit for bit. A single run whose
  loss turns non-finite stops at that chunk's end, keeping its last checkpoint; a sweep's
  diverged members are reported at the end while the others train on.
  """
  check_positive("num_seeds", config.num_seeds)
  rl_config.check_chunk_fields(config)
  if members is None:
    chunks = algorithm.make_chunks(config)  # validates the rest before anything is traced
    keys, hparams = jax.random.split(jax.random.key(config.seed), config.num_seeds), None
    batched = lambda f: jax.vmap(f, in_axes=(0, None))  # over seeds; the config's own hyperparameters
    runs, what = config.num_seeds, f"{config.num_seeds} seeds"
  else:
    configs = member_configs(algorithm, config, members)
    chunks = algorithm.make_chunks(configs[0])  # the program; each member brings its own keys and hparams
    keys, hparams = _member_inputs(algorithm, configs)
    batched = lambda f: jax.vmap(jax.vmap(f, in_axes=(0, None)))  # over members, then their seeds
    runs, what = members.count * config.num_seeds, f"{members.count} members x {config.num_seeds} seeds"
  check_workdir(workdir)
  total = chunks.num_updates
  per_chunk = config.updates_per_chunk or total
  init = jax.jit(batched(chunks.init))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  placed = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
  abstract_carry = placed(jax.eval_shape(init, keys, hparams))

  def advance(carry, first, hparams, length):
    return batched(lambda c, hp: chunks.advance(c, first, length, hp))(carry, hparams)

  abstract_metrics = placed(jax.eval_shape(lambda c, hp: advance(c, 0, hp, total)[1], abstract_carry, hparams))
  identity = {"updates": None, "seed": config.seed}
  if members is not None:  # which members a sweep's group trains: a checkpoint of others is refused
    identity["members"] = members.to_json()

  checkpoints = None
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    checkpoints = Checkpointer(workdir, config.keep_checkpoints)
    _check_stored_config(workdir, checkpoints.stored_config(), config)
    checkpoints.check_compatible({"carry": abstract_carry, "metrics": abstract_metrics})
  restored = checkpoints.restore({"carry": abstract_carry, "metrics": abstract_metrics}) \
      if checkpoints is not None else None
  if restored is not None:
    state, position = restored
    _check_stored_config(workdir, checkpoints.restored_config, config)
    if members is not None and position.get("members") != identity["members"]:
      checkpoints.close()
      raise ConfigError(f"the checkpoint in {workdir} was written by another sweep ({position.get('members')}); "
                        "use another --workdir")
    carry, done = state["carry"], int(position["updates"])
    metrics = {k: np.array(v) for k, v in state["metrics"]._asdict().items()}  # (...runs, total) each, filled to done
    if done == total and members is None and (finished := _finished_results(workdir, total)) is not None:
      checkpoints.close()
      print(f"{workdir} already holds this run, finished at update {done}: nothing to do "
            f"(its results: {os.path.join(workdir, 'results.json')})")
      return finished
    print(f"resuming from update {done}/{total} of {workdir}")
  else:
    carry, done = None, 0
    metrics = {k: np.zeros(v.shape, v.dtype) for k, v in abstract_metrics._asdict().items()}

  ends = _chunk_ends(done, total, per_chunk)
  programs = {}
  if carry is None:
    carry = init.lower(keys, hparams).compile()(keys, hparams)
  for length in sorted({end - first for first, end in zip([done] + ends, ends)}):
    programs[length] = jax.jit(lambda c, first, hp, length=length: advance(c, first, hp, length),
                               donate_argnums=0).lower(abstract_carry, jax.ShapeDtypeStruct((), jnp.int32),
                                                       hparams).compile()
  compile_time = time.perf_counter() - start
  print(f"compiled {name} on {config.env_name} x {what} in {compile_time:.1f}s "
        f"({len(ends)} chunk{'s' if len(ends) != 1 else ''} of up to {per_chunk} updates to run)")

  def save(updates: int) -> None:
    nonlocal checkpoints
    checkpoints = checkpoints or Checkpointer(workdir, config.keep_checkpoints)
    state = {"carry": carry, "metrics": type(abstract_metrics)(**metrics)}
    checkpoints.save(updates, state, {**identity, "updates": updates}, config)

  first_run = lambda values: values.reshape(-1, values.shape[-1])[0]  # (...runs, updates) -> the first run's
  run_time, run_steps = 0.0, 0
  every = config.checkpoint_every
  with schedule.Signals() as signals:
    for end in ends:
      chunk_start = time.perf_counter()
      carry, chunk = programs[end - done](carry, np.int32(done), hparams)
      chunk = jax.device_get(chunk)  # (...runs, end - done) each; waits for the chunk
      elapsed = time.perf_counter() - chunk_start
      for field, values in chunk._asdict().items():
        metrics[field][..., done:end] = values
      steps_before = int(first_run(metrics["env_steps"])[done - 1]) if done else 0
      chunk_steps = runs * (int(first_run(chunk.env_steps)[-1]) - steps_before)
      run_time, run_steps = run_time + elapsed, run_steps + chunk_steps
      previous, done = done, end
      _report(f"update {done}/{total} (env steps {int(first_run(chunk.env_steps)[-1])}): mean return "
              f"{_chunk_return(chunk):.1f} over the chunk's episodes, {chunk_steps / elapsed:,.0f} env steps/s"
              f"{_latest_evaluation(carry)}")
      if members is None and not np.isfinite(np.asarray(chunk.total_loss)).all():
        if checkpoints is not None:
          checkpoints.close()
        seed, update = np.argwhere(~np.isfinite(np.asarray(chunk.total_loss)))[0]
        kept = f"the checkpoint at update {checkpoints.steps()[-1]} is kept" \
            if checkpoints is not None and checkpoints.steps() else "no checkpoint was saved"
        raise NonFiniteLossError(f"non-finite loss in seed {seed} at update {previous + update + 1} (env step "
                                 f"{int(chunk.env_steps[seed, update])}); {kept}, nothing else was written")
      # The end is saved whenever anything is: a rerun then finds the run finished, not a stale stop.
      if (every and done // every > previous // every) or (done == total and (every or checkpoints is not None)):
        save(done)
      if signals.received is not None and done < total:
        save(done)
        checkpoints.wait()
        raise schedule.interrupted(signals.received, done, checkpoints.directory)
  if checkpoints is not None:
    checkpoints.close()
  out = jax.vmap(jax.vmap(chunks.output))(carry, type(abstract_metrics)(**metrics)) if members is not None \
      else jax.vmap(chunks.output)(carry, type(abstract_metrics)(**metrics))
  steps = int(first_run(metrics["env_steps"])[-1])
  print(f"trained {total} updates x {what} ({steps} env steps each), "
        f"{run_steps // max(runs, 1)} of them now in {run_time:.1f}s")
  steps_per_s = run_steps / run_time if run_time > 0 else 0.0
  if members is not None:
    return _write_members(algorithm, config, workdir, members, name, out, compile_time, run_time, start, steps_per_s)
  return _write_run(algorithm, config, workdir, name, out, compile_time, run_time, start, steps_per_s)


def _check_stored_config(workdir: str, stored: dict | None, config) -> None:
  """ConfigError when the workdir's checkpoint was trained with other settings (their fields named)."""
  changed = [c for c in changed_fields(stored or {}, config) if c[0] not in RESUMABLE_FIELDS]
  if changed:
    shown = ", ".join(f"{field} {before!r} (now {after!r})" for field, before, after in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    raise ConfigError(f"{workdir} holds a run trained with other settings: {shown}{more}; rerun with its settings "
                      "to resume it, or use another --workdir")


def run(algorithm: ModuleType, config, workdir: str, members: Members | None = None, name: str = "") -> dict:
  """Trains config.num_seeds seeds as one vmapped program and writes the run's outputs.

  Writes into workdir: results.json (final and initial return per seed, timings, config,
  versions, wall time), returns.png (return vs environment steps, mean and range over seeds;
  greedy evaluations where the algorithm has them) and params/ (an orbax checkpoint of the
  final parameters, leaves (num_seeds, ...)).

  With `members` (a sweep, experiments/sweep.py), member i is the run with config.seed =
  seeds[i] and its values of the HParams fields, each with its own num_seeds inner seeds; all
  members train in one jitted program (a vmap over members of the vmap over seeds; chunked as
  below).
  results.json then lists `members` (seed, values, train_loss: the final update's loss averaged
  over the inner seeds, and the returns above), returns.png draws one mean curve per setting
  and params/ has leaves (members, num_seeds, ...). A member whose loss turns non-finite is
  reported with `diverged_at_step` (an update, 1-based) and the others finish.

  A single run (or a sweep) of an algorithm with `make_chunks` runs config.updates_per_chunk
  updates per compiled call (0: all in one) and prints `update k/N (env steps S): mean return R over the
  chunk's episodes, X env steps/s` after each; it saves (the carry and the metrics so far) in
  workdir/checkpoints every config.checkpoint_every updates (0: never), at the end once
  anything was saved, and when SIGINT or SIGTERM stops it at a chunk's end (raising
  research.train.Interrupted). Run again, it resumes from the newest checkpoint (refusing a
  config that changes what it trains) to the files of a run never stopped; a finished workdir
  trains nothing. A single run whose loss turns non-finite stops at that chunk's end with
  NonFiniteLossError, its checkpoints kept.

  Args:
    algorithm: the algorithm's module (research.rl.ppo, a2c or dqn; see the module docstring).
    config: the experiment config; validated before anything is compiled.
    workdir: output directory (created if missing).
    members: research.train.Members: seeds and {HParams field: one value per member}, or None.
    name: the algorithm's name in messages and plot titles.

  Returns:
    The dict written to results.json.

  Raises:
    ConfigError: on a bad config or sweep, before anything is compiled or written.
    NonFiniteLossError: if a loss became NaN or infinite (in a sweep: in every member); nothing
      is written then (but checkpoints).
    Interrupted: a signal stopped a chunked run, after saving a checkpoint.
  """
  start = time.perf_counter()
  name = name or algorithm.__name__.rsplit(".", 1)[-1]
  if hasattr(algorithm, "make_chunks"):
    return _run_chunks(algorithm, config, workdir, name, start, members)
  if members is not None:
    return _run_members(algorithm, config, workdir, members, name, start)
  check_positive("num_seeds", config.num_seeds)
  train = algorithm.make_train(config)  # validates the rest before anything is traced
  keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)

  compiled = jax.jit(jax.vmap(train)).lower(keys).compile()
  compile_time = time.perf_counter() - start
  print(f"compiled {name} on {config.env_name} x {config.num_seeds} seeds in {compile_time:.1f}s")

  run_start = time.perf_counter()
  out = jax.block_until_ready(compiled(keys))
  run_time = time.perf_counter() - run_start
  steps = int(out.metrics.env_steps[0, -1])
  steps_per_s = config.num_seeds * steps / run_time
  print(f"trained {algorithm.num_updates(config)} updates x {config.num_seeds} seeds ({steps} env steps each) "
        f"in {run_time:.1f}s: {steps_per_s:,.0f} env steps/s over all seeds")

  return _write_run(algorithm, config, workdir, name, out, compile_time, run_time, start, steps_per_s)


def _write_run(algorithm: ModuleType, config, workdir: str, name: str, out, compile_time: float, run_time: float,
               start: float, steps_per_s: float) -> dict:
  """A single run's report and files (results.json, returns.png, params/) from its output (leaves (seeds, ...))."""
  steps = int(out.metrics.env_steps[0, -1])
  _check_finite(out.metrics)
  initial, final = returns(out)
  share = f"{FINAL_FRACTION:.0%}"
  print(f"initial return per seed (mean episode return over the first {share} of updates): "
        + ", ".join(f"{r:.1f}" for r in initial))
  final_what = "greedy evaluation episodes" if getattr(out, "evaluation", None) is not None \
      else f"mean episode return over the last {share} of updates"
  print(f"final return per seed ({final_what}): " + ", ".join(f"{r:.1f}" for r in final))
  os.makedirs(workdir, exist_ok=True)
  _plot(os.path.join(workdir, "returns.png"), out, f"{name} on {config.env_name}")
  save_pytree(os.path.join(workdir, "params"), jax.device_get(out.params))
  metrics = {
      **_return_metrics(initial, final),
      **_timing_metrics(algorithm, config, steps, compile_time, run_time, steps_per_s),
  }
  return write_results(workdir, metrics, config=config, wall_time_s=time.perf_counter() - start)
