"""The one training loop.

    run = research.train.train(task, config, workdir, data, eval_data)

Owns: the device mesh and the shardings of the state (data / FSDP / tensor, from logical
axis names), the jitted and donated step (gradient accumulation inside it; several steps
per call as one `lax.scan`), derived keys, prefetched batches from any random-access
source, asynchronous checkpoints (resume from the latest, bit-identical to an
uninterrupted run; a save on SIGINT/SIGTERM), metric writers with interval averages, the
progress line with FLOP/s and MFU, health metrics, the non-finite stop, periodic
evaluation and samples, and results.json.

A run is read top-down in `train`: set up the state and its sharding (`_Loop.__init__`,
`_Loop.open`), build the programs (`_Loop.build`), run the schedule of log / eval / sample /
checkpoint events (`_Loop.run`), write the results (`_Loop.finish`). A single run and a
sweep take the same path: research.train.members.Engine holds what differs.
"""

import collections
import contextlib
import contextvars
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from research.train import checkpoint as checkpoint_lib
from research.train import images
from research.train import monitor
from research.train import parallel
from research.train import results as results_lib
from research.train import schedule
from research.train.config import ConfigError, changed_fields, check_common, check_workdir
from research.train.evaluation import Evaluator
from research.train.members import Engine, Members, completed_steps
from research.train.step import TrainState
from research.train.task import Task

# Calls dispatched but not finished (see schedule.bound_in_flight).
MAX_CALLS_IN_FLIGHT = 2


class Run(NamedTuple):
  """What `train` returns: the final state and the dict written to results.json."""

  state: TrainState
  results: dict[str, Any]


class Reuse(NamedTuple):
  """A finished run evaluated and sampled again from its checkpoint, not trained (experiments.sample / evaluate)."""

  outdir: str  # where the evaluation, the samples and results.json go (not the run's workdir)
  free: tuple[str, ...] = ()  # config fields that may differ from the run's: the sampler's, not the training's
  seed: int | None = None  # the evaluation and sample keys' seed; None: the run's own (its samples again)


_REUSE: contextvars.ContextVar = contextvars.ContextVar("reuse", default=None)


@contextlib.contextmanager
def reusing(reuse: Reuse):
  """Within it, `train` reuses the workdir's finished run as `reuse` says instead of training."""
  token = _REUSE.set(reuse)
  try:
    yield
  finally:
    _REUSE.reset(token)


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
  reuse = _REUSE.get()
  loop = _Loop(Engine(task, config, members), config, workdir, data)
  loop.open(reuse)
  if reuse is not None:
    return loop.reuse(reuse, eval_data, t0)
  done = loop.finished()
  if done is not None:
    monitor.say(f"{workdir} already holds this run, finished at step {loop.start}: nothing to do "
                f"(its results: {os.path.join(workdir, 'results.json')})")
    loop.checkpoints.close()
    return Run(loop.state, done)
  loop.build()
  evaluator = Evaluator(loop.engine, workdir, eval_data, loop.writer)
  with schedule.Signals() as signals:
    loop.run(evaluator, signals)
  return loop.finish(evaluator, t0)


