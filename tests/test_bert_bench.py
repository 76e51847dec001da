"""The BERT benchmark's smoke run: both sides train and infer, the report is written, bad flags are one line."""

import json

from conftest import run_python

# The smoke preset: 1 layer of width 32 (2 heads), 16 tokens, vocabulary 64, batch 2, 2 steps, one repeat at one thread.
SMALL = ["--config=experiments/bench/bert.py:smoke"]


def test_smoke_run_writes_its_report(tmp_path):
  proc = run_python(["-m", "experiments.bench.bert", f"--outdir={tmp_path}", *SMALL])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "bert.json").read_text())
  # 1 layer of width 32, MLP 128, 64 tokens, 16 positions, 2 types: counted from the shapes.
  layer = 4 * (32 * 32 + 32) + 2 * 2 * 32 + (32 * 128 + 128) + (128 * 32 + 32)
  embeddings = (64 + 16 + 2) * 32 + 2 * 32
  head = 32 * 32 + 32 + 2 * 32 + 64
  assert results["param_count"] == {"jax": layer + embeddings + head, "torch": layer + embeddings + head}
  assert results["inference"]["max_abs_logit_difference"] < 1e-4  # the same weights give the same logits
  for name in ("train", "inference"):
    assert results[name]["ratio_vs_torch"] > 0 and len(results[name]["ratios_per_repeat"]) == 1
  assert "| MLM training step" in (tmp_path / "bert.md").read_text()


def test_bad_flags_are_one_line(tmp_path):
  proc = run_python(["-m", "experiments.bench.bert", f"--outdir={tmp_path / 'out'}", "--config.hidden_size=30",
                     "--config.num_attention_heads=4"])
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: hidden_size 30 is not divisible by num_attention_heads 4"
  assert not (tmp_path / "out").exists()
