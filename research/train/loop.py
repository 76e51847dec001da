"""The one training loop.

    run = research.train.train(task, config, workdir, data, eval_data)

Owns: the device mesh and the shardings of the state (data / FSDP / tensor, from logical
axis names), the jitted and donated step (gradient accumulation inside it; several steps
per call as one `lax.scan`), derived keys, prefetched batches from any random-access
source, asynchronous checkpoints (resume from the latest, bit-identical to an
uninterrupted run; a save on SIGINT/SIGTERM), metric writers with interval averages, the
progress line with FLOP/s and MFU, health metrics, the non-finite stop, periodic
evaluation and samples, and results.json.
"""

import collections
import concurrent.futures
import math
import os
import signal
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from research import data as data_lib
from research import optim
from research.train import checkpoint as checkpoint_lib
from research.train import images
from research.train import monitor
from research.train import parallel
from research.train import results as results_lib
from research.train.config import ConfigError, check_common, check_workdir
from research.train.step import (Keys, TrainState, eval_params, init_params, init_state, make_multi_step,
                                 make_train_step)
from research.train.task import Task

# Calls dispatched but not finished. Unbounded, the host would queue thousands of steps (and
# their collectives) ahead of the devices; XLA's CPU collectives then time out.
MAX_CALLS_IN_FLIGHT = 2


class Run(NamedTuple):
  """What `train` returns: the final state and the dict written to results.json."""

  state: TrainState
  results: dict[str, Any]


class Members(NamedTuple):
  """Independent runs trained side by side as one vmapped program: a sweep over seeds and values.

  Member i is the run `train` makes with `config.seed = seeds[i]` and the values
  `hparams[name][i]`: the same data order, keys, initialisation and update, computed under
  `jax.vmap`. Names are a task's traced hyperparameters (Task.hparams) or the optimizer's
  injected ones as `optimizer.<name>` (learning_rate, weight_decay, b1).

  Attributes:
    seeds: one seed per member.
    hparams: {name: one value per member}.
  """

  seeds: tuple[int, ...]
  hparams: dict[str, tuple[float, ...]] = {}

  @property
  def count(self) -> int:
    return len(self.seeds)

  def values(self, i: int) -> dict[str, float]:
    """Member i's values, {name: value}."""
    return {name: values[i] for name, values in self.hparams.items()}

  def to_json(self) -> dict:
    return {"seeds": [int(s) for s in self.seeds], "hparams": {k: [float(v) for v in vs] for k, vs in self.hparams.items()}}


OPTIMIZER_PREFIX = "optimizer."


def check_swept(members: Members, traced) -> None:
  """Raises ConfigError unless every swept name is one of `traced`, with one value per member."""
  for name, values in members.hparams.items():
    if name not in traced:
      raise ConfigError(f"cannot vary {name}: it is not a traced hyperparameter of this experiment (a field that "
                        f"may change shapes or the program); traced: {', '.join(traced) or 'none'}")
    if len(values) != members.count:
      raise ConfigError(f"{name} has {len(values)} values for {members.count} members")


def member_configs(config, members: Members, traced, check) -> list:
  """Each member's config (a scan experiment's sweep): `config` with its seed and values, `check`ed as a single run's.

  Args:
    config: the experiment config the members share.
    members: seeds and {field: one value per member}; every field must be in `traced`.
    traced: the config fields the experiment's program takes as arrays.
    check: `check(config)`, the single run's validation (raises ConfigError).

  Returns:
    One config per member.
  """
  if members.count < 1:
    raise ConfigError("a sweep needs at least one member (seed)")
  check_swept(members, traced)
  configs = []
  for i, seed in enumerate(members.seeds):
    member = config.copy_and_resolve_references()
    member.seed = int(seed)
    for name, value in members.values(i).items():
      member[name] = float(value)
    check(member)
    configs.append(member)
  return configs


EMA_DECAY = "ema_decay"  # the loop's own traced hyperparameter in a sweep (make_train_step reads it from hparams)


