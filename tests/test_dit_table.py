"""The DiT ablation table (experiments/tables/dit.py): end to end on its smoke preset, its trend checks, bad configs."""

import json

import numpy as np
import pytest
from scipy import stats

from conftest import run_python

# The smoke preset: one DiT-T/4 cell and the adaLN-Zero / in-context ablation on it, 2 steps of 2 members, 8 samples.
TINY = ["--config=experiments/tables/dit.py:smoke"]


@pytest.mark.slow
def test_tiny_table_writes_report_with_its_rows(tmp_path):
  from research.models import dit  # pylint: disable=import-outside-toplevel
  outdir = tmp_path / "dit"
  proc = run_python(["-m", "experiments.tables.dit", f"--outdir={outdir}", *TINY])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {p.name for p in outdir.iterdir()} == {"dit.md", "dit.png", "results.json"}
  results = json.loads((outdir / "results.json").read_text())
  assert results["seeds"] == [0, 1] and results["steps"] == 2 and results["num_samples"] == 8
  (cell,) = results["cells"]
  cfg = dit.config("DiT-T/4", input_size=8, in_channels=1, num_classes=10, learn_sigma=False)
  assert cell["model"] == "DiT-T/4" and cell["tokens"] == 4 and cell["params"] == dit.count_params(cfg)
  np.testing.assert_allclose(cell["gflops"], dit.forward_flops(cfg) / 2e9, rtol=1e-6)
  for member in cell["members"]:
    assert np.isfinite(member["fid"]) and member["fid"] > 0
    assert 0.0 <= member["precision"] <= 1.0 and 0.0 <= member["recall"] <= 1.0
  np.testing.assert_allclose(cell["fid_mean_se"][0], np.mean([m["fid"] for m in cell["members"]]), rtol=1e-9)
  runs = results["conditioning"]["runs"]
  assert [r["conditioning"] for r in runs] == ["adaln_zero", "in_context"]
  for run in runs:
    assert [p["step"] for p in run["points"]] == [1, 2]
    assert all(np.isfinite(m["fid"]) for p in run["points"] for m in p["members"])
  # The grid's DiT-T/4 cell is the ablation's adaLN-Zero run: its scores are that run's last point.
  assert cell["shared_with_conditioning"] and cell["members"] == runs[0]["points"][-1]["members"]
  # In-context conditioning has no adaLN modulation but two extra tokens: other params and Gflops.
  assert runs[1]["params"] < runs[0]["params"] and runs[1]["gflops"] > runs[0]["gflops"]
  text = (outdir / "dit.md").read_text()
  assert "python -m experiments.tables.dit" in text and "dit.py:smoke" in text
  for row in ("| DiT-T/4 | 4 | 4 |", "| adaLN-Zero |", "| in-context |", "FID @ 1 | FID @ 2"):
    assert row in text, row
  assert f"{cell['fid_mean_se'][0]:.2f} ± {cell['fid_mean_se'][1]:.2f}" in text


def _cell(model, params, gflops, fid):
  size, patch = model.split("/")
  return {"model": model, "size": size, "patch": int(patch), "params": params, "gflops": gflops,
          "fid_mean_se": (fid, 0.1)}


def test_trend_checks_on_made_up_cells():
  from experiments.tables import dit as table  # pylint: disable=import-outside-toplevel
  cells = [_cell("DiT-T/4", 1.0, 1.0, 30.0), _cell("DiT-T/2", 1.1, 4.0, 20.0), _cell("DiT-XS/4", 5.0, 3.0, 25.0),
           _cell("DiT-XS/2", 5.1, 12.0, 27.0)]
  conditionings = [{"conditioning": name, "points": [{"fid_mean_se": (fid, 1.0)}]}
                   for name, fid in (("adaln_zero", 9.0), ("in_context", 7.0))]
  found = table.trends(cells, conditionings)
  expected = stats.spearmanr([c["gflops"] for c in cells], [c["fid_mean_se"][0] for c in cells]).statistic
  np.testing.assert_allclose(found["rho"], expected)
  assert found["monotone"] == {"DiT-T": True, "DiT-XS": False}
  # Fewer parameters and more Gflops: DiT-T/2 against DiT-XS/4 (lower FID), nothing else.
  assert found["pairs"] == [("DiT-T/2", "DiT-XS/4", True)]
  assert found["best_conditioning"] == "in_context"


@pytest.mark.parametrize("flags,message", [
    (["--config.sizes=DiT-Q"], "unknown sizes value 'DiT-Q'"),
    (["--config.patches=3"], "unknown dit 'DiT-T/3'"),
    (["--config.patches=two"], "patches takes integers"),
    (["--config.conditionings=adaln_zero", "--config.conditionings=film"], "unknown conditionings value 'film'"),
    (["--config.conditioning_steps=4", "--config.eval_points=3"], "eval_points 3 must divide conditioning_steps 4"),
    (["--config.num_samples=3"], "num_samples must be at least 4, got 3"),
    (["--config.seeds=0"], "seeds must be > 0, got 0"),
])
def test_bad_flags_are_one_line_exit_2_and_write_nothing(tmp_path, flags, message):
  outdir = tmp_path / "dit"
  proc = run_python(["-m", "experiments.tables.dit", f"--outdir={outdir}", *flags])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr
  assert not outdir.exists()