class _Loop:
  """One call of `train`, in its parts; the attributes are what the parts hand each other."""

  def __init__(self, engine: Engine, config, workdir: str, data):
    """The mesh, the members' data order and the layout of the state (shapes only: nothing compiled)."""
    self.engine, self.config, self.workdir = engine, config, workdir
    self.mesh = parallel.make_mesh(config.mesh)
    self.batchers = engine.batchers(data, jax.process_index(), jax.process_count())
    first_batch = engine.host_batch(self.batchers, 0)
    self.layout = engine.layout(self.mesh, first_batch)
    self.first_batch = parallel.put_batch(first_batch, self.layout.batch)
    self.keys = engine.keys()

  # ---------------------------------------------------------------------------------------
  # 1. The state: restored from the workdir, or initialised.

  def open(self, reuse: Reuse | None = None) -> None:
    """Restores the newest checkpoint (after checking its shapes against this config), or initialises."""
    config, workdir, layout = self.config, self.workdir, self.layout
    checkpoints = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints) \
        if os.path.isdir(os.path.join(workdir, "checkpoints")) else None
    if checkpoints is None and reuse is not None:
      raise ConfigError(f"{workdir} holds no checkpoint to evaluate or sample from")
    abstract = layout.abstract
    if reuse is not None:
      # The checkpoint's traced values are replaced by this config's (see `reuse`), whichever it holds.
      replicated = jax.ShapeDtypeStruct((), jnp.float32, sharding=parallel.replicated(self.mesh))
      stored = checkpoints.stored_hparams()
      abstract = abstract.replace(hparams=None if stored is None else {name: replicated for name in stored})
    if checkpoints is not None:
      # Settings first: a changed field is named before the shapes it changes are compared.
      self._check_config(checkpoints.stored_config(), reuse.free if reuse is not None else ())
      checkpoints.check_compatible(abstract)
    restored = checkpoints.restore(abstract) if checkpoints is not None else None
    if restored is not None:
      self.state, position = restored
      self._check_position(position)
      self._check_config(checkpoints.restored_config, reuse.free if reuse is not None else ())
      monitor.say(f"resuming from step {completed_steps(self.state)} of {workdir}")
    else:
      position = {}
      init = jax.jit(self.engine.init, out_shardings=layout.state)
      self.state = init(self.keys.init, self.first_batch, self.engine.values())
    self.checkpoints = checkpoints or checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
    self.start = completed_steps(self.state)
    self.last_saved = self.start if restored is not None else None
    self.record = schedule.Record(self.engine, position)

  def _check_position(self, position: dict) -> None:
    """Raises ConfigError when the checkpoint was written by another run (seed) or sweep (members)."""
    engine, workdir = self.engine, self.workdir
    if engine.sweep and position.get("members") != engine.members.to_json():
      raise ConfigError(f"the checkpoint in {workdir} was written by another sweep ({position.get('members')}); "
                        "use another --workdir")
    if not engine.sweep and position.get("seed") != self.config.seed:
      raise ConfigError(f"the checkpoint in {workdir} was written with seed {position.get('seed')}, "
                        f"not {self.config.seed}; use another --workdir")

  def _check_config(self, stored, free: tuple[str, ...] = ()) -> None:
    """Raises ConfigError when this config changes what the checkpoint's run trains (its fields named)."""
    changed = [change for change in changed_fields(stored or {}, self.config) if change[0] not in free]
    if changed:
      shown = ", ".join(f"{field} {before!r} (now {after!r})" for field, before, after in changed[:4])
      more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
      raise ConfigError(f"{self.workdir} holds a run trained with other settings: {shown}{more}; rerun with its "
                        "settings to resume it, sample or evaluate it with other sampler settings by "
                        f"python -m experiments.sample (or evaluate) --workdir={self.workdir} --config.FIELD=..., "
                        "or use another --workdir")

  def finished(self) -> dict | None:
    """The results of this very run when the workdir already holds it finished, else None."""
    if self.start < self.config.steps:
      return None
    try:
      with open(os.path.join(self.workdir, "results.json")) as f:
        results = json.load(f)
    except (OSError, ValueError):
      return None
    return results if results.get("step") == self.start else None

  def reuse(self, reuse: Reuse, eval_data, t0: float) -> Run:
    """The final evaluation and samples of the finished run again, into reuse.outdir, with the config's sampler."""
    config, engine, workdir = self.config, self.engine, self.workdir
    if engine.sweep:
      raise ConfigError("a sweep's programs are evaluated by rerunning the sweep; reuse a single run's workdir")
    if self.start < config.steps:
      raise ConfigError(f"{workdir} holds a run stopped at step {self.start} of {config.steps}: "
                        "rerun its command to finish it first")
    if engine.task.hparams:
      # The traced values the sampler reads (a guidance scale, say) are this config's, not the checkpoint's.
      traced = {name: jnp.asarray(value, jnp.float32) for name, value in engine.task.hparams.items()}
      self.state = self.state.replace(hparams={**(self.state.hparams or {}), **traced})
    os.makedirs(reuse.outdir, exist_ok=True)
    self.writer = monitor.make_writer(reuse.outdir)
    evaluator = Evaluator(engine, reuse.outdir, eval_data, self.writer, seed=reuse.seed)
    monitor.say(f"evaluating step {self.start} of {workdir} into {reuse.outdir}")
    evaluator.evaluate(self.state, self.start)
    evaluator.write_samples(self.state, self.start, set())
    results = {"step": self.start, "workdir": os.path.abspath(workdir), **evaluator.metrics}
    if reuse.seed is not None:
      results["sample_seed"] = reuse.seed
    self.writer.close()
    self.checkpoints.close()
    out = results_lib.write_results(reuse.outdir, results, config, time.perf_counter() - t0)
    monitor.say(f"final: {monitor.format_metrics({k: v for k, v in evaluator.metrics.items()})}")
    return Run(self.state, out)

  # ---------------------------------------------------------------------------------------
  # 2. The programs: one step, several steps as a scan (both donate the state), and their FLOPs.

  def build(self) -> None:
    engine, layout, keys = self.engine, self.layout, self.keys
    replicated = parallel.replicated(self.mesh)
    self.programs = {
        # The steps' keys are derived inside the programs: no extra dispatch per step.
        1: jax.jit(lambda state, batch: engine.step(state, batch, keys), donate_argnums=0,
                   in_shardings=(layout.state, layout.batch), out_shardings=(layout.state, replicated)),
        "multi": jax.jit(lambda state, batches: engine.steps(state, batches, keys), donate_argnums=0,
                         in_shardings=(layout.state, layout.batches), out_shardings=(layout.state, replicated)),
    }
    # Model FLOPs of one update (of every member), from the lowered (not compiled) program without microbatching.
    counted = jax.jit(lambda state, batch: engine.counted_step(state, batch, keys))
    self.flops_per_step = monitor.step_flops(counted.lower(layout.abstract, self.first_batch))
    peak = monitor.peak_flops(jax.devices()[0].device_kind)
    self.peak = peak * jax.device_count() if peak else None
    self.writer = monitor.make_writer(self.workdir)
    self.progress = monitor.Progress(self.config.steps, self.start)

  def _fetch(self, start: int, count: int):
    """The batches of one call, gathered on the host and sent to the devices (in the prefetch thread)."""
    if count == 1:
      return parallel.put_batch(self.engine.host_batch(self.batchers, start), self.layout.batch)
    return parallel.put_batch(self.engine.host_batches(self.batchers, start, count), self.layout.batches)

  # ---------------------------------------------------------------------------------------
  # 3. The schedule: calls of up to steps_per_call steps, each ending at the events it reaches.

  def run(self, evaluator: Evaluator, signals: schedule.Signals) -> None:
    config, start = self.config, self.start
    pending: list[tuple[int, dict, int]] = []  # calls whose metrics are not checked yet
    in_flight = collections.deque()
    prefetcher = schedule.Prefetcher(self._fetch, schedule.chunks(start, config.steps, config), config.prefetch)
    if start < config.steps:
      monitor.say(f"training steps {start}..{config.steps}: compiling the step first")
    try:
      for first, count, batch in prefetcher:
        self.state, metrics = self.programs[1 if count == 1 else "multi"](self.state, batch)
        if first == start:
          # Rates and ETAs count from the end of the first (compiling) call.
          jax.block_until_ready(self.state)
          self.progress.restart(first + count)
        pending.append((first, metrics, count))
        schedule.bound_in_flight(in_flight, metrics, MAX_CALLS_IN_FLIGHT)
        events = schedule.Events.at(first + count, config, stop=signals.received is not None)
        if events.any:
          self.checkpoints.check()  # a save that failed in the background stops the run here
          self._check(pending)
          pending = []
          self._on(events, evaluator)
        if events.stop:
          self.checkpoints.wait()
          self.writer.flush()
          raise schedule.interrupted(signals.received, events.done, self.checkpoints.directory)
    finally:
      prefetcher.close()

  def _check(self, pending: list[tuple[int, dict, int]]) -> None:
    """Adds the calls' metrics to the record; stops with the step once no member is finite."""
    bad = self.record.add(pending)
    if bad is not None:
      self.writer.flush()
      self.checkpoints.wait()
      kept = f"the last good checkpoint is step {self.last_saved}" if self.last_saved is not None \
          else "no checkpoint was saved"
      raise monitor.NonFiniteLossError(f"non-finite {bad[1]} ({bad[2]}) at step {bad[0]}; {kept} in {self.workdir}")

  def _on(self, events: schedule.Events, evaluator: Evaluator) -> None:
    """Logs, saves, evaluates and writes samples, as the step's events say."""
    if events.log:
      scalars = self.record.log()
      self.writer.write_scalars(events.done, scalars)
      train_loss = self.record.train_loss
      self.progress.report(events.done, train_loss if train_loss is not None else float("nan"),
                           self.flops_per_step, self.peak)
    if events.save or events.stop:
      self.save(events.done)
    if events.evaluate:
      evaluator.evaluate(self.state, events.done)
    if events.sample:
      evaluator.write_samples(self.state, events.done, self.record.diverged)

  def save(self, step: int) -> None:
    self.checkpoints.save(step, self.state, self.record.position(step, self.config.seed), self.config)
    self.last_saved = step

  # ---------------------------------------------------------------------------------------
  # 4. The results: the final evaluation and samples, rates, results.json.

  def finish(self, evaluator: Evaluator, t0: float) -> Run:
    config, engine = self.config, self.engine
    final_step = completed_steps(self.state)
    results: dict[str, Any] = {"step": final_step, "train_loss": self.record.train_loss}
    results.update(self._rates())
    if self.last_saved is None:
      self.save(final_step)  # a run of no steps still leaves its (initial) state
    if evaluator.evaluated_step != final_step:
      if engine.task.evaluate is not None:
        monitor.say(f"evaluating at step {final_step}")
      evaluator.evaluate(self.state, final_step)
    schedule.raise_pending()
    if evaluator.sampled_step != final_step:
      evaluator.write_samples(self.state, final_step, self.record.diverged)
    schedule.raise_pending()
    results.update(evaluator.metrics)
    if engine.sweep:
      results["members"] = self.record.members(evaluator.member_metrics)
    results["mesh"] = dict(self.mesh.shape)
    self.writer.close()
    if jax.process_index() == 0:
      try:
        images.write_curves(self.workdir)
      except Exception as e:  # pylint: disable=broad-except  # a picture must never cost the run its results
        monitor.say(f"warning: could not draw curves.png: {type(e).__name__}: {e}")
    self.checkpoints.close()
    out = results_lib.write_results(self.workdir, results, config, time.perf_counter() - t0)
    monitor.say(f"final: {monitor.format_metrics({k: v for k, v in out.items() if k not in ('step', 'mesh')})}")
    return Run(self.state, out)

  def _rates(self) -> dict[str, float]:
    """Steps, FLOPs per second and MFU of the steps after the first (compiling) call."""
    steps, rates = self.config.steps, {}
    if steps > self.start + 1:
      rates["steps_per_second"] = self.progress.steps_per_second(steps)
      monitor.say(f"trained steps {self.start}..{steps} at {rates['steps_per_second']:.1f} steps/s "
                  "(after the first, compiling call)")
    if self.flops_per_step:
      rates["flops_per_step"] = self.flops_per_step
      if "steps_per_second" in rates:
        rates["flops_per_second"] = self.flops_per_step * rates["steps_per_second"]
        if self.peak:
          rates["mfu"] = rates["flops_per_second"] / self.peak
    return rates
