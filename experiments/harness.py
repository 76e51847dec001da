"""What every paper table and benchmark shares: its command line, its report, its Markdown and its timer.

A table or benchmark is a script like an experiment (research/train/cli.py): `get_config(preset)`
(an ml_collections config, one comment per field, a "smoke" preset for tests), `run(config,
outdir) -> dict` (checks the config, raising ConfigError, then measures and writes the report) and
`cli.main(__file__, run, dir_flag="outdir")` as its main block. So `--config=<script>.py:smoke`
picks a preset, `--config.<field>=...` overrides a field and `--outdir` names the report's
directory; bad input is one line on stderr and exit code 2, before anything is written. Tests and
notebooks import `run`.

Report. `write_report` writes `<name>.md` (the table, with the command that produced it), a JSON
file of the measurements (`results.json` for tables, `<name>.json` for benchmarks) and for tables
`<name>.png`, all into the outdir. The JSON holds the script's metrics plus, recorded here so no
script retypes them: `command`, `config` (if any), `versions`, `devices` and `wall_time_s` (if
given). `document` starts the Markdown with the title and the command; `table` builds every
Markdown table; `mean_se` and `pm` give the mean ± standard error the tables print.

Timer. `compare(sides, repeats)` times the sides of a benchmark: each repeat measures every side
once, in an order rotated from repeat to repeat (so a drift in the host's load spreads over all of
them), after that side's untimed warm-up and with its PyTorch thread count set; the result holds
every measurement, the rates, the ratio of two sides in each repeat and their medians, and records
the repeats, the order, the thread counts and the host's load average at the start and the end. A
new benchmark is its two step functions and a few lines:

    timings = harness.compare({"jax": harness.steps(jax_step, config.steps, warmup=1),
                               "torch": harness.steps(torch_step, config.steps, warmup=1, torch_threads=1)},
                              config.repeats)
    ratio = timings.median_ratio("jax", "torch")  # > 1: jax does more steps per second

(experiments/bench/steps.py has the training steps of both sides.) torch is imported only when a
side names its thread count.
"""

import dataclasses
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any, NamedTuple

import jax
import numpy as np

from research.train import ConfigError, cli, results


# ---------------------------------------------------------------------------------------
# The report.


def command() -> str:
  """The command line that started this process, the way a reader would retype it.

  `python -m <module> <args>` for a module run with -m, else `python <script> <args>`; the
  arguments are shell-quoted, so the string reruns the same command.
  """
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  argv = cli.typed_argv()
  program = ["-m", spec.name] if spec is not None else [argv[0]]
  return shlex.join(["python", *program, *argv[1:]])


