"""The GPT-2 benchmark: its smoke run writes the report with equal parameter counts and sensible ratios, and
our greedy generation equals transformers' on the benchmark's model (no timing is asserted)."""

import json
import math
import shlex

import numpy as np
import pytest

from conftest import run_python

pytest.importorskip("torch")
pytest.importorskip("transformers")

from experiments.bench import gpt2 as bench  # pylint: disable=wrong-import-position

# The smoke preset: 1 layer of 32 (2 heads), context 16, batch 2, 2 timed steps, attention reference and flash;
# generation of 8 tokens after 4 at batches 1 and 2.
SMOKE = ["--config=experiments/bench/gpt2.py:smoke"]


def _gpt2_params(n_layer, e, vocab, context):
  """GPT-2's parameters from its shapes: embeddings, per block 2 LayerNorms, c_attn, c_proj, c_fc, mlp c_proj."""
  block = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e)
  return vocab * e + context * e + n_layer * block + 2 * e


def test_smoke_run_writes_the_report(tmp_path):
  args = ["-m", "experiments.bench.gpt2", f"--outdir={tmp_path}", *SMOKE]
  proc = run_python(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "gpt2.json").read_text())
  markdown = (tmp_path / "gpt2.md").read_text()
  assert report["command"] == shlex.join(["python", *args]) and f"`{report['command']}`" in markdown
  assert "|---" in markdown
  expected = _gpt2_params(1, 32, 96, 16)
  assert report["train"]["param_count"] == {"jax": expected, "torch": expected}
  for name in ("reference", "flash"):
    run = report["train"]["jax"][name]
    assert math.isfinite(run["ratio_vs_torch"]) and run["ratio_vs_torch"] > 0
    assert run["ratio_vs_torch"] == pytest.approx(report["train"]["torch"]["ms_per_step"] / run["ms_per_step"])
    # Same initial loss region on both sides: near ln(vocab) for random tokens and small initial weights.
    assert abs(run["first_loss"] - math.log(96)) < 0.1
  assert abs(report["train"]["torch"]["first_loss"] - math.log(96)) < 0.1
  assert set(report["generate"]) == {"1", "2"}
  for b, gen in report["generate"].items():
    assert gen["tokens_equal"] and gen["equal_prefix"] == 8, b
    assert math.isfinite(gen["ratio_vs_torch"]) and gen["ratio_vs_torch"] > 0
    assert gen["jax_tokens_per_s"] == pytest.approx(gen["ratio_vs_torch"] * gen["torch_tokens_per_s"], rel=1e-6)
  bound = report["batch1_bound"]
  assert bound["param_bytes"] == 4 * expected and bound["copy_bandwidth_gb_s"] > 0
  assert bound["tokens_per_s"] == pytest.approx(1e9 * bound["copy_bandwidth_gb_s"] / bound["param_bytes"])
  assert bound["weight_read_gb_s"] > 0
  assert bound["weight_read_tokens_per_s"] == pytest.approx(1e9 * bound["weight_read_gb_s"] / bound["param_bytes"])
  assert report["versions"]["torch"] and report["versions"]["transformers"]


def test_greedy_generation_equals_transformers_on_the_benchmark_model():
  setup = bench.Setup(n_layer=2, n_embd=48, n_head=3, seq_len=64, vocab_size=96, batch_size=1)
  model, params, hf_model = bench.generators(setup, "reference", prompt_len=5, new_tokens=40)
  prompts = np.random.default_rng(0).integers(0, 96, (3, 5), dtype=np.int32)
  ours, _ = bench.jax_generate(model, params, prompts, 40)
  theirs, _ = bench.torch_generate(hf_model, prompts, 40)
  assert ours.shape == theirs.shape == (3, 40)
  np.testing.assert_array_equal(ours, theirs)
  assert len(set(ours.ravel().tolist())) > 5  # not one repeated token


@pytest.mark.parametrize("flags,message", [
    (["--config.n_embd=33", "--config.n_head=2"], "error: n_embd 33 is not divisible by n_head 2"),
    (["--config.attention=reference,flash"], "error: unknown attention value 'reference,flash'"),
    (["--config.new_tokens=250"], "error: prompt_len + new_tokens (266) exceeds the context seq_len 256"),
])
def test_bad_flags_are_one_line_before_anything_is_written(tmp_path, flags, message):
  proc = run_python(["-m", "experiments.bench.gpt2", f"--outdir={tmp_path / 'out'}", *flags])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]
  assert not (tmp_path / "out").exists()