def _check_members(members: Members, task: Task, injected, ema_decay: float) -> None:
  """Raises ConfigError unless every swept name is a traced hyperparameter with one value per member."""
  if members.count < 1:
    raise ConfigError("a sweep needs at least one member (seed)")
  if jax.process_count() > 1:
    raise ConfigError("a sweep runs in one process (its members are split over that process's devices)")
  traced = sorted(task.hparams or {}) + sorted(OPTIMIZER_PREFIX + n for n in injected)
  if EMA_DECAY in members.hparams:
    if ema_decay <= 0:
      raise ConfigError("cannot vary ema_decay in a config without an EMA (ema_decay 0): the EMA parameters are "
                        "part of the state; set --config.ema_decay to one of the values")
    if not all(0 < v < 1 for v in members.hparams[EMA_DECAY]):
      raise ConfigError(f"ema_decay values must be in (0, 1), got {list(members.hparams[EMA_DECAY])}")
    traced.append(EMA_DECAY)
  check_swept(members, traced)


def _member_init(task: Task, members: Members, ema_decay: float):
  """`init(keys, batches) -> state` with a leading member axis: each member's own init, seed and values."""
  task_names = [n for n in members.hparams if not n.startswith(OPTIMIZER_PREFIX)]  # and the loop's ema_decay
  optimizer_names = [n for n in members.hparams if n.startswith(OPTIMIZER_PREFIX)]
  values = {n: jnp.asarray(members.hparams[n], jnp.float32) for n in members.hparams}

  def one(key, batch, member_values):
    state = init_state(task, key, batch, ema_decay)
    if task_names:
      state = state.replace(hparams={**(state.hparams or {}), **{n: member_values[n] for n in task_names}})
    if optimizer_names:
      overrides = {n[len(OPTIMIZER_PREFIX):]: member_values[n] for n in optimizer_names}
      state = state.replace(opt_state=optim.with_hyperparams(state.opt_state, overrides))
    return state

  return lambda keys, batches: jax.vmap(one)(keys, batches, values)


class _Interval:
  """Sums of the per-step scalar metrics since the last log step, added in step order.

  Saved in each checkpoint's data position, so a resumed run logs the same averages (and
  the same train_loss) as an uninterrupted one.
  """

  def __init__(self, saved: dict | None = None):
    saved = saved or {}
    # Floats, or (members,) arrays for a sweep.
    self.sums: dict[str, np.ndarray] = {k: np.asarray(v, np.float64) for k, v in saved.get("sums", {}).items()}
    self.count: int = int(saved.get("count", 0))

  def add(self, values: dict[str, np.ndarray]) -> None:
    n = len(next(iter(values.values()))) if values else 0
    for name, column in values.items():
      total = self.sums.get(name, np.zeros(column.shape[1:], np.float64))
      for row in column:  # one step at a time, so a resumed run adds in the same order
        total = total + row
      self.sums[name] = total
    self.count += n

  def means(self) -> dict[str, Any]:
    """{name: mean}: floats, or (members,) arrays for a sweep."""
    if not self.count:
      return {}
    return {k: v / self.count if v.ndim else float(v / self.count) for k, v in self.sums.items()}

  def to_json(self) -> dict:
    return {"sums": {k: v.tolist() for k, v in self.sums.items()}, "count": self.count}


def _scalar_columns(chunks: list[tuple[int, dict, int]], members: int = 0) -> tuple[int, dict[str, np.ndarray]]:
  """Fetches the scalar metrics of consecutive calls (first step, metrics, steps) in one device_get.

  Args:
    chunks: the calls' (first step, metrics, number of steps).
    members: the sweep's member count (0: a single run).

  Returns:
    (first step, {name: (steps,) float64, or (steps, members) for a sweep}).
  """
  first, metrics, count = chunks[0]
  tail = (members,) if members else ()
  names = [k for k, v in metrics.items() if jnp.ndim(v) == (0 if count == 1 else 1) + len(tail)]
  # One fetch of every call's scalars, joined on the host: joining on the device would dispatch
  # an operation per call and metric (thousands per log step).
  fetched = jax.device_get([[m[name] for name in names] for _, m, _ in chunks])
  return first, {name: np.concatenate([np.reshape(row[i], (-1,) + tail) for row in fetched]).astype(np.float64)
                 for i, name in enumerate(names)}