def environment(*packages: str) -> dict[str, Any]:
  """`research.train.results.environment()` plus the host's CPU count and the versions of `packages`.

  Args:
    *packages: distribution names (as pip knows them, e.g. "scikit-learn", "torch") of the peers a
      benchmark compares with; a package that is not installed is recorded as None.

  Returns:
    {"versions": {"jax": ..., "flax": ..., "optax": ..., <package>: ...},
     "devices": {"count", "kind", "platform", "processes", "cpu_count"}}.
  """
  env = results.environment()
  for package in packages:
    try:
      env["versions"][package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      env["versions"][package] = None
  # CPU timings (and the peers' thread pools) depend on the host's cores, not only on the device.
  env["devices"]["cpu_count"] = os.cpu_count()
  return env


def write_report(outdir: str, name: str, metrics: Mapping[str, Any], markdown: str, *, figure=None,
                 config=None, wall_time_s: float | None = None, json_file: str = "results.json",
                 packages: Sequence[str] = ()) -> dict[str, Any]:
  """Writes `<outdir>/<name>.md`, `<outdir>/<json_file>` and, given a figure, `<outdir>/<name>.png`.

  Only process 0 writes; every process returns the same dict.

  Args:
    outdir: the output directory (created if missing).
    name: the report's name: the stem of the Markdown and PNG files.
    metrics: the measurements; arrays become lists, NaN and infinities null. Must not use the
      keys recorded here.
    markdown: the Markdown text.
    figure: a `matplotlib.figure.Figure`, saved at its own dpi.
    config: the ml_collections config the numbers came from, stored as a plain dict.
    wall_time_s: the wall time to record, in seconds.
    json_file: the JSON file's name: "results.json" for tables, "<name>.json" for benchmarks.
    packages: distribution names whose versions are recorded beside jax/flax/optax.

  Returns:
    The dict written as JSON: the metrics, then `command`, `config`, `versions`, `devices`
    and `wall_time_s`.
  """
  recorded = {"command": command()}
  if config is not None:
    recorded["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  recorded.update(environment(*packages))
  if wall_time_s is not None:
    recorded["wall_time_s"] = round(float(wall_time_s), 3)
  clash = sorted(set(metrics) & set(recorded))
  if clash:
    raise ValueError(f"metrics use keys the report records itself: {clash}")
  out = results.to_json({**metrics, **recorded})
  if jax.process_index() == 0:
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, json_file)
    with open(path + ".tmp", "w") as f:
      json.dump(out, f, indent=2, allow_nan=False)
      f.write("\n")
    os.replace(path + ".tmp", path)
    with open(os.path.join(outdir, f"{name}.md"), "w") as f:
      f.write(markdown if markdown.endswith("\n") else markdown + "\n")
    if figure is not None:
      figure.savefig(os.path.join(outdir, f"{name}.png"))
  return out


# ---------------------------------------------------------------------------------------
# Markdown.


def document(title: str, *blocks: str) -> str:
  """A report's Markdown: `# title`, the command that produced it, then the blocks (empty ones left out).

  Args:
    title: the heading.
    *blocks: paragraphs, tables and sub-headings, each set apart by a blank line.

  Returns:
    The text, ending in a newline.
  """
  parts = [f"# {title}", f"Command: `{command()}`", *(block.strip("\n") for block in blocks if block)]
  return "\n\n".join(parts) + "\n"


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], align: str = "") -> str:
  """A Markdown table: the header, the rule, one line per row.

  Args:
    header: the column titles.
    rows: the cells of each row (str() of each), as many as the header's.
    align: one letter per column, "l" (left, the default) or "r" (right: numbers).

  Returns:
    The table's lines, without a trailing newline.

  Raises:
    ValueError: if `align` or a row does not match the header's length.
  """
  align = align or "l" * len(header)
  if len(align) != len(header) or set(align) - {"l", "r"}:
    raise ValueError(f"align {align!r} must give l or r for each of {len(header)} columns")
  rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
  lines = ["| " + " | ".join(map(str, header)) + " |", rule]
  for row in rows:
    if len(row) != len(header):
      raise ValueError(f"a row of {len(row)} cells under {len(header)} columns: {row}")
    lines.append("| " + " | ".join(map(str, row)) + " |")
  return "\n".join(lines)


def check_names(field: str, values: Sequence[str], choices: Sequence[str]) -> None:
  """Raises ConfigError unless `values` (a tuple field) names at least one of `choices`, each once.

  A tuple of strings is given on the command line as repeated flags (--config.models=vae
  --config.models=gan) or as one Python tuple (--config.models="('vae', 'gan')"); "vae,gan"
  is one string, and the error says so.
  """
  values = list(values)
  if not values:
    raise ConfigError(f"{field} must name at least one of: {', '.join(choices)}")
  for value in values:
    if value not in choices:
      hint = (f" (a list is given as repeated --config.{field}=... flags, or as one tuple)"
              if isinstance(value, str) and "," in value else "")
      raise ConfigError(f"unknown {field} value {value!r}; choose from: {', '.join(choices)}{hint}")
  if len(set(values)) != len(values):
    raise ConfigError(f"{field} names a value twice: {', '.join(values)}")


def check_counts(field: str, values: Sequence[int]) -> None:
  """Raises ConfigError unless `values` (a tuple field) is one or more positive integers."""
  if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
    raise ConfigError(f"{field} must be positive integers, got {values}")


def mean_se(values) -> tuple[float, float]:
  """Mean and standard error of the mean (NaN for a single value)."""
  values = np.asarray(values, np.float64)
  se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
  return float(values.mean()), float(se)


def pm(mean_and_se: tuple[float, float], digits: int = 2, scale: float = 1.0) -> str:
  """"mean ± se" with `digits` decimals (times `scale`), or the mean alone where the error is not finite."""
  mean, se = (scale * v for v in mean_and_se)
  return f"{mean:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{mean:.{digits}f}"


