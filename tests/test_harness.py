"""experiments/harness.py: the command line, the report files, the Markdown and the timer of tables and benchmarks."""

import json
import math
import os
import shlex
from importlib import metadata

import jax
import ml_collections
import numpy as np
import pytest
from matplotlib.figure import Figure

from conftest import ROOT, run_python
from experiments import harness
from research.train import ConfigError, cli

PROBE = "from experiments import harness\nprint(harness.command())\n"


def test_command_is_the_command_line_that_started_the_process(tmp_path):
  (tmp_path / "probe_command.py").write_text(PROBE)
  args = ["--outdir=runs/a b", "--steps=3", "--vary=lr=1,2"]
  # This checkout's experiments package, also for the script (whose sys.path starts at its own directory).
  env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), ROOT, os.environ.get("PYTHONPATH")]))}
  as_module = run_python(["-m", "probe_command", *args], env=env)
  assert as_module.returncode == 0, as_module.stderr[-2000:]
  assert as_module.stdout.strip() == "python -m probe_command '--outdir=runs/a b' --steps=3 --vary=lr=1,2"
  script = str(tmp_path / "probe_command.py")
  as_script = run_python([script, *args], env=env)
  assert as_script.returncode == 0, as_script.stderr[-2000:]
  # Quoted so that a shell splits it back into the same arguments.
  assert shlex.split(as_script.stdout.strip()) == ["python", script, *args]


def test_write_report_writes_markdown_json_and_png(tmp_path):
  config = ml_collections.ConfigDict({"steps": 3, "sizes": (4, 5)})
  fig = Figure(figsize=(2, 1), dpi=50)
  fig.subplots().plot([0, 1], [1, 0])
  metrics = {"curve": np.arange(3, dtype=np.float32) / 2, "score": np.float32(0.25), "undefined": float("nan"),
             "by_k": {1: jax.numpy.ones(2)}}
  returned = harness.write_report(str(tmp_path / "out"), "table", metrics, "| a |\n|---|", figure=fig,
                                 config=config, wall_time_s=1.23456, packages=("numpy", "not-a-package"))
  out = tmp_path / "out"
  assert sorted(os.listdir(out)) == ["results.json", "table.md", "table.png"]
  assert (out / "table.md").read_text() == "| a |\n|---|\n"
  assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  written = json.loads((out / "results.json").read_text())
  assert written == returned
  assert list(written) == ["curve", "score", "undefined", "by_k", "command", "config", "versions", "devices",
                           "wall_time_s"]
  assert written["curve"] == [0.0, 0.5, 1.0] and written["score"] == 0.25
  assert written["undefined"] is None and written["by_k"] == {"1": [1.0, 1.0]}
  assert written["command"] == harness.command()
  assert written["config"] == {"steps": 3, "sizes": [4, 5]}
  assert written["versions"]["jax"] == jax.__version__
  assert written["versions"]["numpy"] == metadata.version("numpy") == np.__version__
  assert written["versions"]["not-a-package"] is None
  assert written["devices"]["count"] == jax.device_count() and written["devices"]["cpu_count"] == os.cpu_count()
  assert written["wall_time_s"] == 1.235


def test_write_report_names_the_benchmark_json_and_refuses_recorded_keys(tmp_path):
  harness.write_report(str(tmp_path), "bench", {"ratio": 2.0}, "text", json_file="bench.json")
  assert sorted(os.listdir(tmp_path)) == ["bench.json", "bench.md"]
  assert "config" not in json.loads((tmp_path / "bench.json").read_text())
  with pytest.raises(ValueError, match="command"):
    harness.write_report(str(tmp_path), "bench", {"command": "mine"}, "text", json_file="bench.json")


def test_document_starts_with_the_title_and_the_command():
  text = harness.document("A table", "A paragraph.", "", harness.table(["a", "b"], [(1, 2.5)], align="lr"))
  assert text == (f"# A table\n\nCommand: `{harness.command()}`\n\nA paragraph.\n\n"
                  "| a | b |\n|---|---:|\n| 1 | 2.5 |\n")


def test_table_refuses_rows_and_alignments_that_do_not_match_the_header():
  assert harness.table(["x"], []) == "| x |\n|---|"
  with pytest.raises(ValueError, match="a row of 1 cells under 2 columns"):
    harness.table(["a", "b"], [(1,)])
  with pytest.raises(ValueError, match="align"):
    harness.table(["a", "b"], [], align="lc")


