"""The RLHF PPO benchmark: its smoke run writes the report, the PyTorch peer computes what our rollout computes
(log-probabilities, values, scores, rewards, GAE), the models have the same sizes on both sides and the ratios
follow from the times; no timing is asserted."""

import json
import math
import shlex
import statistics

import pytest

from conftest import run_python

pytest.importorskip("torch")
pytest.importorskip("transformers")

VOCAB, E, PROMPT, NEW, BATCH = 96, 32, 4, 4, 4
# The smoke preset: a policy of 1 x E x 2, a reward model of 1 x 16 x 2, BATCH prompts of PROMPT tokens and NEW new
# ones, 1 epoch of 2 minibatches, one iteration, one repeat at one PyTorch thread.
SMOKE = ["--config=experiments/bench/rlhf.py:smoke"]


def _gpt2_params(n_layer, e, vocab, context):
  """GPT-2's parameters from its shapes: embeddings, per block 2 LayerNorms, c_attn, c_proj, c_fc, mlp c_proj."""
  block = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e)
  return vocab * e + context * e + n_layer * block + 2 * e


@pytest.mark.slow
def test_smoke_run_writes_the_report_and_the_peer_computes_the_same_rollout(tmp_path):
  args = ["-m", "experiments.bench.rlhf", f"--outdir={tmp_path}", *SMOKE]
  proc = run_python(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "rlhf.json").read_text())
  markdown = (tmp_path / "rlhf.md").read_text()
  assert report["command"] == shlex.join(["python", *args]) and f"`{report['command']}`" in markdown
  assert "|---" in markdown
  # Policy: GPT-2 plus a value head (E + 1); reward model: its own GPT-2 plus a scalar head.
  context = PROMPT + NEW
  policy = _gpt2_params(1, E, VOCAB, context) + E + 1
  reward = _gpt2_params(1, 16, VOCAB, context) + 16 + 1
  assert report["param_count"] == {"policy": {"jax": policy, "torch": policy},
                                   "reward_model": {"jax": reward, "torch": reward}}
  # The peer's forward passes and GAE on our rollout's completions give our numbers.
  diffs = report["same_computation_max_abs_diff"]
  assert set(diffs) == {"log_prob", "ref_log_prob", "value", "score", "reward", "advantage", "target"}
  assert all(d < 1e-4 for d in diffs.values()), diffs
  entries = report["entries"]
  assert set(entries) == {"torch_1", "jax_scan", "jax_update"}
  best = report["torch_best_s_per_iteration_per_repeat"]
  for name, entry in entries.items():
    seconds = entry["s_per_iteration_per_repeat"]
    assert len(seconds) == 1 and seconds[0] > 0
    assert entry["ratios_per_repeat"] == pytest.approx([b / s for b, s in zip(best, seconds)])
    assert entry["ratio_vs_torch"] == pytest.approx(statistics.median(entry["ratios_per_repeat"]))
    assert entry["tokens_per_s"] == pytest.approx(BATCH * NEW / entry["s_per_iteration"])
    assert math.isfinite(entry["ratio_vs_torch"]) and entry["ratio_vs_torch"] > 0
  assert entries["torch_1"]["ratio_vs_torch"] == pytest.approx(1.0)
  assert 0 < entries["torch_1"]["rollout_share"] < 1
  assert all(math.isfinite(v) for v in report["mean_score"].values())
  assert report["versions"]["torch"] and report["versions"]["transformers"]


def test_bad_flags_fail_before_anything_is_written(tmp_path):
  out = tmp_path / "out"
  proc = run_python(["-m", "experiments.bench.rlhf", f"--outdir={out}", "--config.batch_size=6",
                     "--config.num_minibatches=4"])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and lines == ["error: batch_size 6 must split into num_minibatches 4 minibatches of at "
                                            "least 2 sequences"], proc.stderr[-2000:]
  assert not out.exists()


@pytest.mark.parametrize("change, message", [
    ({"rm_n_embd": 30, "rm_n_head": 4}, "rm_n_embd 30 is not divisible by rm_n_head 4"),
    ({"n_embd": 30, "n_head": 4}, "n_embd 30 is not divisible by n_head 4"),
    ({"new_tokens": 0}, "new_tokens must be > 0"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
])
def test_bad_setups_are_refused_before_anything_runs(tmp_path, change, message):
  from experiments.bench import rlhf as bench  # pylint: disable=import-outside-toplevel
  from research.train import ConfigError  # pylint: disable=import-outside-toplevel
  config = bench.get_config("smoke")
  config.update(change)
  with pytest.raises(ConfigError, match=message):
    bench.run(config, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