def kid(metrics: Mapping[str, Any], prefix: str = "", suffix: str = "") -> str:
  """KID ± its standard error from a sample metrics dict ("<prefix>kid<suffix>", "<prefix>kid_se<suffix>").

  In 3 and 2 significant figures: KID's scale differs by orders of magnitude between feature spaces.
  """
  return f"{metrics[prefix + 'kid' + suffix]:.3g} ± {metrics[prefix + 'kid_se' + suffix]:.2g}"


def order_disagreements(first: Mapping[str, float], second: Mapping[str, float]) -> list[tuple[str, str]]:
  """The pairs of rows two scores order differently: (a, b) where `first` puts a below b and `second` above.

  Args:
    first, second: {row: score} over the same rows (e.g. FID in two feature spaces).

  Returns:
    [(a, b)] in the rows' order, a before b; ties and non-finite scores order nothing.
  """
  rows = list(first)
  out = []
  for i, a in enumerate(rows):
    for b in rows[i + 1:]:
      sign = np.sign(first[a] - first[b]) * np.sign(second[a] - second[b])
      if sign < 0:  # NaN compares as no order
        out.append((a, b) if first[a] < first[b] else (b, a))
  return out


def disagreement_note(what: str, first: Mapping[str, float], second: Mapping[str, float],
                      names: tuple[str, str] = ("MLP", "conv")) -> str:
  """One sentence: which pairs of rows the two spaces order differently by `what`, or that they agree."""
  pairs = order_disagreements(first, second)
  if not pairs:
    return f"{what}: the {names[0]} and {names[1]} spaces order every pair alike."
  return (f"{what}: the {names[0]} and {names[1]} spaces order {len(pairs)} pair(s) differently: "
          + "; ".join(f"{a} below {b} in {names[0]} ({first[a]:.3g} < {first[b]:.3g}), above in {names[1]} "
                      f"({second[a]:.3g} vs {second[b]:.3g})" for a, b in pairs) + ".")


def machine(env: Mapping[str, Any], load_average: Mapping[str, float], packages: Sequence[str] = ("jax",)) -> str:
  """The sentence a benchmark reports its machine in: cores, load average, devices and versions.

  Args:
    env: `environment(...)`'s dict.
    load_average: {"start", "end"}: the 1-minute load average around the measurements.
    packages: names of env["versions"] to cite.
  """
  devices, versions = env["devices"], env["versions"]
  return (f"Machine: {devices['cpu_count']} CPU cores shared with other work (1-minute load average "
          f"{load_average['start']:.1f} at the start, {load_average['end']:.1f} at the end), {devices['count']} "
          f"{devices['platform']} device(s) ({devices['kind']}); "
          + ", ".join(f"{name} {versions[name]}" for name in packages) + ".")


# ---------------------------------------------------------------------------------------
# The timer.


class Timing(NamedTuple):
  """One measurement of one side: `work` units (steps, images, tokens, calls) in `seconds`."""

  seconds: float
  work: float = 1.0
  info: Any = None  # whatever else the side reports of this measurement (losses, steps cut short, ...)

  @classmethod
  def from_rate(cls, rate: float, info: Any = None) -> "Timing":
    """A measurement known by its rate (e.g. a run's own steps_per_second): one unit in 1 / rate seconds."""
    return cls(1.0 / rate, 1.0, info)

  @property
  def rate(self) -> float:
    return self.work / self.seconds


@dataclasses.dataclass(frozen=True)
class Side:
  """One side of a comparison.

  Attributes:
    measure: runs one timed measurement; returns a Timing, or the seconds of one unit of work.
    warmup: untimed, right before every measurement (e.g. a step that refills caches), or None.
    torch_threads: torch.set_num_threads before the warm-up and the measurement (PyTorch sides), or None.
  """

  measure: Callable[[], "Timing | float"]
  warmup: Callable[[], Any] | None = None
  torch_threads: int | None = None


def call_times(fn: Callable[[], Any], calls: int) -> list[float]:
  """The seconds of each of `calls` calls of `fn` (which must wait for its own result)."""
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def steps(step: Callable[[], Any], count: int, warmup: int = 0, torch_threads: int | None = None) -> Side:
  """A side that calls `step` `count` times per measurement, after `warmup` untimed calls.

  Each call is timed alone (so `step` must wait for its result); the measurement is the median
  call: one unit of work in the median call's seconds.
  """
  return Side(measure=lambda: Timing(statistics.median(call_times(step, count))),
              warmup=(lambda: call_times(step, warmup)) if warmup else None, torch_threads=torch_threads)


