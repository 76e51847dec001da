"""The LSTM vs Transformer table end to end on its smoke preset; its position helpers; bad configs."""

import numpy as np
import pytest

from conftest import run_python, run_table_smoke
from experiments.tables import lstm_vs_transformer as table
from research.models import gpt2, lstm


def test_position_bins_and_slope():
  assert table.position_bins(128) == [(1, 1), (2, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 128)]
  assert table.position_bins(12) == [(1, 1), (2, 4), (5, 8), (9, 12)]
  losses = 3.0 - 0.25 * np.log2(np.arange(1, 65))
  assert table.late_slope(losses, 16) == pytest.approx(-0.25)
  assert table.late_slope(np.r_[np.linspace(5, 2, 15), np.full(49, 2.0)], 16) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_lstm_vs_transformer_end_to_end(tmp_path):
  # The smoke preset: one size 1:16:2 and a one-layer LSTM matched to it, 6 steps of 4 windows of 16.
  results, _ = run_table_smoke("lstm_vs_transformer", tmp_path)
  gpt_row, lstm_row = results["rows"]
  assert (gpt_row["model"], lstm_row["model"]) == ("gpt", "lstm")
  gpt_n = gpt2.count_params(gpt2.GPT2Config(vocab_size=5, n_positions=16, n_embd=16, n_layer=1, n_head=2), False)
  width = lstm.width_for(gpt_n, 1)
  assert gpt_row["non_embedding_params"] == gpt_n and lstm_row["shape"] == f"1x{width}"
  assert lstm_row["non_embedding_params"] == 8 * width * width + 4 * width
  assert abs(lstm_row["non_embedding_params"] - gpt_n) < 16 * width  # the nearest width: within one step of it
  for row in results["rows"]:
    losses = np.asarray(row["position_loss"])
    assert losses.shape == (16,) and np.isfinite(losses).all() and row["position_windows"] == 40
    # The per-position losses of the loop's own evaluation windows average to the loop's val_loss.
    assert abs(row["loop_windows_mean_minus_val_loss"]) < 1e-5
    assert [(b["from"], b["to"]) for b in row["bins"]] == [(1, 1), (2, 4), (5, 8), (9, 16)]
    assert row["bins"][1]["loss"] == pytest.approx(losses[1:4].mean())
    assert row["late_slope"] == pytest.approx(table.late_slope(losses, 4))
  assert len(results["runs"]["trained"]) == 2 and not results["runs"]["reused"]


@pytest.mark.parametrize("flags,message", [
    (["--config.sizes=1:32:2", "--config.sizes=1:32:2"], "sizes must name one or more different sizes"),
    (["--config.slope_from=128"], "slope_from 128 leaves fewer than 2 positions"),
])
def test_bad_flags_are_one_line(tmp_path, flags, message):
  proc = run_python(["-m", "experiments.tables.lstm_vs_transformer", f"--outdir={tmp_path / 'out'}", *flags])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr[-2000:]
  assert not (tmp_path / "out").exists()
