"""Logging for the loop: TensorBoard event files, console lines and a progress line."""

import contextlib
import datetime
import math
import sys
import time

import jax


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the message names the step."""


class Interrupted(RuntimeError):
  """SIGINT or SIGTERM stopped the run after saving a checkpoint; the message says where."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


# Dense bf16 peak FLOP/s per chip, by the start of jax's device_kind (MFU is against these).
PEAK_FLOPS = (
    ("NVIDIA H200", 989e12),
    ("NVIDIA H100", 989e12),
    ("NVIDIA A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
)


def peak_flops(device_kind: str) -> float | None:
  """The bf16 peak of one device of this kind, or None where unknown (CPUs)."""
  for prefix, flops in PEAK_FLOPS:
    if device_kind.startswith(prefix):
      return flops
  return None


def step_flops(lowered) -> float | None:
  """Model FLOPs of one step from XLA's cost analysis of its lowered program (None if unavailable).

  Loops inside the step (a lax.scan over microbatches or critic updates) count once, as
  XLA's analysis counts a loop body once; the loop lowers its step without microbatches and
  with scanned blocks unrolled (research.models.layers.unrolled_block_scans) for this.
  """
  try:
    cost = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def format_metrics(metrics, limit: int = 12) -> str:
  """`name value, ...` of the numeric scalars of `metrics` (for one summary line)."""
  parts = []
  for name, value in metrics.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    parts.append(f"{name} {value:.5g}" if isinstance(value, float) else f"{name} {value}")
  return ", ".join(parts[:limit])


def make_writer(workdir: str):
  """TensorBoard event files in `workdir` (research/train/tensorboard.py, no TensorFlow), from process 0 only."""
  from research.train import tensorboard  # pylint: disable=import-outside-toplevel
  return tensorboard.SummaryWriter(workdir) if jax.process_index() == 0 else tensorboard.NullWriter()


_quiet = 0  # depth of `quiet()` blocks: console lines are dropped inside any


@contextlib.contextmanager
def quiet():
  """Drops `say` and progress lines inside the block: a helper run (a feature network trained on
  first use) inside another run keeps to the one line announcing it. Events, checkpoints and
  results are written as ever."""
  global _quiet
  _quiet += 1
  try:
    yield
  finally:
    _quiet -= 1


_labels: list[str] = []  # `labelled` blocks: their names lead every console line


@contextlib.contextmanager
def labelled(label: str):
  """Leads every console line inside the block with `[label] ` (a pipeline's stage names its lines)."""
  _labels.append(label)
  try:
    yield
  finally:
    _labels.pop()


def _lead() -> str:
  return "".join(f"[{label}] " for label in _labels)


def say(message: str) -> None:
  """Prints one line to stderr on process 0 (events a user must see, whatever the log level)."""
  if jax.process_index() == 0 and not _quiet:
    sys.stderr.write(_lead() + message + "\n")
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

  def report(self, step: int, loss: float, flops_per_step: float | None = None,
             peak: float | None = None) -> str:
    """Prints and returns the progress line; with the step's FLOPs it shows FLOP/s (and MFU with a peak)."""
    rate = self.steps_per_second(step)
    eta = (self.total - step) / rate if rate > 0 else math.nan
    eta_text = str(datetime.timedelta(seconds=round(eta))) if math.isfinite(eta) else "?"
    done = int(self.width * step / max(self.total, 1))
    line = (f"step {step}/{self.total} [{'#' * done}{'.' * (self.width - done)}] "
            f"{rate:.1f} steps/s  ETA {eta_text}  loss {loss:.5g}")
    if flops_per_step and math.isfinite(rate):
      line += f"  {flops_per_step * rate / 1e9:.3g} GFLOP/s"
      if peak:
        line += f"  MFU {flops_per_step * rate / peak:.1%}"
    if self._enabled and not _quiet:
      sys.stderr.write(_lead() + line + "\n")
      sys.stderr.flush()
    return line
