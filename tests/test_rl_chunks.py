"""PPO a chunk of updates at a time: the same run bit for bit, a stop at a chunk's end, a resume."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from test_ppo import _tiny_config as ppo_tiny_config
from experiments import a2c as a2c_experiment
from experiments import ppo as ppo_experiment
from research.rl import a2c, ppo
from research.train import ConfigError, restore_pytree


def _tiny_config(algorithm="ppo"):
  """test_ppo's small network for seven updates, three per chunk: chunks of 3, 3 and 1."""
  config = ppo_tiny_config(algorithm)
  config.total_timesteps = 7 * 32
  config.updates_per_chunk = 3
  config.checkpoint_every = 0
  return config


def _assert_equal_trees(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("algorithm", ["ppo", "a2c"])
def test_chunks_equal_the_single_scan_bit_for_bit(algorithm):
  if algorithm == "a2c":
    module, config = a2c, a2c_experiment.get_config("smoke")
    config.num_envs, config.num_steps, config.total_timesteps, config.hidden_size = 2, 5, 7 * 10, 16
  else:
    module, config = ppo, _tiny_config(algorithm)
  key = jax.random.key(5)
  whole = jax.jit(module.make_train(config))(key)
  chunks = module.make_chunks(config)
  assert chunks.num_updates == 7
  carry = jax.jit(chunks.init)(key)
  advance = {n: jax.jit(lambda c, first, n=n: chunks.advance(c, first, n)) for n in (3, 1)}
  parts = []
  for first, length in ((0, 3), (3, 3), (6, 1)):  # 3 does not divide 7: a shorter last chunk
    carry, metrics = advance[length](carry, jnp.int32(first))
    parts.append(metrics)
  metrics = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
  _assert_equal_trees(whole.params, carry.runner.params)
  _assert_equal_trees(whole.metrics, metrics)  # every metric, NaN where no episode ended in both
  np.testing.assert_array_equal(metrics.env_steps, config.num_envs * config.num_steps * np.arange(1, 8))


def test_bad_updates_per_chunk_is_one_line_and_exit_2(tmp_path):
  config = _tiny_config()
  config.updates_per_chunk = -1
  with pytest.raises(ConfigError, match="updates_per_chunk must be an integer >= 0"):
    ppo_experiment.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
  done = run_python(["-m", "experiments.ppo", "--config=experiments/ppo.py:smoke",
                     f"--workdir={tmp_path / 'cli'}", "--config.updates_per_chunk=-2"])
  assert done.returncode == 2, done.stderr
  assert done.stderr.strip().splitlines() == ["error: updates_per_chunk must be an integer >= 0 (0: one chunk), got -2"]
  assert not os.path.exists(tmp_path / "cli" / "checkpoints")


# Runs the experiment's command in a subprocess that sends itself SIGINT from its first progress line:
# the stop lands at the first chunk's end whatever the machine's speed.
_STOPPED_RUN = """
import os, signal, sys
from experiments import ppo
from research.rl import experiment
from research.train import cli
report = experiment._report
def stop(line):
  report(line)
  experiment._report = report
  os.kill(os.getpid(), signal.SIGINT)
experiment._report = stop
sys.argv = ["ppo"] + sys.argv[1:]
cli.main(ppo.__file__, ppo.run)
"""

_TINY_FLAGS = ["--config=experiments/ppo.py:smoke", "--config.num_envs=2", "--config.num_steps=16",
               "--config.total_timesteps=224", "--config.update_epochs=2", "--config.num_minibatches=2",
               "--config.hidden_size=16", "--config.updates_per_chunk=3", "--config.checkpoint_every=0"]


def test_a_stopped_run_resumes_to_the_uninterrupted_results(tmp_path):
  stopped = tmp_path / "stopped"
  done = run_python(["-c", _STOPPED_RUN, f"--workdir={stopped}", *_TINY_FLAGS])
  assert done.returncode == 128 + signal.SIGINT, done.stderr
  # One line says so (a shared compilation cache's warnings may come before it).
  lines = done.stderr.strip().splitlines()
  assert lines[-1] == (f"interrupted by SIGINT at step 3: saved a checkpoint in {stopped / 'checkpoints'}; "
                       "run the same command to resume")
  assert sum("interrupted" in line for line in lines) == 1 and "Traceback" not in done.stderr
  assert "update 3/7 (env steps 96)" in done.stdout and "update 6/7" not in done.stdout
  assert sorted(os.listdir(stopped / "checkpoints")) == ["3"]
  assert not os.path.exists(stopped / "results.json")

  # A changed setting is refused; the same command resumes and finishes.
  config = _tiny_config()
  config.gamma = 0.9
  with pytest.raises(ConfigError, match="gamma 0.99 \\(now 0.9\\)"):
    ppo_experiment.run(config, str(stopped))
  resumed = ppo_experiment.run(_tiny_config(), str(stopped))
  whole = ppo_experiment.run(_tiny_config(), str(tmp_path / "whole"))
  for field in ("final_return_per_seed", "initial_return_per_seed", "final_return_mean", "num_updates"):
    assert resumed[field] == whole[field], field
  _assert_equal_trees(restore_pytree(str(stopped / "params")), restore_pytree(str(tmp_path / "whole" / "params")))
  assert os.path.exists(stopped / "returns.png")
  assert sorted(os.listdir(stopped / "checkpoints")) == ["3", "7"]  # the end is saved too

  # Run again, the finished workdir trains nothing.
  again = ppo_experiment.run(_tiny_config(), str(stopped))
  assert again == json.loads((stopped / "results.json").read_text())
