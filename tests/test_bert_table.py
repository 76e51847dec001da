"""The BERT masking table's smoke run: pre-training and fine-tuning sweeps, the report, bad flags."""

import json

import numpy as np

from conftest import run_python

# The smoke preset: mix 0/0/100, 2 seeds, 3 steps of each stage, a 1 x 16 model on 16 tokens, vocabulary 256.
SMALL = ["--config=experiments/tables/bert_masking.py:smoke"]


def test_smoke_run_writes_the_table(tmp_path):
  proc = run_python(["-m", "experiments.tables.bert_masking", f"--outdir={tmp_path}", *SMALL], timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  (row,) = results["rows"]
  assert row["mix"] == "0/0/100" and len(row["mlm_accuracy"]) == len(row["finetuned_accuracy"]) == 2
  assert all(0.0 <= v <= 1.0 for v in row["mlm_accuracy"] + row["finetuned_accuracy"])
  # Two seeds are two different runs: their held-out losses differ.
  assert np.isfinite(row["mlm_loss"]).all() and row["mlm_loss"][0] != row["mlm_loss"][1]
  assert len(results["no_pretraining"]["accuracy"]) == 2
  assert results["task_examples"]["eval"] > 100
  markdown = (tmp_path / "bert_masking.md").read_text()
  assert "| 0/0/100 |" in markdown and "| no pre-training |" in markdown
  assert (tmp_path / "bert_masking.png").stat().st_size > 0


def test_bad_mix_is_refused_before_anything_runs(tmp_path):
  proc = run_python(["-m", "experiments.tables.bert_masking", f"--outdir={tmp_path / 'out'}", "--config.mixes=80/10"])
  assert proc.returncode == 2 and proc.stderr.strip().startswith(
      "error: mixes: a masking mix is MASK/same/random percentages"), proc.stderr[-2000:]
  assert not (tmp_path / "out").exists()
