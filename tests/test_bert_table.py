"""The BERT masking table's smoke run: pre-training and fine-tuning sweeps, the report, bad flags."""

import json

import numpy as np

from conftest import run_python

SMALL = ["--mixes=0/0/100", "--seeds=2", "--steps=3", "--finetune_steps=3", "--hidden_size=16",
         "--num_hidden_layers=1", "--seq_len=16", "--vocab_size=256", "--eval_sequences=16", "--batch_size=8"]


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
  proc = run_python(["-m", "experiments.tables.bert_masking", f"--outdir={tmp_path / 'out'}", "--mixes=80/10"])
  assert proc.returncode != 0 and "--mixes: a masking mix is MASK/same/random percentages" in proc.stderr
  assert not (tmp_path / "out").exists()
