"""The loop's schedule: which steps each call runs, the batches fetched ahead, the signals it
stops on, and the host-side record of the metrics between log steps."""

import collections
import concurrent.futures
import math
import os
import signal
import sys
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from research.train import monitor


class Events(NamedTuple):
  """What happens after the call that completed step `done`."""

  done: int
  log: bool
  save: bool
  evaluate: bool
  sample: bool
  stop: bool  # a signal arrived

  @classmethod
  def at(cls, done: int, config, stop: bool) -> "Events":
    return cls(done=done, log=done % config.log_every == 0 or done == config.steps,
               save=done % config.checkpoint_every == 0 or done == config.steps,
               evaluate=config.eval_every > 0 and done % config.eval_every == 0,
               sample=config.sample_every > 0 and done % config.sample_every == 0, stop=stop)

  @property
  def any(self) -> bool:
    return self.log or self.save or self.evaluate or self.sample or self.stop


def chunks(start: int, steps: int, config):
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


class Prefetcher:
  """Gathers and transfers the batches of the next calls in a background thread."""

  def __init__(self, fetch, calls, depth: int):
    self._fetch, self._calls, self._depth = fetch, iter(calls), depth
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prefetch") if depth else None
    self._queue = collections.deque()

  def __iter__(self):
    return self

  def __next__(self):
    if self._pool is None:
      start, count = next(self._calls)
      return start, count, self._fetch(start, count)
    while len(self._queue) < self._depth + 1:
      call = next(self._calls, None)
      if call is None:
        break
      self._queue.append((call, self._pool.submit(self._fetch, *call)))
    if not self._queue:
      raise StopIteration
    (start, count), future = self._queue.popleft()
    return start, count, future.result()

  def close(self):
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)


class Stop(BaseException):
  """SIGINT or SIGTERM arrived outside the training calls: raised where the program was.

  A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it.
  """

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def exit_at_once(signum: int) -> None:
  """A second signal: one line, and the process ends now (a save in flight stays a temporary directory,
  which the next run's checkpointer removes; the checkpoints before it are whole)."""
  sys.stderr.write(f"error: interrupted a second time ({signal.Signals(signum).name}): stopped at once; "
                   "the checkpoints saved before are kept\n")
  sys.stderr.flush()
  os._exit(128 + signum)  # pylint: disable=protected-access  # no interpreter teardown under live save threads


_PENDING: int | None = None  # a signal the whole-run handler raised as Stop, until the run ends


def raise_pending() -> None:
  """Raises `Stop` again for a signal whose first `Stop` Python swallowed.

  A signal handler's exception lands wherever the interpreter was, and where that is a garbage
  collector's callback or a `__del__`, Python prints it as "Exception ignored" and goes on. The
  run checks here before it writes anything final, so such a signal still stops it.
  """
  if _PENDING is not None:
    raise Stop(_PENDING)


def _handles_signals() -> bool:
  return jax.process_count() == 1 and threading.current_thread() is threading.main_thread()


class Signals:
  """Turns SIGINT and SIGTERM into a flag the loop checks after each call (single process only).

  With `raise_stop`, the whole run's handler instead (research.train.cli installs it around
  `run`): the first signal raises `Stop` wherever the program is (compiling, evaluating, sampling,
  writing), the loop's own flag-raising `Signals` taking over during its training calls. Either
  way a second signal exits at once. Several processes must all stop at the same step, which a
  per-process handler cannot promise; there the default handlers stay (and SIGTERM ends the job
  as before).
  """

  def __init__(self, raise_stop: bool = False):
    self.received: int | None = None
    self._raise_stop = raise_stop
    self._previous = {}

  def __enter__(self):
    global _PENDING
    if _handles_signals():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
      if self._raise_stop:
        _PENDING = None
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
      else:
        self.received = _PENDING  # a swallowed Stop: the loop stops at its first boundary
    return self

  def _handle(self, signum, frame):
    global _PENDING
    del frame
    if self.received is not None:  # a second signal: stop now
      exit_at_once(signum)
    self.received = signum
    if self._raise_stop:
      _PENDING = signum
      raise Stop(signum)

  def _unraisable(self, unraisable) -> None:
    """Stop raised inside a callback Python cannot raise from: kept pending (raise_pending), not printed."""
    if not isinstance(unraisable.exc_value, Stop):
      self._previous_hook(unraisable)

  def __exit__(self, *exc):
    global _PENDING
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    if self._raise_stop and self._previous:
      sys.unraisablehook = self._previous_hook
      _PENDING = None
    return False


class Interval:
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


def scalar_columns(calls: list[tuple[int, dict, int]], members: int = 0) -> tuple[int, dict[str, np.ndarray]]:
  """Fetches the scalar metrics of consecutive calls (first step, metrics, steps) in one device_get.

  Args:
    calls: the calls' (first step, metrics, number of steps).
    members: the sweep's member count (0: a single run, whose metrics have no member axis).

  Returns:
    (first step, {name: (steps,) float64, or (steps, members) for a sweep}).
  """
  first, metrics, count = calls[0]
  tail = (members,) if members else ()
  names = [k for k, v in metrics.items() if jnp.ndim(v) == (0 if count == 1 else 1) + len(tail)]
  # One fetch of every call's scalars, joined on the host: joining on the device would dispatch
  # an operation per call and metric (thousands per log step).
  fetched = jax.device_get([[m[name] for name in names] for _, m, _ in calls])
  return first, {name: np.concatenate([np.reshape(row[i], (-1,) + tail) for row in fetched]).astype(np.float64)
                 for i, name in enumerate(names)}


