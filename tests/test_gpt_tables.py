"""The attention memory table and the GPT scaling table, end to end on their smoke presets; the power-law fit; bad
configs."""

import json

import numpy as np
import pytest

from conftest import run_python
from experiments.tables import gpt_scaling
from research.models import gpt2

F32 = 4  # bytes


def _report(outdir, name):
  for suffix in (".md", ".png"):
    assert (outdir / f"{name}{suffix}").stat().st_size > 0, suffix
  results = json.loads((outdir / "results.json").read_text())
  assert results["command"].startswith(f"python -m experiments.tables.{name} --outdir=")
  assert results["command"] in (outdir / f"{name}.md").read_text()
  return results


@pytest.mark.slow
def test_attention_memory_end_to_end(tmp_path):
  batch, heads, head_dim = 1, 2, 8  # the smoke preset's, with lengths 32 and 64, blocks of 16, naive up to 32
  proc = run_python(["-m", "experiments.tables.attention_memory", f"--outdir={tmp_path}",
                     "--config=experiments/tables/attention_memory.py:smoke", "--config.lengths=64,32"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _report(tmp_path, "attention_memory")
  rows = results["rows"]
  assert [r["length"] for r in rows] == [32, 64]
  for row in rows:
    t = row["length"]
    qkv = batch * t * heads * head_dim * F32
    for name in ("naive", "flash"):
      cell = row[name]
      # Arguments are q, k, v; outputs are O and its three gradients (plus a tuple's few bytes).
      assert cell["argument_bytes"] == 3 * qkv
      assert 4 * qkv <= cell["output_bytes"] < 4 * qkv + 1024
      assert cell["peak_bytes"] == cell["temp_bytes"] + cell["argument_bytes"] + cell["output_bytes"] - \
          cell["alias_bytes"]
    # The naive program holds the (B, H, T, T) float32 scores.
    assert row["naive"]["temp_bytes"] >= batch * heads * t * t * F32
  # Doubling T about quadruples the naive program's temporaries and at most doubles flash's (blocks of
  # 16 keys), which at 64 is already the smaller (at 32 its fixed block buffers can still exceed the scores).
  temp = {name: [r[name]["temp_bytes"] for r in rows] for name in ("naive", "flash")}
  assert temp["naive"][1] > 3.5 * temp["naive"][0] and temp["flash"][1] < 2.2 * temp["flash"][0], temp
  assert temp["flash"][1] < temp["naive"][1], temp
  # Naive runs (timed and compared) up to --naive_max_len only; flash runs everywhere; memory everywhere.
  assert "median_s" in rows[0]["naive"] and "median_s" not in rows[1]["naive"]
  assert all(len(r["flash"]["times_s"]) == 1 for r in rows)
  assert rows[0]["max_abs_diff_output"] < 1e-5 and rows[0]["max_abs_diff_grads"] < 1e-4 * rows[0]["max_abs_grads"]
  assert "max_abs_diff_output" not in rows[1]


def test_fit_recovers_a_known_power_law():
  n = np.geomspace(1e4, 3e6, 6)
  exact = gpt_scaling.fit_power_law(n, (8.8e13 / n) ** 0.076)
  noisy = gpt_scaling.fit_power_law(n, (1e5 / n) ** 0.3 * np.exp(np.random.default_rng(0).normal(0, 0.01, 6)))
  assert exact[0] == pytest.approx(0.076, rel=1e-9)
  assert exact[1] == pytest.approx(8.8e13, rel=1e-6)
  assert noisy[0] == pytest.approx(0.3, abs=0.02)


@pytest.mark.slow
def test_gpt_scaling_end_to_end(tmp_path):
  # The smoke preset: these sizes, ablation at 1:16:2 with learned positions, 6 steps of 4 windows of 16.
  sizes = [(1, 16, 2), (1, 32, 2)]
  proc = run_python(["-m", "experiments.tables.gpt_scaling", f"--outdir={tmp_path}",
                     "--config=experiments/tables/gpt_scaling.py:smoke"], timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _report(tmp_path, "gpt_scaling")
  scaling = results["scaling"]
  for row, (n_layer, n_embd, n_head) in zip(scaling, sizes):
    cfg = gpt2.GPT2Config(vocab_size=7, n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    assert row["non_embedding_params"] == gpt2.count_params(cfg, embeddings=False)
    assert row["train_flops"] == row["flops_per_step"] * 6
    assert row["six_n_d"] == 6 * row["non_embedding_params"] * 6 * 4 * 16
  # Two points: the least-squares line passes through both.
  alpha, n_c = results["fit"]["alpha_n"], results["fit"]["n_c"]
  for row in scaling:
    assert (n_c / row["non_embedding_params"]) ** alpha == pytest.approx(row["val_loss"], rel=1e-6)

  positions = {r["positions"]: r for r in results["positions"]}
  assert set(positions) == {"learned"}
  for row in positions.values():
    # gpt2.eval_loss at the training length scores the loop's own windows: the loop's val_loss.
    assert abs(row["eval_loss_minus_loop_val_loss"]) < 1e-5
    assert row["windows_at_2t"] == (row["windows_at_t"] * 17) // 33
    assert np.isfinite([row["loss_at_2t"], row["loss_at_2t_beyond_t"]]).all()
  # The learned run of the ablation is the scaling run of the same size (one workdir, trained once).
  assert positions["learned"]["val_loss"] == scaling[0]["val_loss"]
  attention = results["attention"]
  assert attention["runs"]["reference"]["val_loss"] == scaling[0]["val_loss"]
  assert abs(attention["val_loss_difference"]) < 1e-4
  assert abs(attention["same_weights_difference"]) < 1e-5
  assert len(results["runs"]["trained"]) == 3 and not results["runs"]["reused"]
  assert all(d.startswith("model_") and (tmp_path / "models" / d / "results.json").exists()
             for d in results["runs"]["trained"])


@pytest.mark.parametrize("table,flags,message", [
    ("attention_memory", ["--config.lengths=0,256"], "lengths must be positive integers"),
    ("attention_memory", ["--config.heads=0"], "heads must be > 0, got 0"),
    ("gpt_scaling", ["--config.sizes=1:32:2"], "sizes needs at least 2 different sizes"),
    ("gpt_scaling", ["--config.sizes=1:33:2", "--config.sizes=1:32:2"], "n_embd 33 is not divisible by n_head 2"),
    ("gpt_scaling", ["--config.positions=learned", "--config.positions=sinusoid"],
     "unknown positions value 'sinusoid'"),
])
def test_bad_flags_are_one_line(tmp_path, table, flags, message):
  proc = run_python(["-m", f"experiments.tables.{table}", f"--outdir={tmp_path / 'out'}", *flags])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr[-2000:]
  assert not (tmp_path / "out").exists()
