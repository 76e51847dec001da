"""PPO swept from `python -m experiments.sweep`: members equal their single runs; bad sweeps are refused."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import assert_declared_metrics, run_python
from experiments import ppo as ppo_experiment
from research.rl import ppo
from research.train import ConfigError, Members, restore_pytree

# The smoke preset cut to 4 updates. Hidden layers of 16 keep each seed's orthogonal initialisation below the
# size at which jaxlib spreads a batch of QR factorisations over the CPU thread pool, where two of them at once
# can wait on each other forever on a 2-core machine.
TINY = ["--config.total_timesteps=2048", "--config.hidden_size=16"]


def _tiny_config(**fields):
  config = ppo_experiment.get_config("smoke")
  config.total_timesteps, config.hidden_size = 2048, 16
  for name, value in fields.items():
    config[name] = value
  return config


def _sweep(workdir, *flags):
  return run_python(["-m", "experiments.sweep", "--config=experiments/ppo.py:smoke", f"--workdir={workdir}", *TINY,
                     *flags])


@pytest.mark.slow
def test_command_line_sweep_members_equal_their_single_runs(tmp_path):
  proc = _sweep(tmp_path / "s", "--seeds=1", "--vary=ent_coef=0,0.1", "--metric=final_return_mean")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((tmp_path / "s" / "results.json").read_text())
  members = out["members"]
  assert [(m["seed"], m["values"]) for m in members] == [(0, {"ent_coef": 0.0}), (0, {"ent_coef": 0.1})]
  assert_declared_metrics(ppo_experiment, _tiny_config(), members)
  for member in members:
    # The single run `python -m experiments.ppo --config.ent_coef=v`: the same program, keys and config.
    config = _tiny_config(ent_coef=member["values"]["ent_coef"])
    single = jax.jit(jax.vmap(ppo.make_train(config)))(jax.random.split(jax.random.key(0), config.num_seeds))
    final = ppo.final_return(single.metrics, ppo_experiment.FINAL_FRACTION)
    initial = ppo.initial_return(single.metrics, ppo_experiment.FINAL_FRACTION)
    np.testing.assert_allclose(member["final_return_per_seed"], final, rtol=1e-5)
    np.testing.assert_allclose(member["initial_return_per_seed"], initial, rtol=1e-5)
    np.testing.assert_allclose(member["final_return_mean"], np.mean(final), rtol=1e-5)
    np.testing.assert_allclose(member["train_loss"], np.mean(single.metrics.total_loss[:, -1]), rtol=1e-5, atol=1e-6)
  # The entropy bonus enters the loss, so the members differ.
  assert members[0]["train_loss"] != pytest.approx(members[1]["train_loss"], rel=1e-3)
  table = (tmp_path / "s" / "sweep.md").read_text()
  assert "| ent_coef | train_loss | final_return_mean | diverged |" in table
  assert (tmp_path / "s" / "programs" / "0" / "returns.png").stat().st_size > 1000
  assert (tmp_path / "s" / "sweep.png").stat().st_size > 1000


def test_untraced_field_is_one_line_exit_2_and_nothing_written(tmp_path):
  proc = _sweep(tmp_path / "w", "--vary=num_envs=2,8")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0] == ("error: cannot vary num_envs: it is not a traced hyperparameter of this experiment (a field "
                      "that may change shapes or the program); traced: clip_eps, ent_coef, gae_lambda, gamma, "
                      "learning_rate, vf_coef")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("hparams,message", [
    ({"gamma": (0.9, 1.5)}, "gamma must be in \\[0, 1\\], got 1.5"),
    ({"clip_eps": (0.2, 0.0)}, "clip_eps must be > 0, got 0.0"),
    ({"ent_coef": (0.1,)}, "ent_coef has 1 values for 2 members"),
])
def test_bad_member_values_are_refused_before_compiling(tmp_path, hparams, message):
  with pytest.raises(ConfigError, match=message):
    ppo_experiment.run(_tiny_config(), str(tmp_path / "w"), members=Members((0, 1), hparams))
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_a_stopped_sweep_resumes_to_the_uninterrupted_sweep_bit_for_bit(tmp_path):
  """The members train a chunk of updates at a time as a single run does: a progress line per chunk, a checkpoint
  on SIGINT, the same command resuming to the files of a sweep never stopped, and another sweep refused there."""
  from test_rl_chunks import _tiny_flags, stopped_command  # pylint: disable=import-outside-toplevel
  flags = [*_tiny_flags("ppo"), "--seeds=1", "--vary=ent_coef=0,0.1", "--metric=final_return_mean"]
  stopped = tmp_path / "stopped"
  done = run_python(["-c", stopped_command("sweep"), f"--workdir={stopped}", *flags])
  assert done.returncode == 130, done.stderr[-3000:]
  group = stopped / "programs" / "0"
  assert done.stderr.strip().splitlines()[-1] == (
      f"interrupted by SIGINT at step 3: saved a checkpoint in {group / 'checkpoints'}; run the same command to resume")
  assert "compiled ppo on CartPole-v1 x 2 members x 2 seeds" in done.stdout, done.stdout
  assert "update 3/7 (env steps 96)" in done.stdout and "update 6/7" not in done.stdout
  assert sorted(os.listdir(group / "checkpoints")) == ["3"] and not (stopped / "results.json").exists()

  other = run_python(["-m", "experiments.sweep", f"--workdir={stopped}", *flags[:-2], "--vary=ent_coef=0,0.2"])
  assert other.returncode == 2, other.stderr[-3000:]
  assert other.stderr.strip().splitlines()[-1].startswith(f"error: the checkpoint in {group} was written by another sweep")

  resumed = run_python(["-m", "experiments.sweep", f"--workdir={stopped}", *flags])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from update 3/7" in resumed.stdout and "update 6/7 (env steps 192)" in resumed.stdout
  whole = run_python(["-m", "experiments.sweep", f"--workdir={tmp_path / 'whole'}", *flags])
  assert whole.returncode == 0, whole.stderr[-3000:]
  members = [json.loads((workdir / "results.json").read_text())["members"] for workdir in (stopped, tmp_path / "whole")]
  assert members[0] == members[1] and len(members[0]) == 2
  assert members[0][0]["train_loss"] != members[0][1]["train_loss"]
  np.testing.assert_equal(jax.tree.leaves(restore_pytree(str(group / "params"))),
                          jax.tree.leaves(restore_pytree(str(tmp_path / "whole" / "programs" / "0" / "params"))))