def first_nonfinite(first_step: int, columns: dict[str, np.ndarray]) -> tuple[int, str, float] | None:
  """The earliest (step, metric, value) that is NaN or infinite; steps count completed updates."""
  worst = None
  for name, column in columns.items():
    bad = np.flatnonzero(~np.isfinite(column))
    if bad.size and (worst is None or bad[0] < worst[0] or (bad[0] == worst[0] and name == "loss")):
      worst = (int(bad[0]), name, float(column[bad[0]]))
  return None if worst is None else (first_step + worst[0] + 1, worst[1], worst[2])


def bound_in_flight(in_flight: collections.deque, metrics, limit: int) -> None:
  """Queues a call's metrics and waits for the oldest once more than `limit` calls are dispatched.

  Unbounded, the host would queue thousands of steps (and their collectives) ahead of the
  devices; XLA's CPU collectives then time out.
  """
  in_flight.append(metrics)
  if len(in_flight) > limit:
    jax.block_until_ready(in_flight.popleft())


def interrupted(signum: int, done: int, directory: str) -> monitor.Interrupted:
  """The exception a run stopped by a signal raises once its checkpoint is on disk."""
  name = signal.Signals(signum).name
  return monitor.Interrupted(f"interrupted by {name} at step {done}: saved a checkpoint in {directory}; "
                             "run the same command to resume", signum)


class Record:
  """What the host keeps of the metrics between log steps, carried in each checkpoint's data position.

  A run killed after its final checkpoint but before results.json reports the same loss
  when the command is run again, and a resumed sweep still knows which members diverged.
  """

  def __init__(self, engine, position: dict):
    self.engine = engine
    self.interval = Interval(position.get("interval"))
    self.train_loss: float | None = position.get("train_loss")  # the last logged training loss
    self.member_losses = np.asarray(position["member_losses"], np.float64) if "member_losses" in position else None
    # member -> its first non-finite (step, metric, value)
    self.diverged: dict[int, tuple[int, str, float]] = {int(i): tuple(v)
                                                        for i, v in position.get("diverged", {}).items()}

  def position(self, step: int, seed: int) -> dict:
    """The data position a checkpoint of `step` holds."""
    position = {"step": step, "seed": seed, "interval": self.interval.to_json(), "train_loss": self.train_loss}
    if self.member_losses is not None:
      position["member_losses"] = np.asarray(self.member_losses, np.float64).tolist()
    if self.engine.sweep:
      position["members"] = self.engine.members.to_json()
      position["diverged"] = {str(i): list(v) for i, v in self.diverged.items()}
    return position

  def add(self, calls: list[tuple[int, dict, int]]) -> tuple[int, str, float] | None:
    """Adds the calls' scalar metrics to the interval; returns the worst non-finite value once no member is finite.

    A member whose metrics turn non-finite is reported (in a sweep) and left out from then on.
    """
    engine = self.engine
    first_step, columns = scalar_columns(calls, engine.axis)
    for i in range(engine.count):
      if i in self.diverged:
        continue
      bad = first_nonfinite(first_step, engine.member(columns, i, axis=1))
      if bad is not None:
        self.diverged[i] = bad
        if engine.sweep:
          monitor.say(f"member {i} (seed {engine.members.seeds[i]}, {engine.members.values(i)}) stopped being "
                      f"finite: {bad[1]} = {bad[2]} at step {bad[0]}; the others go on")
    if len(self.diverged) == engine.count:
      return min(self.diverged.values())
    self.interval.add(columns)
    return None

  def log(self) -> dict[str, float]:
    """The interval's means as logged (a sweep's: the mean over finite members, and each member's loss); restarts it."""
    means = self.interval.means()
    self.interval = Interval()
    if not self.engine.sweep:
      self.train_loss = means.get("loss")
      return means
    self.member_losses = means.get("loss")
    scalars = {}
    for name, values in means.items():
      finite = [v for i, v in enumerate(values.tolist()) if i not in self.diverged]
      scalars[name] = float(np.mean(finite)) if finite else math.nan
    for i, value in enumerate(means.get("loss", np.zeros(0)).tolist()):
      scalars[f"members/loss_{i}"] = value
    self.train_loss = scalars.get("loss")
    return scalars

  def members(self, evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """results.json's `members`: each one's seed, values, last logged loss (or the step it diverged) and evaluation."""
    members, losses = self.engine.members, self.member_losses
    return [{"seed": int(seed), "values": members.values(i),
             "train_loss": None if losses is None or i in self.diverged else float(losses[i]),
             **({"diverged_at_step": self.diverged[i][0]} if i in self.diverged else {}),
             **(evaluations[i] if evaluations else {})}
            for i, seed in enumerate(members.seeds)]
