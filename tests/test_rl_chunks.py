"""PPO, A2C and DQN a chunk of updates at a time: the same run bit for bit, a stop at a chunk's end, a resume."""

import json
import os
import re
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_default_compile, run_python
from experiments import a2c as a2c_experiment
from experiments import dqn as dqn_experiment
from experiments import ppo as ppo_experiment
from research.rl import a2c, dqn, experiment, ppo
from research.train import Checkpointer, ConfigError, Members, NonFiniteLossError, restore_pytree

# Each algorithm's experiment and module, and the fields that shrink its smoke preset to a small network and
# seven updates: chunks of 3, 3 and 1. DQN: six updates in three evaluation blocks of two, chunks of 3 and 3 (one
# program to compile) with an evaluation inside each chunk and one at the end.
_TINY = {
    "ppo": (ppo_experiment, ppo, {"num_envs": 2, "num_steps": 16, "total_timesteps": 7 * 32, "update_epochs": 2,
                                  "num_minibatches": 2, "hidden_size": 16}),
    "a2c": (a2c_experiment, a2c, {"num_envs": 2, "num_steps": 5, "total_timesteps": 7 * 10, "hidden_size": 16}),
    "dqn": (dqn_experiment, dqn, {"num_envs": 2, "num_steps": 4, "total_timesteps": 6 * 8, "buffer_size": 32,
                                  "batch_size": 4, "learning_starts": 8, "target_update_period": 2,
                                  "hidden_size": 16, "num_evaluations": 3, "eval_episodes": 2}),
}
_CHUNKS = {"updates_per_chunk": 3, "checkpoint_every": 0}


def _tiny_config(name="ppo"):
  experiment, _, fields = _TINY[name]
  config = experiment.get_config("smoke")
  config.update(fields)
  config.update(_CHUNKS)
  return config


def _tiny_flags(name):
  """The command-line flags of `_tiny_config(name)`."""
  fields = {**_TINY[name][2], **_CHUNKS}
  return [f"--config=experiments/{name}.py:smoke"] + [f"--config.{k}={v}" for k, v in fields.items()]


