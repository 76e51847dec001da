"""What every paper table and benchmark shares: its entry point, its command line and its report.

A table or benchmark writes `<name>.md` (the table, with the command that produced it), a JSON
file of the measurements (`results.json` for tables, `<name>.json` for benchmarks) and for
tables `<name>.png`, all into `--outdir`. The JSON holds the script's metrics plus, recorded
here so no script retypes them: `command`, `config` (if any), `versions`, `devices` and
`wall_time_s` (if given).

Scripts whose flags are an ml_collections config end with
`research.train.cli.main(__file__, run, dir_flag="outdir")`; scripts with plain absl flags end
with `report.main(run)`, which defines `--outdir` the same way.
"""

import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import jax
from absl import app
from absl import flags
from absl import logging as absl_logging

from research.train import results


def command() -> str:
  """The command line that started this process, the way a reader would retype it.

  `python -m <module> <args>` for a module run with -m, else `python <script> <args>`; the
  arguments are shell-quoted, so the string reruns the same command.
  """
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  program = ["-m", spec.name] if spec is not None else [sys.argv[0]]
  return shlex.join(["python", *program, *sys.argv[1:]])


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


def main(run: Callable[[str], Any]) -> None:
  """Defines `--outdir`, parses the flags and calls `run(outdir)` under absl.

  For scripts whose flags are plain absl flags, defined at module level; `run` reads them.

  Args:
    run: `run(outdir)`: runs the table or benchmark and writes its report into outdir.
  """
  outdir = flags.DEFINE_string("outdir", None, "Directory the report is written into (created if missing).",
                               required=True)

  def guarded(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
      # Warnings and errors only, as for runs (research/train/cli.py): the tables' own lines stay readable.
      absl_logging.set_verbosity(absl_logging.WARNING)
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    run(outdir.value)

  app.run(guarded)
