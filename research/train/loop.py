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

from research import data as data_lib
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


class _Interval:
  """Sums of the per-step scalar metrics since the last log step, added in step order.

  Saved in each checkpoint's data position, so a resumed run logs the same averages (and
  the same train_loss) as an uninterrupted one.
  """

  def __init__(self, saved: dict | None = None):
    saved = saved or {}
    self.sums: dict[str, float] = {k: float(v) for k, v in saved.get("sums", {}).items()}
    self.count: int = int(saved.get("count", 0))

  def add(self, values: dict[str, np.ndarray]) -> None:
    n = len(next(iter(values.values()))) if values else 0
    for name, column in values.items():
      total = self.sums.get(name, 0.0)
      for v in column.tolist():
        total += v
      self.sums[name] = total
    self.count += n

  def means(self) -> dict[str, float]:
    return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

  def to_json(self) -> dict:
    return {"sums": dict(self.sums), "count": self.count}


def _scalar_columns(chunks: list[tuple[int, dict, int]]) -> tuple[int, dict[str, np.ndarray]]:
  """Fetches the scalar metrics of consecutive calls (first step, metrics, steps) in one device_get.

  Returns:
    (first step, {name: (steps,) float64}).
  """
  first, metrics, count = chunks[0]
  names = [k for k, v in metrics.items() if jnp.ndim(v) == (0 if count == 1 else 1)]
  # One fetch of every call's scalars, joined on the host: joining on the device would dispatch
  # an operation per call and metric (thousands per log step).
  fetched = jax.device_get([[m[name] for name in names] for _, m, _ in chunks])
  return first, {name: np.concatenate([np.reshape(row[i], (-1,)) for row in fetched]).astype(np.float64)
                 for i, name in enumerate(names)}


def _first_nonfinite(first_step: int, columns: dict[str, np.ndarray]) -> tuple[int, str, float] | None:
  """The earliest (step, metric, value) that is NaN or infinite; steps count completed updates."""
  worst = None
  for name, column in columns.items():
    bad = np.flatnonzero(~np.isfinite(column))
    if bad.size and (worst is None or bad[0] < worst[0] or (bad[0] == worst[0] and name == "loss")):
      worst = (int(bad[0]), name, float(column[bad[0]]))
  return None if worst is None else (first_step + worst[0] + 1, worst[1], worst[2])


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