def test_mean_se_and_pm():
  assert harness.mean_se([1.0, 3.0]) == (2.0, 1.0)
  mean, se = harness.mean_se([5.0])
  assert mean == 5.0 and math.isnan(se)
  assert harness.pm((0.1234, 0.0056), 3) == "0.123 ± 0.006"
  assert harness.pm((0.5, 0.01), 1, scale=100.0) == "50.0 ± 1.0"
  assert harness.pm((2.0, math.nan)) == "2.00"


def test_check_names():
  harness.check_names("models", ("vae", "gan"), ("vae", "gan"))
  with pytest.raises(ConfigError, match="models must name at least one of: vae, gan"):
    harness.check_names("models", (), ("vae", "gan"))
  with pytest.raises(ConfigError, match="unknown models value 'vit'; choose from: vae, gan$"):
    harness.check_names("models", ("vit",), ("vae", "gan"))
  # "vae,gan" is one string: the error says how a list is given.
  with pytest.raises(ConfigError, match="a list is given as repeated --config.models=... flags"):
    harness.check_names("models", ("vae,gan",), ("vae", "gan"))
  with pytest.raises(ConfigError, match="models names a value twice"):
    harness.check_names("models", ("vae", "vae"), ("vae", "gan"))


def test_check_counts_and_host_threads():
  harness.check_counts("lengths", (64, 128))
  for bad in ((), (0, 1), (2.5,), ("4",), (True,)):
    with pytest.raises(ConfigError, match="lengths must be positive integers"):
      harness.check_counts("lengths", bad)
  threads = harness.host_threads()
  assert threads[0] == os.cpu_count() and threads[-1] == 1 and len(set(threads)) == len(threads)


def test_presets_apply_in_their_declared_order_and_unknown_ones_are_named():
  presets = {"long": lambda c: c.update({"steps": 100, "log": 10}), "smoke": lambda c: c.update({"steps": 2})}
  config = lambda: ml_collections.ConfigDict({"steps": 10, "log": 1})
  for preset in ("long,smoke", "smoke,long"):  # the declaration's order, whatever the command line's
    assert cli.apply_presets(config(), preset, presets).to_dict() == {"steps": 2, "log": 10}
  assert cli.apply_presets(config(), "", presets).to_dict() == {"steps": 10, "log": 1}
  with pytest.raises(ValueError, match="unknown preset 'smok'; choose from: long, smoke"):
    cli.apply_presets(config(), "long,smok", presets)


def test_compare_rotates_the_sides_and_reports_rates_and_ratios_per_repeat():
  order = []

  def side(name, seconds, work):
    def measure():
      order.append(name)
      return harness.Timing(seconds.pop(0), work)
    return measure

  warmed = []
  sides = {"ours": harness.Side(side("ours", [1.0, 2.0, 1.0], 10), warmup=lambda: warmed.append("ours")),
           "peer": harness.Side(side("peer", [4.0, 4.0, 2.0], 10)),
           "peer_slow": harness.Side(lambda: 8.0)}
  timings = harness.compare(sides, 3)
  # Repeat r starts at the r-th side (peer_slow, which records nothing, starts repeat 2): a drift in the host's load
  # spreads over all of them.
  assert order == ["ours", "peer", "peer", "ours", "ours", "peer"]
  assert warmed == ["ours"] * 3  # before every measurement of its side, untimed
  assert timings.repeats == 3
  assert timings.rates("ours") == [10.0, 5.0, 10.0] and timings.seconds("peer") == [0.4, 0.4, 0.2]
  assert timings.seconds("peer_slow") == [8.0, 8.0, 8.0]  # a bare number: the seconds of one unit
  assert timings.median_rate("ours") == 10.0 and timings.median_seconds("ours") == 0.1
  assert timings.ratios("ours", "peer") == [4.0, 2.0, 2.0] and timings.median_ratio("ours", "peer") == 2.0
  # Against several sides (e.g. a peer's thread settings), each repeat's fastest.
  assert timings.best_rates(["peer", "peer_slow"]) == [2.5, 2.5, 5.0]
  assert timings.best_seconds(["peer", "peer_slow"]) == [0.4, 0.4, 0.2]
  record = timings.record()
  assert record["repeats"] == 3 and set(record["load_average"]) == {"start", "end"}
  assert record["torch_threads"] == {} and record["cpu_count"] == os.cpu_count()


def test_steps_times_each_call_and_keeps_the_median():
  calls = []
  side = harness.steps(lambda: calls.append(1), 5, warmup=2)
  side.warmup()
  timing = side.measure()
  assert len(calls) == 7 and timing.work == 1.0 and timing.seconds >= 0.0
  with pytest.raises(ValueError, match="at least one side and one repeat"):
    harness.compare({}, 1)
