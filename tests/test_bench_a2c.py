"""The A2C benchmark runs end to end on a tiny problem against Stable-Baselines3 and writes its report."""

import json

import pytest

from conftest import run_python


@pytest.mark.slow
def test_a2c_benchmark_writes_its_report(tmp_path):
  pytest.importorskip("stable_baselines3")
  proc = run_python(["-m", "experiments.bench.a2c", f"--outdir={tmp_path}", "--config=experiments/bench/a2c.py:smoke"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "a2c.json").read_text())
  assert report["jax_2_seeds"]["env_steps"] == 2 * 400 and report["peer_stable_baselines3"]["env_steps"] == 400
  assert report["ratio_2_seeds"] == pytest.approx(
      report["jax_2_seeds"]["steps_per_s"] / report["peer_stable_baselines3"]["steps_per_s"])
  assert report["config"]["repeats"] == 1 and report["timing"]["repeats"] == 1
  assert report["versions"]["stable_baselines3"] is not None
  assert "| Stable-Baselines3 A2C, 1 seed |" in (tmp_path / "a2c.md").read_text()
