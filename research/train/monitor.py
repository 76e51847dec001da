"""Logging for the loop: clu metric writers (TensorBoard + console) and a progress line."""

import datetime
import math
import sys
import time

import jax


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the message names the step."""


def make_writer(workdir: str):
  """A clu MetricWriter: TensorBoard event files in `workdir` plus console lines, from process 0 only."""
  # clu's TensorBoard writer pulls in TensorFlow: imported here, so the library (scans, sweeps)
  # imports without it.
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0, asynchronous=False)


def say(message: str) -> None:
  """Prints one line to stderr on process 0 (events a user must see, whatever the log level)."""
  if jax.process_index() == 0:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class Progress:
  """Prints `step s/N [####....] steps/s ETA loss` lines to stderr at each report."""

  def __init__(self, total: int, start: int, width: int = 24):
    self.total, self.start, self.width = total, start, width
    self._t0 = time.perf_counter()
    self._enabled = jax.process_index() == 0

  def restart(self, step: int) -> None:
    """Measures rates from `step` on (e.g. after the first step, which includes compilation)."""
    self.start, self._t0 = step, time.perf_counter()

  def steps_per_second(self, step: int) -> float:
    elapsed = time.perf_counter() - self._t0
    return (step - self.start) / elapsed if elapsed > 0 and step > self.start else float("nan")

  def report(self, step: int, loss: float) -> str:
    rate = self.steps_per_second(step)
    eta = (self.total - step) / rate if rate > 0 else math.nan
    eta_text = str(datetime.timedelta(seconds=round(eta))) if math.isfinite(eta) else "?"
    done = int(self.width * step / max(self.total, 1))
    line = (f"step {step}/{self.total} [{'#' * done}{'.' * (self.width - done)}] "
            f"{rate:.1f} steps/s  ETA {eta_text}  loss {loss:.5g}")
    if self._enabled:
      sys.stderr.write(line + "\n")
      sys.stderr.flush()
    return line
