"""The T5 benchmark's smoke run: both sides train and beam-search, the report is written, bad flags are one line."""

import json

from conftest import run_python

# The smoke preset: 1 encoder and 1 decoder layer of width 32 (2 heads of 8), feed-forward 64, vocabulary 64,
# sources of 12 and targets of 6, batch 2, 4 new tokens at batch 1 and 2, 2 steps, one repeat at one thread.
SMALL = ["--config=experiments/bench/seq2seq.py:smoke"]


def test_smoke_run_writes_its_report(tmp_path):
  proc = run_python(["-m", "experiments.bench.seq2seq", f"--outdir={tmp_path}", *SMALL])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "seq2seq.json").read_text())
  # Counted from the shapes: attention 4 * 32 * 16, gated feed-forward 3 * 32 * 64, a norm scale of 32 per
  # sublayer and stack, 32 buckets x 2 heads per stack, the shared embedding and the untied head 64 x 32 each.
  attention, mlp, norm = 4 * 32 * 16, 3 * 32 * 64, 32
  encoder = 32 * 2 + (attention + mlp + 2 * norm) + norm
  decoder = 32 * 2 + (2 * attention + mlp + 3 * norm) + norm
  expected = encoder + decoder + 2 * 64 * 32
  assert results["param_count"] == {"jax": expected, "torch": expected}
  assert all(r["tokens_equal"] for r in results["generate"].values())  # the same weights give the same beams
  for r in [results["train"], *results["generate"].values()]:
    assert r["ratio_vs_torch"] > 0 and len(r["ratios_per_repeat"]) == 1
  assert set(results["generate"]) == {"1", "2"}
  assert "| beam search, 4 beams, batch 2" in (tmp_path / "seq2seq.md").read_text()


def test_bad_flags_are_one_line(tmp_path):
  proc = run_python(["-m", "experiments.bench.seq2seq", f"--outdir={tmp_path / 'out'}", "--config.num_beams=0"])
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: num_beams must be > 0, got 0"
  assert not (tmp_path / "out").exists()