def host_threads() -> tuple[int, ...]:
  """The thread counts a PyTorch peer is timed at by default: the host's cores, and 1.

  A pool spanning every core can stall while other work holds one of them, so a benchmark times
  both and compares the faster one in each repeat (`Timings.best_rates`).
  """
  return tuple(dict.fromkeys((os.cpu_count() or 1, 1)))


def rotated(items: Sequence, r: int) -> list:
  """`items` starting at position r (mod its length): repeat r's order."""
  items = list(items)
  return items[r % len(items):] + items[:r % len(items)]


def load_average() -> float:
  """The host's 1-minute load average (NaN where the platform has none)."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return math.nan


@dataclasses.dataclass
class Timings:
  """What `compare` measured.

  Attributes:
    measurements: side -> its Timing of each repeat.
    torch_threads: side -> the PyTorch thread count it ran at (PyTorch sides only).
    load_average: {"start", "end"}: the host's 1-minute load average around the repeats.
  """

  measurements: dict[str, list[Timing]]
  torch_threads: dict[str, int]
  load_average: dict[str, float]

  @property
  def repeats(self) -> int:
    return len(next(iter(self.measurements.values())))

  def rates(self, name: str) -> list[float]:
    """Units of work per second of each repeat."""
    return [t.rate for t in self.measurements[name]]

  def seconds(self, name: str) -> list[float]:
    """Seconds per unit of work of each repeat."""
    return [t.seconds / t.work for t in self.measurements[name]]

  def info(self, name: str) -> list:
    return [t.info for t in self.measurements[name]]

  def median_rate(self, name: str) -> float:
    return statistics.median(self.rates(name))

  def median_seconds(self, name: str) -> float:
    return statistics.median(self.seconds(name))

  def best_rates(self, names: str | Sequence[str]) -> list[float]:
    """Per repeat, the highest rate among `names` (e.g. a PyTorch side's thread settings)."""
    names = [names] if isinstance(names, str) else list(names)
    return [max(rates) for rates in zip(*(self.rates(n) for n in names))]

  def best_seconds(self, names: str | Sequence[str]) -> list[float]:
    """Per repeat, the fewest seconds per unit of work among `names`: 1 / best_rates(names)."""
    return [1.0 / rate for rate in self.best_rates(names)]

  def ratios(self, name: str, against: str | Sequence[str]) -> list[float]:
    """Per repeat, `name`'s rate over the best rate of `against` (above 1: `name` is faster)."""
    return [a / b for a, b in zip(self.rates(name), self.best_rates(against))]

  def median_ratio(self, name: str, against: str | Sequence[str]) -> float:
    return statistics.median(self.ratios(name, against))

  def record(self) -> dict[str, Any]:
    """How the measurements were taken, for the report's JSON."""
    return {"repeats": self.repeats, "order": "rotated from repeat to repeat", "load_average": self.load_average,
            "torch_threads": self.torch_threads, "cpu_count": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def compare(sides: Mapping[str, Side], repeats: int, *, label: str = "", unit: str = "/s") -> Timings:
  """Times every side once per repeat, in an order rotated from repeat to repeat.

  Args:
    sides: name -> Side; repeat r starts at the r-th (mod their number).
    repeats: measurements of every side.
    label: if given, a progress line per repeat, "<label> repeat r: <side> <rate><unit>, ...", on stdout.
    unit: the progress line's unit of rate.

  Returns:
    The Timings.
  """
  if repeats < 1 or not sides:
    raise ValueError(f"compare needs at least one side and one repeat, got {len(sides)} and {repeats}")
  threads = {name: side.torch_threads for name, side in sides.items() if side.torch_threads is not None}
  start = load_average()
  measurements = {name: [] for name in sides}
  for r in range(repeats):
    for name in rotated(list(sides), r):
      side = sides[name]
      if side.torch_threads is not None:
        import torch  # pylint: disable=import-outside-toplevel
        torch.set_num_threads(side.torch_threads)
      if side.warmup is not None:
        side.warmup()
      timing = side.measure()
      measurements[name].append(timing if isinstance(timing, Timing) else Timing(float(timing)))
    if label:
      print(f"{label} repeat {r}: " + ", ".join(f"{name} {measurements[name][-1].rate:,.4g}{unit}" for name in sides),
            flush=True)
  return Timings(measurements, threads, {"start": start, "end": load_average()})