def _first_nonfinite(first_step: int, columns: dict[str, np.ndarray]) -> tuple[int, str, float] | None:
  """The earliest (step, metric, value) that is NaN or infinite; steps count completed updates."""
  worst = None
  for name, column in columns.items():
    bad = np.flatnonzero(~np.isfinite(column))
    if bad.size and (worst is None or bad[0] < worst[0] or (bad[0] == worst[0] and name == "loss")):
      worst = (int(bad[0]), name, float(column[bad[0]]))
  return None if worst is None else (first_step + worst[0] + 1, worst[1], worst[2])


def _stack(trees: list, axis: int = 0):
  """Stacks batches (dicts of arrays) of the members along a new axis."""
  return jax.tree.map(lambda *xs: np.stack(xs, axis), *trees)


def _step(state: TrainState) -> int:
  """The completed steps of a state (members all share it)."""
  return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def _new_divergences(first_step: int, columns: dict[str, np.ndarray], diverged: dict, members: Members):
  """Records members whose metrics first turned non-finite; returns the worst when all have, else None."""
  for i in range(members.count):
    if i in diverged:
      continue
    bad = _first_nonfinite(first_step, {name: column[:, i] for name, column in columns.items()})
    if bad is not None:
      diverged[i] = bad
      monitor.say(f"member {i} (seed {members.seeds[i]}, {members.values(i)}) stopped being finite: "
                  f"{bad[1]} = {bad[2]} at step {bad[0]}; the others go on")
  if len(diverged) == members.count:
    return min(diverged.values())
  return None


def _member_scalars(means: dict[str, np.ndarray], diverged: dict) -> dict[str, float]:
  """Per-step metrics of a sweep for TensorBoard: the mean over finite members, and each member's loss."""
  out = {}
  for name, values in means.items():
    finite = [v for i, v in enumerate(values.tolist()) if i not in diverged]
    out[name] = float(np.mean(finite)) if finite else math.nan
  for i, value in enumerate(means.get("loss", np.zeros(0)).tolist()):
    out[f"members/loss_{i}"] = value
  return out


