"""The digits classifier experiment and the Adam vs AdamW table (experiments/tables/adamw.py)."""

import json

import numpy as np

from conftest import run_python
from experiments import classifier
from experiments.tables import adamw
from research.tasks import classifier as classifier_tasks


def test_classifier_default_is_the_feature_network_config():
  config, reference = classifier.get_config(), classifier_tasks.train_config()
  for name in reference:
    assert config[name] == reference[name], name


def test_classifier_smoke_reports_consistent_test_metrics(tmp_path):
  results = classifier.run(classifier.get_config("smoke"), str(tmp_path))
  assert 0.5 < results["test_accuracy"] <= 1.0
  np.testing.assert_allclose(results["test_error"], 1.0 - results["test_accuracy"], atol=1e-9)
  assert np.isfinite(results["test_loss"]) and results["test_loss"] > 0


def test_best_decay_slope_reads_the_basin():
  lrs, wds = np.logspace(-4, -1, 4), np.logspace(-4, -1, 4)
  # The basin runs along decay = 1e-5 / lr (coupled): the best decay falls one decade per decade of lr.
  coupled = np.array([[abs(np.log10(wd * lr) + 5) for lr in lrs] for wd in wds])
  best = adamw.best_decays(coupled, coupled)
  np.testing.assert_allclose(adamw.slope(lrs, wds[best]), -1.0, atol=1e-9)
  # An axis-aligned basin: the same best decay at every learning rate.
  aligned = np.array([[abs(np.log10(wd) + 2) for _ in lrs] for wd in wds])
  np.testing.assert_allclose(adamw.slope(lrs, wds[adamw.best_decays(aligned, aligned)]), 0.0, atol=1e-9)
  # Ties on error break on the loss.
  errors, losses = np.zeros((2, 1)), np.array([[2.0], [1.0]])
  assert list(adamw.best_decays(errors, losses)) == [1]
  # Learning rates far from the best cell are left out of the fit.
  assert list(adamw.usable(np.array([[50.0, 2.0, 3.0], [60.0, 4.0, 9.0]]))) == [False, True, True]


def test_tiny_table_end_to_end(tmp_path):
  # The smoke preset: adam_l2 and sgdw, each a 2 x 2 grid of 2 seeds, 20 steps.
  proc = run_python(["-m", "experiments.tables.adamw", f"--outdir={tmp_path}",
                     "--config=experiments/tables/adamw.py:smoke"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((tmp_path / "results.json").read_text())
  for name in ("adam_l2", "sgdw"):
    cell = out["optimizers"][name]
    assert cell["members"] == 8 and np.asarray(cell["test_error_percent"], float).shape == (2, 2, 2)
    assert 0.0 <= cell["best_test_error_percent"] <= 100.0
  text = (tmp_path / "adamw.md").read_text()
  assert "| adam_l2 |" in text and "## sgdw: mean test error %" in text and "Command: `python -m" in text
  assert (tmp_path / "adamw.png").stat().st_size > 1000


def test_unknown_optimizer_is_refused(tmp_path):
  proc = run_python(["-m", "experiments.tables.adamw", f"--outdir={tmp_path / 'x'}", "--config.optimizers=adamx"])
  assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown optimizers value 'adamx'; choose from")
  assert not (tmp_path / "x").exists()
