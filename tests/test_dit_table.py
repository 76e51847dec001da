"""The DiT ablation table (experiments/tables/dit.py): end to end on its smoke preset, its trend checks, bad configs."""

import json

import numpy as np
import pytest
from scipy import stats

from conftest import run_python
from research import data as data_lib
from research.tasks import classifier as classifier_tasks

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
  # Every member in both spaces, beside the real held-out digits at the members' own count (8 samples: 8 scored).
  real = results["real_held_out"]
  assert real["num_scored"] == 8
  for member in cell["members"]:
    assert member["num_samples"] == member["num_scored"] == 8
    for prefix in ("", "cnn_"):
      assert np.isfinite(member[prefix + "fid"]) and member[prefix + "fid"] > 0, prefix
      assert 0.0 <= member[prefix + "precision"] <= 1.0 and 0.0 <= member[prefix + "recall"] <= 1.0, prefix
      assert np.isfinite(member[prefix + "kid"]) and member[prefix + "kid_se"] >= 0.0, prefix
      assert member[prefix + "fid_real"] == pytest.approx(real[prefix + "fid_real"]) and real[prefix + "fid_real"] > 0
      assert member[prefix + "fid_ratio"] == pytest.approx(member[prefix + "fid"] / real[prefix + "fid_real"])
    assert member["fid"] != member["cnn_fid"]  # two spaces, not one copied
  # The real reference is the held-out digits' first 8 scored as the samples are.
  held_out = classifier_tasks.digits_sample_metrics(data_lib.load("digits", "test")["image"][:8])
  for prefix in ("", "cnn_"):
    assert real[prefix + "fid_real"] == pytest.approx(held_out[prefix + "fid"], rel=1e-5), prefix
    np.testing.assert_allclose(cell[prefix + "fid_mean_se"][0], np.mean([m[prefix + "fid"] for m in cell["members"]]),
                               rtol=1e-9)
    np.testing.assert_allclose(cell[prefix + "kid_mean_se"][0], np.mean([m[prefix + "kid"] for m in cell["members"]]),
                               rtol=1e-9)
  runs = results["conditioning"]["runs"]
  assert [r["conditioning"] for r in runs] == ["adaln_zero", "in_context"]
  for run in runs:
    assert [p["step"] for p in run["points"]] == [1, 2]
    assert all(np.isfinite(m[k]) for p in run["points"] for m in p["members"] for k in ("fid", "cnn_fid", "cnn_kid"))
  # The grid's DiT-T/4 cell is the ablation's adaLN-Zero run: its scores are that run's last point.
  assert cell["shared_with_conditioning"] and cell["members"] == runs[0]["points"][-1]["members"]
  # In-context conditioning has no adaLN modulation but two extra tokens: other params and Gflops.
  assert runs[1]["params"] < runs[0]["params"] and runs[1]["gflops"] > runs[0]["gflops"]
  text = (outdir / "dit.md").read_text()
  assert "python -m experiments.tables.dit" in text and "dit.py:smoke" in text
  for row in ("| DiT-T/4 | 4 | 4 |", "| adaLN-Zero |", "| in-context |", "FID @ 1 | FID @ 2",
              "### MLP classifier (digits_mlp_v1)", "### convolutional classifier (digits_cnn_v1)",
              "## Where the two spaces order rows differently", "Conditioning at step 2, mean FID"):
    assert row in text, row
  for prefix in ("", "cnn_"):
    assert f"| DiT-T/4 | {cell[prefix + 'fid_mean_se'][0]:.2f} ± {cell[prefix + 'fid_mean_se'][1]:.2f} | " in text
  assert set(results["trends"]) == {"mlp", "cnn"}


def _cell(model, params, gflops, fid, cnn_fid):
  size, patch = model.split("/")
  return {"model": model, "size": size, "patch": int(patch), "params": params, "gflops": gflops,
          "fid_mean_se": (fid, 0.1), "cnn_fid_mean_se": (cnn_fid, 0.1)}


def test_trend_checks_on_made_up_cells():
  from experiments.tables import dit as table  # pylint: disable=import-outside-toplevel
  # The conv space puts T/4 below both XS cells, and orders the two conditionings the other way round.
  cells = [_cell("DiT-T/4", 1.0, 1.0, 30.0, 90.0), _cell("DiT-T/2", 1.1, 4.0, 20.0, 60.0),
           _cell("DiT-XS/4", 5.0, 3.0, 25.0, 95.0), _cell("DiT-XS/2", 5.1, 12.0, 27.0, 99.0)]
  conditionings = [{"conditioning": name, "points": [{"step": 10, "fid_mean_se": (fid, 1.0),
                                                      "cnn_fid_mean_se": (cnn_fid, 1.0)}]}
                   for name, fid, cnn_fid in (("adaln_zero", 9.0, 30.0), ("in_context", 7.0, 40.0))]
  conv = table.trends(cells, conditionings, "cnn_")
  assert conv["monotone"] == {"DiT-T": True, "DiT-XS": False} and conv["best_conditioning"] == "adaln_zero"
  lines = table.disagreements(cells, conditionings)
  assert lines[0].endswith("order 2 pair(s) differently: DiT-XS/4 below DiT-T/4 in MLP (25 < 30), above in conv "
                           "(95 vs 90); DiT-XS/2 below DiT-T/4 in MLP (27 < 30), above in conv (99 vs 90).")
  assert "in-context below adaLN-Zero in MLP (7 < 9), above in conv (40 vs 30)" in lines[1]
  alike = [{**c, "cnn_fid_mean_se": c["fid_mean_se"]} for c in cells]
  assert table.disagreements(alike, [])[0].endswith("order every pair alike.")
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
