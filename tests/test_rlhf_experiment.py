"""experiments/rlhf.py end to end on its smoke preset: every stage, the files, resuming at a stage, bad input."""

import json
import os

import pytest

from experiments import rlhf as rlhf_experiment
from research.train import ConfigError
from tests.conftest import run_python

SMOKE = "--config=experiments/rlhf.py:smoke"
KEYS = {"gold_reward_ref", "gold_reward_ppo", "gold_reward_dpo", "gold_reward_ref_se", "gold_reward_ppo_se",
        "gold_reward_dpo_se", "kl_ppo", "kl_dpo", "reward_model_accuracy"}


def _results(workdir) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_rlhf_smoke_runs_every_stage_and_resumes_at_its_stage(tmp_path):
  workdir = str(tmp_path / "run")
  # A run stopped after two of DPO's four steps (the other stages finished) ...
  first = run_python(["-m", "experiments.rlhf", f"--workdir={workdir}", SMOKE, "--config.dpo.steps=2"])
  assert first.returncode == 0, first.stderr[-3000:]
  for stage in ("pretrain", "sft", "reward", "ppo", "dpo"):
    assert os.path.exists(os.path.join(workdir, stage, "results.json")), stage
  results = _results(workdir)
  assert KEYS <= set(results)
  assert all(isinstance(results[k], float) for k in KEYS)
  assert 0.0 <= results["reward_model_accuracy"] <= 1.0
  assert results["kl_ppo"] >= 0.0 and results["kl_dpo"] >= 0.0
  with open(os.path.join(workdir, "samples.txt")) as f:
    samples = f.read()
  assert samples.count("--- prompt") == 2 and " ref (gold" in samples and " ppo (gold" in samples

  # ... is continued by the same command: the finished stages are restored, DPO resumes at step 2.
  second = run_python(["-m", "experiments.rlhf", f"--workdir={workdir}", SMOKE])
  assert second.returncode == 0, second.stderr[-3000:]
  for stage in ("pretrain", "sft", "reward", "ppo"):
    assert f"stage {stage}: finished" in second.stderr
  assert f"resuming from step 2 of {os.path.join(workdir, 'dpo')}" in second.stderr
  resumed = _results(workdir)
  assert resumed["config"]["dpo"]["steps"] == 4
  # The restored reference, PPO policy and reward model score the same as before.
  for key in ("gold_reward_ref", "gold_reward_ppo", "kl_ppo", "reward_model_accuracy"):
    assert resumed[key] == results[key], key


def test_rlhf_bad_config_fails_before_anything_is_written(tmp_path):
  workdir = str(tmp_path / "bad")
  out = run_python(["-m", "experiments.rlhf", f"--workdir={workdir}", SMOKE, "--config.ppo.num_minibatches=3"])
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == ("error: ppo batch_size 8 is not divisible by num_minibatches 3")
  assert not os.path.exists(workdir)


def test_rlhf_check_config_names_the_field():
  config = rlhf_experiment.get_config("smoke")
  rlhf_experiment.check_config(config)
  for field, value, message in (("new_tokens", 40, "exceeds the model's context"),
                                ("ranking_size", 1, "ranking_size must be at least 2"),
                                ("samples_shown", 100, "exceeds num_eval_prompts")):
    bad = config.copy_and_resolve_references()
    bad[field] = value
    with pytest.raises(ConfigError, match=message):
      rlhf_experiment.check_config(bad)
  bad = config.copy_and_resolve_references()
  bad.pretrain.model = "lstm"
  with pytest.raises(ConfigError, match="the policy is a GPT: pretrain.model must be gpt, got 'lstm'"):
    rlhf_experiment.check_config(bad)
