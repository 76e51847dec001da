"""The reward-model over-optimisation table: its verdict on known curves, its block means, one end-to-end run on
the experiment's smoke preset (two reward-model sizes, PPO and DPO sweeps) and bad flags."""

import json
import math

import numpy as np
import pytest

from conftest import run_python
from experiments.tables import rlhf_overoptimization as table
from research.train import ConfigError


def test_peak_and_fall_finds_a_gold_peak_under_a_rising_proxy():
  x = np.linspace(0.0, 4.0, 9)
  se = np.full(9, 0.05)
  # Gao et al.'s shape: gold rises then falls, the proxy rises throughout.
  verdict = table.peak_and_fall(x * (3.0 - x), se, x, se)
  assert verdict == {"peak": 3, "gold_falls": True, "proxy_rises": True, "overoptimized": True}
  # Gold still rising at the end: no peak to fall from.
  assert table.peak_and_fall(x, se, x, se) == {"peak": 8, "gold_falls": False, "proxy_rises": False,
                                               "overoptimized": False}
  # Gold falls, the proxy falls with it: not over-optimisation of the proxy.
  verdict = table.peak_and_fall(x * (3.0 - x), se, -x, se)
  assert verdict["gold_falls"] and not verdict["proxy_rises"] and not verdict["overoptimized"]
  # A fall within twice the combined standard error does not count.
  gold = np.array([0.0, 1.0, 0.9])
  assert not table.peak_and_fall(gold, np.full(3, 0.1), np.arange(3.0), np.full(3, 0.1))["gold_falls"]
  assert table.peak_and_fall(gold, np.full(3, 0.01), np.arange(3.0), np.full(3, 0.01))["gold_falls"]


def test_block_means_equal_a_direct_computation():
  values = np.random.default_rng(0).normal(size=23)
  means, se = table.block_means(values, 5)
  assert means.shape == se.shape == (4,)  # the last 3 values make no whole block
  for i in range(4):
    block = values[5 * i:5 * i + 5]
    assert means[i] == pytest.approx(block.mean())
    assert se[i] == pytest.approx(np.std(block, ddof=1) / math.sqrt(5))


def test_parse_size():
  assert table.parse_size("2x64x4") == (2, 64, 4)
  for bad in ("2x64", "2x63x4", "0x64x4", "axbxc"):
    with pytest.raises(ConfigError):
      table.parse_size(bad)


@pytest.mark.slow
def test_end_to_end_on_the_smoke_preset(tmp_path):
  # One reward-model size keeps the test short (each size compiles its own reward-model step, PPO program and
  # sampler); the table loops over sizes the same way for two or more.
  # The smoke preset: experiments/rlhf.py's smoke setting, reward model 1x32x2, PPO betas 0 and 0.1 for 4 updates in
  # blocks of 2, DPO betas 0.1 and 1.
  args = ["-m", "experiments.tables.rlhf_overoptimization", f"--outdir={tmp_path}",
          "--config=experiments/tables/rlhf_overoptimization.py:smoke"]
  proc = run_python(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for suffix in (".md", ".png"):
    assert (tmp_path / f"rlhf_overoptimization{suffix}").stat().st_size > 0
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["command"] in (tmp_path / "rlhf_overoptimization.md").read_text()
  # The shared model and the reward model live under model/, where a rerun finds them.
  assert (tmp_path / "model" / "pretrain").is_dir() and (tmp_path / "model" / "sft").is_dir()
  assert (tmp_path / "model" / "rm_1x32x2" / "ppo_4.npz").exists()
  rm = results["reward_models"]["1x32x2"]
  # The smoke policy is 1x32x2 too, so this reward model starts from the SFT model; its head adds E + 1.
  assert rm["from_sft"] and 0.0 <= rm["pair_accuracy"] <= 1.0
  runs = results["ppo"]["1x32x2"]
  assert list(runs) == ["0.0", "0.1"]
  for run in runs.values():
    along = run["along"]
    assert len(along["gold"]) == len(along["proxy"]) == len(along["sqrt_kl"]) == 2  # 4 updates in blocks of 2
    assert all(math.isfinite(v) for v in along["gold"] + along["proxy"] + along["kl"])
    assert run["held_out"]["kl"] >= 0.0
  ref = results["reference"]
  assert ref["kl"] == pytest.approx(0.0, abs=1e-5)  # the reference against itself
  assert list(ref["proxy"]) == ["1x32x2"]
  assert list(results["dpo"]) == ["0.1", "1.0"]
  for point in results["dpo"].values():
    assert point["kl"] >= 0.0 and list(point["proxy"]) == ["1x32x2"]
  assert list(results["dpo_verdict"]) == ["1x32x2"]


def test_bad_flags_fail_before_anything_is_written(tmp_path):
  out = tmp_path / "out"
  proc = run_python(["-m", "experiments.tables.rlhf_overoptimization", f"--outdir={out}", "--config.rm_sizes=2x63x4"])
  assert proc.returncode == 2 and "n_embd divisible by n_head" in proc.stderr
  assert not out.exists()


@pytest.mark.parametrize("change, message", [
    ({"ppo_steps": 10, "window": 8}, "at least two blocks"),
    ({"rm_sizes": ("1x32x2", "1x32x2")}, "rm_sizes must name distinct sizes"),
    ({"dpo_betas": (0.0, 0.1)}, "dpo_betas must be distinct positive numbers"),
])
def test_bad_config_is_refused_before_anything_runs(tmp_path, change, message):
  config = table.get_config("smoke")
  config.update(change)
  with pytest.raises(ConfigError, match=message):
    table.run(config, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_float_lists():
  assert table._floats("ppo_betas", (0, 0.5), allow_zero=True) == [0.0, 0.5]  # pylint: disable=protected-access
  for values, allow_zero in (((0, 0.1), False), ((0.1, 0.1), True), ((-1,), True), (("x",), True), ((), True)):
    with pytest.raises(ConfigError):
      table._floats("dpo_betas", values, allow_zero)  # pylint: disable=protected-access
