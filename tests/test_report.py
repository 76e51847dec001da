"""experiments/report.py: the recorded command line and the report files every table and benchmark writes."""

import json
import os
import shlex
from importlib import metadata

import jax
import ml_collections
import numpy as np
import pytest
from matplotlib.figure import Figure

from conftest import run_python
from experiments import report

PROBE = "from experiments import report\nprint(report.command())\n"


def test_command_is_the_command_line_that_started_the_process(tmp_path):
  (tmp_path / "probe_command.py").write_text(PROBE)
  args = ["--outdir=runs/a b", "--steps=3", "--vary=lr=1,2"]
  env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
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
  returned = report.write_report(str(tmp_path / "out"), "table", metrics, "| a |\n|---|", figure=fig,
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
  assert written["command"] == report.command()
  assert written["config"] == {"steps": 3, "sizes": [4, 5]}
  assert written["versions"]["jax"] == jax.__version__
  assert written["versions"]["numpy"] == metadata.version("numpy") == np.__version__
  assert written["versions"]["not-a-package"] is None
  assert written["devices"]["count"] == jax.device_count() and written["devices"]["cpu_count"] == os.cpu_count()
  assert written["wall_time_s"] == 1.235


def test_write_report_names_the_benchmark_json_and_refuses_recorded_keys(tmp_path):
  report.write_report(str(tmp_path), "bench", {"ratio": 2.0}, "text", json_file="bench.json")
  assert sorted(os.listdir(tmp_path)) == ["bench.json", "bench.md"]
  assert "config" not in json.loads((tmp_path / "bench.json").read_text())
  with pytest.raises(ValueError, match="command"):
    report.write_report(str(tmp_path), "bench", {"command": "mine"}, "text", json_file="bench.json")
