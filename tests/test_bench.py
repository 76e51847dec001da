"""Each benchmark runs end to end on a tiny problem and writes its report (no timing is asserted)."""

import json

import pytest

from conftest import run_python

BENCHES = {
    "em": ["--n_samples=2000", "--n_features=2", "--n_components=3", "--iters=3", "--repeats=1"],
    "loop_overhead": ["--repeats=1", "--short_steps=5", "--span=10"],
    "ppo": ["--total_timesteps=1024", "--seeds=2", "--peer_updates=1"],
    "sweep": ["--seeds=2", "--steps=3", "--preset=gan,smoke"],
}


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_benchmark_writes_its_report(tmp_path, name):
  proc = run_python(["-m", f"experiments.bench.{name}", f"--outdir={tmp_path}", *BENCHES[name]])
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / f"{name}.json").read_text())
  assert report
  assert "|---" in (tmp_path / f"{name}.md").read_text()