def train(task: Task, config, workdir: str, data, eval_data=None) -> Run:
  """Trains `task` on `data` for `config.steps` steps, resuming from `workdir` if it holds checkpoints.

  Args:
    task: the model family's plug-in.
    config: the experiment config (research.train.config.base_config fields and more).
    workdir: checkpoints, TensorBoard events, samples and results.json go here.
    data: the training split: a mapping of in-memory arrays (research.data.load) or a
      random-access source (research.data.source, research.data.TokenWindows).
    eval_data: the evaluation split handed to `task.evaluate` (any form the task reads), or None.

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
  one_sharding, stacked_sharding = parallel.batch_sharding(mesh), parallel.batch_sharding(mesh, 1)
  replicated = parallel.replicated(mesh)
  try:
    batcher = data_lib.Batcher(data, config.batch_size * task.batches_per_step, config.seed,
                               jax.process_index(), jax.process_count())
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from None
  keys = Keys.from_seed(config.seed)

  # Shapes and shardings first: nothing is compiled until the checkpoint (if any) is known to fit.
  first_batch = parallel.put_batch(batcher(0), one_sharding)
  boxed = jax.eval_shape(lambda k, b: init_params(task, k, b), keys.init, first_batch)
  param_sharding = parallel.param_shardings(boxed, mesh)
  abstract = jax.eval_shape(lambda k, b: init_state(task, k, b, config.ema_decay), keys.init, first_batch)
  state_sharding = TrainState(
      step=replicated, params=param_sharding,
      opt_state=parallel.like_params(abstract.opt_state, abstract.params, param_sharding, mesh),
      ema_params=param_sharding if abstract.ema_params is not None else None,
      extra=parallel.like_params(abstract.extra, abstract.params, param_sharding, mesh))
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
                          state_sharding)
  checkpoints = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints) \
      if os.path.isdir(os.path.join(workdir, "checkpoints")) else None
  if checkpoints is not None:
    checkpoints.check_compatible(abstract)

  restored = checkpoints.restore(abstract) if checkpoints is not None else None
  if restored is not None:
    state, position = restored
    if position.get("seed") != config.seed:
      raise ConfigError(f"the checkpoint in {workdir} was written with seed {position.get('seed')}, "
                        f"not {config.seed}; use another --workdir")
    monitor.say(f"resuming from step {int(state.step)} of {workdir}")
  else:
    position = {}
    init = jax.jit(lambda k, b: init_state(task, k, b, config.ema_decay), out_shardings=state_sharding)
    state = init(keys.init, first_batch)
  if checkpoints is None:
    checkpoints = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)

  step_fn = make_train_step(task, config.ema_decay, config.grad_accum)

  def one_step(state: TrainState, batch):
    # The step's key is derived inside the program: no extra dispatch per step.
    return step_fn(state, batch, jax.random.fold_in(keys.train, state.step))

  programs = {
      1: jax.jit(one_step, in_shardings=(state_sharding, one_sharding), out_shardings=(state_sharding, replicated),
                 donate_argnums=0),
      "multi": jax.jit(make_multi_step(step_fn, keys.train), in_shardings=(state_sharding, stacked_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=0),
  }
  # Model FLOPs of one update, from the lowered (not compiled) program without microbatching.
  counted = make_train_step(task, config.ema_decay, 1)
  flops_per_step = monitor.step_flops(
      jax.jit(lambda s, b: counted(s, b, keys.train)).lower(abstract, first_batch))
  peak = monitor.peak_flops(jax.devices()[0].device_kind)
  peak = peak * jax.device_count() if peak else None

  def fetch(start: int, count: int):
    if count == 1:
      return parallel.put_batch(batcher(start), one_sharding)
    return parallel.put_batch(batcher.stacked(start, count), stacked_sharding)

  writer = monitor.make_writer(workdir)
  start = int(state.step)
  progress = monitor.Progress(config.steps, start)
  interval = _Interval(position.get("interval"))
  k_evaluate, k_sample = jax.random.split(keys.eval)
  last = {"saved": start if restored is not None else None, "eval_step": None, "sample_step": None}
  eval_metrics: dict[str, Any] = {}
  train_loss = None

  def save(step: int):
    checkpoints.save(step, state, {"step": step, "seed": config.seed, "interval": interval.to_json()}, config)
    last["saved"] = step

  def evaluate(step: int):
    nonlocal eval_metrics
    if task.evaluate is None:
      return
    eval_metrics = dict(task.evaluate(eval_params(state), k_evaluate, eval_data))
    scalars = {f"eval/{k}": v for k, v in eval_metrics.items() if isinstance(v, (int, float, np.number))
               and not isinstance(v, bool)}
    writer.write_scalars(step, scalars)
    monitor.say(f"eval at step {step}: {monitor.format_metrics(eval_metrics)}")
    last["eval_step"] = step

  def write_samples(step: int):
    last["sample_step"] = step
    if task.sample is None or jax.process_index() != 0:
      return
    try:
      images.write_samples(workdir, task.sample(eval_params(state), k_sample), writer, step)
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
        first_step, columns = _scalar_columns(pending)
        pending = []
        bad = _first_nonfinite(first_step, columns)
        if bad is not None:
          writer.flush()
          checkpoints.wait()
          kept = f"the last good checkpoint is step {last['saved']}" if last["saved"] is not None \
              else "no checkpoint was saved"
          raise monitor.NonFiniteLossError(f"non-finite {bad[1]} ({bad[2]}) at step {bad[0]}; {kept} in {workdir}")
        interval.add(columns)
        if to_log:
          means = interval.means()
          train_loss = means.get("loss")
          writer.write_scalars(done, means)
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

  final_step = int(state.step)
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
  results["mesh"] = dict(mesh.shape)
  writer.flush()
  checkpoints.close()
  out = results_lib.write_results(workdir, results, config, time.perf_counter() - t0)
  monitor.say(f"final: {monitor.format_metrics({k: v for k, v in out.items() if k not in ('step', 'mesh')})}")
  return Run(state, out)