def _assert_equal_trees(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("name", ["ppo", "a2c", "dqn"])
def test_chunks_equal_the_single_scan_bit_for_bit(name):
  """Under XLA's default compile, what a user runs (the tests' cheap flags may order the two programs' sums
  differently)."""
  done = run_default_compile(["-c", "import sys, test_rl_chunks; test_rl_chunks.check_chunks_equal_the_single_scan("
                              "sys.argv[1]); print('same bits')", name])
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == "same bits"


def check_chunks_equal_the_single_scan(name):
  """Asserts that `name`'s chunks of 3 updates give its one-scan run's parameters, metrics and evaluations."""
  algorithm, config = _TINY[name][1], _tiny_config(name)
  key = jax.random.key(5)
  whole = jax.jit(algorithm.make_train(config))(key)
  out, carries = experiment.chunked_train(algorithm, config, key)
  assert len(carries) == (2 if name == "dqn" else 3)
  # Parameters, every metric (NaN where no episode ended in both) and DQN's evaluations.
  _assert_equal_trees(whole, out)
  metrics = out.metrics
  total = len(metrics.env_steps)
  assert total == (6 if name == "dqn" else 7)
  np.testing.assert_array_equal(metrics.env_steps, config.num_envs * config.num_steps * np.arange(1, total + 1))
  if name == "dqn":
    # Evaluations after updates 2, 4 and 6: inside the first chunk, inside the second and at its end.
    np.testing.assert_array_equal(whole.evaluation.env_steps, [16, 32, 48])
    written = [np.isfinite(np.asarray(c.evaluation.episode_return)).all(-1) for c in carries]
    np.testing.assert_array_equal(written, [[1, 0, 0], [1, 1, 1]])


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


def stopped_command(name: str) -> str:
  """`python -c` code running `python -m experiments.<name>` (an RL experiment, or sweep) that sends itself SIGINT
  from its first progress line: the stop lands at the first chunk's end whatever the machine's speed."""
  return f"""
import os, signal, sys
from experiments import {name} as module
from research.rl import experiment
from research.train import cli
report = experiment._report
def stop(line):
  report(line)
  experiment._report = report
  os.kill(os.getpid(), signal.SIGINT)
experiment._report = stop
sys.argv = [module.__file__] + sys.argv[1:]
cli.main(None if module.__name__ == "experiments.sweep" else module.__file__, module.run)
"""


@pytest.mark.parametrize("name", ["ppo", "dqn"])
def test_a_stopped_run_resumes_to_the_uninterrupted_results(tmp_path, name):
  experiment, algorithm = _TINY[name][:2]
  config = _tiny_config(name)
  total, steps = algorithm.num_updates(config), config.num_envs * config.num_steps
  stopped = tmp_path / "stopped"
  done = run_python(["-c", stopped_command(name), f"--workdir={stopped}", *_tiny_flags(name)])
  assert done.returncode == 128 + signal.SIGINT, done.stderr
  # One line says so (a shared compilation cache's warnings may come before it).
  lines = done.stderr.strip().splitlines()
  assert lines[-1] == (f"interrupted by SIGINT at step 3: saved a checkpoint in {stopped / 'checkpoints'}; "
                       "run the same command to resume")
  assert sum("interrupted" in line for line in lines) == 1 and "Traceback" not in done.stderr
  assert f"update 3/{total} (env steps {3 * steps})" in done.stdout and f"update 6/{total}" not in done.stdout
  line, = [line for line in done.stdout.splitlines() if line.startswith(f"update 3/{total}")]
  if name == "dqn":  # the newest greedy evaluation so far: the one that ended update 2
    assert re.search(rf", greedy evaluation at env step {2 * steps}: -?[0-9]+\.[0-9]$", line), line
  else:
    assert "greedy" not in line, line
  assert sorted(os.listdir(stopped / "checkpoints")) == ["3"]
  assert not os.path.exists(stopped / "results.json")

  # A changed setting is refused; the same command resumes and finishes.
  config.gamma = 0.9
  with pytest.raises(ConfigError, match="gamma 0.99 \\(now 0.9\\)"):
    experiment.run(config, str(stopped))
  resumed = experiment.run(_tiny_config(name), str(stopped))
  whole = experiment.run(_tiny_config(name), str(tmp_path / "whole"))
  for field in ("final_return_per_seed", "initial_return_per_seed", "final_return_mean", "num_updates"):
    assert resumed[field] == whole[field], field
  _assert_equal_trees(restore_pytree(str(stopped / "params")), restore_pytree(str(tmp_path / "whole" / "params")))
  assert os.path.exists(stopped / "returns.png")
  assert sorted(os.listdir(stopped / "checkpoints")) == ["3", str(total)]  # the end is saved too
  if name == "dqn":  # the evaluation after update 2, before the stop, came back with the rest of the carry
    step, state = Checkpointer(str(stopped), 2).restore_saved()
    assert step == total and np.isfinite(np.asarray(state["carry"]["evaluation"]["episode_return"])).all()

  # Run again, the finished workdir trains nothing.
  again = experiment.run(_tiny_config(name), str(stopped))
  assert again == json.loads((stopped / "results.json").read_text())


def _poisoned(algorithm, from_update):
  """`algorithm` whose chunks report a NaN loss from update `from_update` (0-based) on: a run that diverges there
  (in a sweep, the members with ent_coef > 0)."""
  make_chunks = algorithm.make_chunks

  def poisoned_chunks(config):
    chunks = make_chunks(config)

    def advance(carry, first, length, hparams=None):
      carry, metrics = chunks.advance(carry, first, length, hparams)
      bad = (first + jnp.arange(length) >= from_update) & (True if hparams is None else hparams.ent_coef > 0)
      return carry, metrics._replace(total_loss=jnp.where(bad, jnp.nan, metrics.total_loss))
    return chunks._replace(advance=advance)

  fields = {name: getattr(algorithm, name) for name in dir(algorithm) if not name.startswith("__")}
  return types.SimpleNamespace(**{**fields, "make_chunks": poisoned_chunks, "__name__": algorithm.__name__})


def test_a_non_finite_loss_stops_the_run_at_its_chunk_and_keeps_the_last_checkpoint(tmp_path):
  config = _tiny_config()
  config.checkpoint_every = 3
  with pytest.raises(NonFiniteLossError, match="non-finite loss in seed 0 at update 5 \\(env step 160\\); the "
                                               "checkpoint at update 3 is kept, nothing else was written"):
    experiment.run(_poisoned(ppo, 4), config, str(tmp_path / "w"))
  assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["3"]
  assert not os.path.exists(tmp_path / "w" / "results.json")

  # A sweep reports the diverged member and writes the others' results.
  config = _tiny_config()
  members = experiment.run(_poisoned(ppo, 6), config, str(tmp_path / "s"),
                           members=Members((0, 0), {"ent_coef": (0.0, 0.1)}))["members"]
  assert members[1] == {"seed": 0, "values": {"ent_coef": 0.1}, "train_loss": None, "diverged_at_step": 7}
  assert np.isfinite(members[0]["train_loss"]) and len(members[0]["final_return_per_seed"]) == 2