def _member_means(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
  """The mean over members of every scalar evaluation metric (NaN-free members only)."""
  out = {}
  for name, value in evaluations[0].items():
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
      column = np.asarray([e[name] for e in evaluations], np.float64)
      out[name] = float(np.nanmean(column)) if np.isfinite(column).any() else math.nan
  return out


def _summarize(task: Task, arrays: dict[str, Any]) -> dict[str, Any]:
  """One member's pure evaluation (NumPy arrays) as results.json holds it: the task's `summarize`, or floats."""
  if task.summarize is not None:
    return dict(task.summarize(arrays))
  return {name: np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
          for name, value in arrays.items() if name not in task.pictures}


def _hparams_last(task: Task, fn):
  """`fn` as the loop calls it, `fn(*args, hparams)`: a task with traced hyperparameters (Task.hparams)
  gets them as the last argument, as its `loss` does; a task without them is called without."""
  return fn if task.hparams is not None else lambda *args: fn(*args[:-1])


def _chunks(start: int, steps: int, config):
  """(first step, number of steps) of each call: up to steps_per_call, ending on every event step.

  Chunk ends are fixed by absolute step numbers (multiples of steps_per_call and of each
  event interval), so a run resumed at any chunk end makes the same calls as one that was
  never stopped.
  """
  periods = [config.steps_per_call, config.log_every, config.checkpoint_every]
  periods += [p for p in (config.eval_every, config.sample_every) if p > 0]
  step = start
  while step < steps:
    end = min([steps] + [(step // p + 1) * p for p in periods])
    yield step, end - step
    step = end


class _Prefetcher:
  """Gathers and transfers the batches of the next calls in a background thread."""

  def __init__(self, fetch, chunks, depth: int):
    self._fetch, self._chunks, self._depth = fetch, iter(chunks), depth
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prefetch") if depth else None
    self._queue = collections.deque()

  def __iter__(self):
    return self

  def __next__(self):
    if self._pool is None:
      start, count = next(self._chunks)
      return start, count, self._fetch(start, count)
    while len(self._queue) < self._depth + 1:
      chunk = next(self._chunks, None)
      if chunk is None:
        break
      self._queue.append((chunk, self._pool.submit(self._fetch, *chunk)))
    if not self._queue:
      raise StopIteration
    (start, count), future = self._queue.popleft()
    return start, count, future.result()

  def close(self):
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)


class _Signals:
  """Turns SIGINT and SIGTERM into a flag the loop checks after each call (single process only).

  Several processes must all stop at the same step, which a per-process handler cannot
  promise; there the default handlers stay (and SIGTERM ends the job as before).
  """

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.received = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    return False


def train(task: Task, config, workdir: str, data, eval_data=None, members: Members | None = None) -> Run:
  """Trains `task` on `data` for `config.steps` steps, resuming from `workdir` if it holds checkpoints.

  Args:
    task: the model family's plug-in.
    config: the experiment config (research.train.config.base_config fields and more).
    workdir: checkpoints, TensorBoard events, samples and results.json go here.
    data: the training split: a mapping of in-memory arrays (research.data.load) or a
      random-access source (research.data.source, research.data.TokenWindows).
    eval_data: the evaluation split handed to `task.evaluate` (any form the task reads), or None.
    members: a sweep: train these runs side by side as one vmapped program (their seeds
      replace config.seed). The state gains a leading member axis, split over the `data`
      devices when they divide it; every member is evaluated with the key and the hparams
      its single run would use and writes its samples to `member_<i>/`; results.json lists
      the members. A member whose metrics turn non-finite is reported and the others go on;
      the run stops only when all have.

  Returns:
    Run(final state, results dict).

  Raises:
    ConfigError: on bad config, or a checkpoint whose shapes differ from this config;
      raised before anything is compiled or written.
    NonFiniteLossError: when a metric becomes NaN/inf (the last good checkpoint stays).
    Interrupted: after SIGINT/SIGTERM, once a checkpoint of the current step is saved.
  """
  t0 = time.perf_counter()
  check_common(config)
  check_workdir(workdir)
  if config.grad_accum > 1 and task.train_step is not None:
    raise ConfigError("grad_accum > 1 needs a task with a `loss`; this task has its own train_step")
  mesh = parallel.make_mesh(config.mesh)
  replicated = parallel.replicated(mesh)
  seeds = list(members.seeds) if members is not None else [config.seed]
  try:
    batchers = [data_lib.Batcher(data, config.batch_size * task.batches_per_step, seed, jax.process_index(),
                                 jax.process_count()) for seed in seeds]
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from None
  batcher = batchers[0]
  keys = Keys.from_seed(seeds[0])
  if members is None:
    one_sharding, stacked_sharding = parallel.batch_sharding(mesh), parallel.batch_sharding(mesh, 1)
    first_batch = parallel.put_batch(batcher(0), one_sharding)
  else:
    if mesh.shape[parallel.FSDP_AXIS] * mesh.shape[parallel.TENSOR_AXIS] > 1:
      raise ConfigError("a sweep splits its members over the data axis; set mesh.fsdp and mesh.tensor to 1")
    member_keys = [Keys.from_seed(seed) for seed in seeds]
    # Members are split over the devices when they divide evenly, else every device runs them all.
    split = members.count % mesh.size == 0
    member_sharding = NamedSharding(mesh, P(parallel.DATA_AXIS if split else None))
    one_sharding = member_sharding
    stacked_sharding = NamedSharding(mesh, P(None, parallel.DATA_AXIS if split else None))
    first_batch = parallel.put_batch(_stack([b(0) for b in batchers]), one_sharding)

  # Shapes and shardings first: nothing is compiled until the checkpoint (if any) is known to fit.
  if members is None:
    boxed = jax.eval_shape(lambda k, b: init_params(task, k, b), keys.init, first_batch)
    param_sharding = parallel.param_shardings(boxed, mesh)
    init_fn = lambda k, b: init_state(task, k, b, config.ema_decay)
    init_key = keys.init
    abstract = jax.eval_shape(init_fn, init_key, first_batch)
    state_sharding = TrainState(
        step=replicated, params=param_sharding,
        opt_state=parallel.like_params(abstract.opt_state, abstract.params, param_sharding, mesh),
        ema_params=param_sharding if abstract.ema_params is not None else None,
        extra=parallel.like_params(abstract.extra, abstract.params, param_sharding, mesh),
        hparams=jax.tree.map(lambda _: replicated, abstract.hparams))
  else:
    injected = jax.eval_shape(lambda k, b: init_state(task, k, b, config.ema_decay).opt_state, keys.init,
                              jax.tree.map(lambda x: x[0], first_batch))
    try:
      injected = optim.hyperparams(injected) if members.hparams else {}
    except AttributeError:
      injected = {}  # an optimizer without injected hyperparameters
    _check_members(members, task, injected, config.ema_decay)
    init_fn = _member_init(task, members, config.ema_decay)
    init_key = jnp.stack([k.init for k in member_keys])
    abstract = jax.eval_shape(init_fn, init_key, first_batch)
    state_sharding = jax.tree.map(lambda _: member_sharding, abstract)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
                          state_sharding)
  checkpoints = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints) \
      if os.path.isdir(os.path.join(workdir, "checkpoints")) else None
  if checkpoints is not None:
    checkpoints.check_compatible(abstract)

  restored = checkpoints.restore(abstract) if checkpoints is not None else None
  if restored is not None:
    state, position = restored
    if members is None and position.get("seed") != config.seed:
      raise ConfigError(f"the checkpoint in {workdir} was written with seed {position.get('seed')}, "
                        f"not {config.seed}; use another --workdir")
    if members is not None and position.get("members") != members.to_json():
      raise ConfigError(f"the checkpoint in {workdir} was written by another sweep ({position.get('members')}); "
                        "use another --workdir")
    monitor.say(f"resuming from step {_step(state)} of {workdir}")
  else:
    position = {}
    init = jax.jit(init_fn, out_shardings=state_sharding)
    state = init(init_key, first_batch)
  if checkpoints is None:
    checkpoints = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)

  step_fn = make_train_step(task, config.ema_decay, config.grad_accum)
  counted = make_train_step(task, config.ema_decay, 1)

  if members is None:
    def one_step(state: TrainState, batch):
      # The step's key is derived inside the program: no extra dispatch per step.
      return step_fn(state, batch, jax.random.fold_in(keys.train, state.step))

    multi_step = make_multi_step(step_fn, keys.train)
    count_fn = lambda s, b: counted(s, b, keys.train)
  else:
    train_keys = jnp.stack([k.train for k in member_keys])  # (members,): each member's own stream

    def one_step(state: TrainState, batch):
      return jax.vmap(lambda s, b, k: step_fn(s, b, jax.random.fold_in(k, s.step)))(state, batch, train_keys)

    multi_step = lambda state, batches: jax.lax.scan(one_step, state, batches)
    count_fn = jax.vmap(lambda s, b: counted(s, b, keys.train))

  programs = {
      1: jax.jit(one_step, in_shardings=(state_sharding, one_sharding), out_shardings=(state_sharding, replicated),
                 donate_argnums=0),
      "multi": jax.jit(multi_step, in_shardings=(state_sharding, stacked_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=0),
  }
  # Model FLOPs of one update (of every member), from the lowered (not compiled) program without microbatching.
  flops_per_step = monitor.step_flops(jax.jit(count_fn).lower(abstract, first_batch))
  peak = monitor.peak_flops(jax.devices()[0].device_kind)
  peak = peak * jax.device_count() if peak else None

  def fetch(start: int, count: int):
    if members is not None:
      if count == 1:
        return parallel.put_batch(_stack([b(start) for b in batchers]), one_sharding)
      return parallel.put_batch(_stack([b.stacked(start, count) for b in batchers], axis=1), stacked_sharding)
    if count == 1:
      return parallel.put_batch(batcher(start), one_sharding)
    return parallel.put_batch(batcher.stacked(start, count), stacked_sharding)

  writer = monitor.make_writer(workdir)
  start = _step(state)
  progress = monitor.Progress(config.steps, start)
  interval = _Interval(position.get("interval"))
  # Each member evaluates and samples with the keys of its own single run.
  eval_keys = [jax.random.split(Keys.from_seed(seed).eval) for seed in seeds]  # [(k_evaluate, k_sample)]
  evaluate_fn = _hparams_last(task, task.evaluate) if task.evaluate is not None else None
  sample_fn = _hparams_last(task, task.sample) if task.sample is not None else None
  if task.evaluate_pure and evaluate_fn is not None:
    pure_evaluate = jax.jit(evaluate_fn if members is None else jax.vmap(evaluate_fn, in_axes=(0, 0, None, 0)))
    eval_key_array = eval_keys[0][0] if members is None else jnp.stack([k[0] for k in eval_keys])
  evaluated: dict[str, Any] = {}  # the step of the last pure evaluation and each member's pictures from it
  last = {"saved": start if restored is not None else None, "eval_step": None, "sample_step": None}
  eval_metrics: dict[str, Any] = {}
  member_evals: list[dict[str, Any]] = []
  # The last logged training loss, kept in checkpoints: a run killed after its final checkpoint
  # but before results.json reports the same loss when the command is run again.
  train_loss = position.get("train_loss")
  member_losses = np.asarray(position["member_losses"], np.float64) if "member_losses" in position else None
  # member -> its first non-finite (step, metric, value); kept in checkpoints, so a resumed sweep still knows.
  diverged: dict[int, tuple[int, str, float]] = {int(i): tuple(v) for i, v in position.get("diverged", {}).items()}

  def save(step: int):
    position = {"step": step, "seed": config.seed, "interval": interval.to_json(), "train_loss": train_loss}
    if member_losses is not None:
      position["member_losses"] = np.asarray(member_losses, np.float64).tolist()
    if members is not None:
      position["members"] = members.to_json()
      position["diverged"] = {str(i): list(v) for i, v in diverged.items()}
    checkpoints.save(step, state, position, config)
    last["saved"] = step

  def member_params(i: int):
    params = eval_params(state)
    return params if members is None else jax.tree.map(lambda x: x[i], params)

  def member_hparams(i: int):
    return state.hparams if members is None else jax.tree.map(lambda x: x[i], state.hparams)

  def evaluate(step: int):
    nonlocal eval_metrics, member_evals
    if task.evaluate is None:
      return
    if task.evaluate_pure:
      # One compiled program for every member: their params, keys and hparams batched, the data shared.
      arrays = jax.device_get(pure_evaluate(eval_params(state), eval_key_array, eval_data, state.hparams))
      member_arrays = [jax.tree.map(lambda x: x if members is None else x[i], arrays) for i in range(len(seeds))]
      member_evals = [_summarize(task, a) for a in member_arrays]
      # The pictures the evaluation made (the samples it scored) are what `write_samples` writes at this step.
      evaluated.update(step=step, pictures=[{name: a[name] for name in task.pictures if a.get(name) is not None}
                                            for a in member_arrays])
    else:
      member_evals = [dict(evaluate_fn(member_params(i), eval_keys[i][0], eval_data, member_hparams(i)))
                      for i in range(len(seeds))]
    eval_metrics = member_evals[0] if members is None else _member_means(member_evals)
    scalars = {f"eval/{k}": v for k, v in eval_metrics.items() if isinstance(v, (int, float, np.number))
               and not isinstance(v, bool)}
    writer.write_scalars(step, scalars)
    monitor.say(f"eval at step {step}{' (mean over members)' if members else ''}: "
                f"{monitor.format_metrics(eval_metrics)}")
    last["eval_step"] = step

  def write_samples(step: int):
    last["sample_step"] = step
    if task.sample is None or jax.process_index() != 0:
      return
    for i in range(len(seeds)):
      if i in diverged:
        continue  # nothing to look at
      try:
        directory = workdir if members is None else os.path.join(workdir, f"member_{i}")
        os.makedirs(directory, exist_ok=True)
        if evaluated.get("step") == step and evaluated["pictures"][i]:
          drawn = evaluated["pictures"][i]
        else:
          drawn = sample_fn(member_params(i), eval_keys[i][1], member_hparams(i))
        images.write_samples(directory, drawn, writer if i == 0 else None, step)
      except Exception as e:  # pylint: disable=broad-except
        # A picture must never cost the run its results.
        monitor.say(f"warning: could not write samples at step {step}: {type(e).__name__}: {e}")

  pending: list[tuple[int, dict, int]] = []  # calls whose metrics are not checked yet
  in_flight = collections.deque()
  prefetcher = _Prefetcher(fetch, _chunks(start, config.steps, config), config.prefetch)
  try:
    with _Signals() as signals:
      for first, count, batch in prefetcher:
        state, metrics = programs[1 if count == 1 else "multi"](state, batch)
        done = first + count
        if first == start:
          # Rates and ETAs count from the end of the first (compiling) call.
          jax.block_until_ready(state)
          progress.restart(done)
        pending.append((first, metrics, count))
        in_flight.append(metrics)
        if len(in_flight) > MAX_CALLS_IN_FLIGHT:
          jax.block_until_ready(in_flight.popleft())
        to_log = done % config.log_every == 0 or done == config.steps
        to_save = done % config.checkpoint_every == 0 or done == config.steps
        to_eval = config.eval_every > 0 and done % config.eval_every == 0
        to_sample = config.sample_every > 0 and done % config.sample_every == 0
        stop = signals.received is not None
        if not (to_log or to_save or to_eval or to_sample or stop):
          continue
        first_step, columns = _scalar_columns(pending, members.count if members is not None else 0)
        pending = []
        if members is None:
          bad = _first_nonfinite(first_step, columns)
        else:
          bad = _new_divergences(first_step, columns, diverged, members)
        if bad is not None:
          writer.flush()
          checkpoints.wait()
          kept = f"the last good checkpoint is step {last['saved']}" if last["saved"] is not None \
              else "no checkpoint was saved"
          raise monitor.NonFiniteLossError(f"non-finite {bad[1]} ({bad[2]}) at step {bad[0]}; {kept} in {workdir}")
        interval.add(columns)
        if to_log:
          means = interval.means()
          if members is not None:
            member_losses = means.get("loss")
            scalars = _member_scalars(means, diverged)
          else:
            scalars = means
          train_loss = scalars.get("loss")
          writer.write_scalars(done, scalars)
          progress.report(done, train_loss if train_loss is not None else math.nan, flops_per_step, peak)
          interval = _Interval()
        if to_save or stop:
          save(done)
        if to_eval:
          evaluate(done)
        if to_sample:
          write_samples(done)
        if stop:
          checkpoints.wait()
          writer.flush()
          name = signal.Signals(signals.received).name
          raise monitor.Interrupted(
              f"interrupted by {name} at step {done}: saved a checkpoint in {checkpoints.directory}; "
              "run the same command to resume", signals.received)
  finally:
    prefetcher.close()

  final_step = _step(state)
  results: dict[str, Any] = {"step": final_step, "train_loss": train_loss}
  if config.steps > start + 1:
    results["steps_per_second"] = progress.steps_per_second(config.steps)
    monitor.say(f"trained steps {start}..{config.steps} at {results['steps_per_second']:.1f} steps/s "
                "(after the first, compiling call)")
  if flops_per_step:
    results["flops_per_step"] = flops_per_step
    if "steps_per_second" in results:
      results["flops_per_second"] = flops_per_step * results["steps_per_second"]
      if peak:
        results["mfu"] = results["flops_per_second"] / peak
  if last["saved"] is None:
    save(final_step)  # a run of no steps still leaves its (initial) state
  if last["eval_step"] != final_step:
    evaluate(final_step)
  if last["sample_step"] != final_step:
    write_samples(final_step)
  results.update(eval_metrics)
  if members is not None:
    results["members"] = [
        {"seed": int(seed), "values": members.values(i),
         "train_loss": None if member_losses is None or i in diverged else float(member_losses[i]),
         **({"diverged_at_step": diverged[i][0]} if i in diverged else {}),
         **(member_evals[i] if member_evals else {})}
        for i, seed in enumerate(seeds)]
  results["mesh"] = dict(mesh.shape)
  writer.close()
  checkpoints.close()
  out = results_lib.write_results(workdir, results, config, time.perf_counter() - t0)
  monitor.say(f"final: {monitor.format_metrics({k: v for k, v in out.items() if k not in ('step', 'mesh')})}")
  return Run(state, out)

