"""DQN: the replay buffer, epsilon-greedy, independent seeds, config checks and the experiment end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from experiments import dqn as dqn_experiment
from research.rl import dqn
from research.train import ConfigError


def _tiny_config(**fields):
  """Two evaluation blocks of a small network; learning starts in the first."""
  config = dqn_experiment.get_config("smoke")
  config.update(num_envs=2, total_timesteps=400, buffer_size=128, batch_size=16, learning_starts=64,
                target_update_period=10, hidden_size=16, num_evaluations=2, eval_episodes=2)
  config.update(fields)
  return config


# ----------------------------------------------------------------------------- the buffer


def _experience(values):
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[0]
  return dqn.Experience(obs=values[:, None], action=jnp.zeros(n, jnp.int32), reward=values,
                        next_obs=values[:, None] + 0.5, terminated=jnp.zeros(n, bool))


def _empty(size):
  return dqn.buffer_init(size, jax.tree.map(lambda x: x[0], _experience([0.0])))


def test_buffer_is_circular():
  buffer = _empty(5)
  buffer = dqn.buffer_add(buffer, _experience([1, 2, 3]))
  assert int(buffer.position) == 3 and int(buffer.count) == 3
  buffer = dqn.buffer_add(buffer, _experience([4, 5, 6, 7]))  # overwrites 1 and 2
  assert int(buffer.position) == 2 and int(buffer.count) == 5
  np.testing.assert_array_equal(buffer.data.reward, [6, 7, 3, 4, 5])
  np.testing.assert_array_equal(buffer.data.next_obs[:, 0], np.array([6, 7, 3, 4, 5]) + 0.5)


def test_masked_add_packs_the_chosen_items():
  buffer = dqn.buffer_add(_empty(4), _experience([1, 2, 3]), mask=jnp.array([True, False, True]))
  assert int(buffer.position) == 2 and int(buffer.count) == 2
  np.testing.assert_array_equal(buffer.data.reward, [1, 3, 0, 0])
  buffer = dqn.buffer_add(buffer, _experience([4, 5, 6]), mask=jnp.array([True, True, True]))  # wraps around
  np.testing.assert_array_equal(buffer.data.reward, [6, 3, 4, 5])
  assert int(buffer.position) == 1 and int(buffer.count) == 4
  unchanged = dqn.buffer_add(buffer, _experience([7, 8, 9]), mask=jnp.zeros(3, bool))
  jax.tree.map(np.testing.assert_array_equal, unchanged, buffer)


def test_buffer_samples_uniformly_from_filled_slots_only():
  buffer = dqn.buffer_add(_empty(100), _experience([10, 20, 30, 40]))
  batch = dqn.buffer_sample(buffer, jax.random.key(0), 40_000)
  counts = np.array([(np.asarray(batch.reward) == v).sum() for v in (10, 20, 30, 40)])
  assert counts.sum() == 40_000  # never an empty slot
  np.testing.assert_allclose(counts / 40_000, 0.25, atol=0.01)
  np.testing.assert_array_equal(batch.obs[:, 0], batch.reward)  # rows stay whole
  other = dqn.buffer_sample(buffer, jax.random.key(1), 64)
  assert not np.array_equal(other.reward, batch.reward[:64])


# ----------------------------------------------------------------------------- acting


def test_epsilon_schedule_is_linear_then_flat():
  hp = dqn.default_hparams(_tiny_config(epsilon_start=1.0, epsilon_end=0.1, exploration_fraction=0.5))
  steps = jnp.array([0, 50, 100, 150, 400])
  np.testing.assert_allclose(dqn.epsilon(steps, 200, hp), [1.0, 0.55, 0.1, 0.1, 0.1], rtol=1e-6)
  no_schedule = hp._replace(exploration_fraction=jnp.float32(0.0))
  np.testing.assert_allclose(dqn.epsilon(steps, 200, no_schedule), 0.1, rtol=1e-6)


def test_epsilon_greedy_explores_at_the_rate_epsilon():
  q = jnp.tile(jnp.array([[0.0, 5.0, 1.0, 2.0]]), (40_000, 1))
  actions = np.asarray(dqn.epsilon_greedy(q, 0.2, jax.random.key(0)))
  # Greedy (action 1) with probability 0.8 + 0.2 / 4; each other action 0.2 / 4.
  np.testing.assert_allclose(np.bincount(actions, minlength=4) / 40_000, [0.05, 0.85, 0.05, 0.05], atol=0.01)
  np.testing.assert_array_equal(dqn.epsilon_greedy(q[:10], 0.0, jax.random.key(1)), 1)


# ----------------------------------------------------------------------------- the jitted run


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def two_seeds():
  """Two seeds vmapped, and a single run of the second, of the tiny config with Double DQN and a dueling head."""
  config = _tiny_config(double_dqn=True, dueling=True)
  train = dqn.make_train(config)
  keys = jax.random.split(jax.random.key(0), 2)
  return config, jax.jit(jax.vmap(train))(keys), jax.jit(train)(keys[1])


def test_output_shapes_and_finite_losses(two_seeds):
  config, out, _ = two_seeds
  n = dqn.num_updates(config)
  assert n == 400 // 2
  assert out.metrics.total_loss.shape == (2, n)
  assert out.evaluation.episode_return.shape == (2, 2, 2)
  np.testing.assert_array_equal(out.evaluation.env_steps[0], [200, 400])
  np.testing.assert_array_equal(out.metrics.env_steps[0, [0, -1]], [2, 400])
  assert np.all(np.isfinite(out.metrics.total_loss))
  # No gradient step before learning_starts environment steps: loss and update are zero there.
  learning = np.asarray(out.metrics.env_steps[0]) > config.learning_starts
  assert np.all(out.metrics.update_norm[:, ~learning] == 0.0) and np.all(out.metrics.update_norm[:, learning] > 0.0)
  # Epsilon falls linearly from 1 and the learning rate anneals to 0.
  np.testing.assert_allclose(out.metrics.epsilon[0, 0], 1.0)
  assert out.metrics.learning_rate[0, -1] < out.metrics.learning_rate[0, np.argmax(learning)]
  assert set(out.params["params"]) >= {"value_head", "advantage_head"}


def test_every_seed_is_its_own_run(two_seeds):
  _, out, single = two_seeds
  # The vmapped seed 1 is the run of key 1 alone ...
  jax.tree.map(lambda b, s: np.testing.assert_allclose(b[1], s, rtol=1e-4, atol=1e-5), out, single)
  # ... and the seeds differ in initial weights, exploration and minibatches.
  kernels = out.params["params"]["hidden_0"]["kernel"]
  assert not np.allclose(kernels[0], kernels[1])
  assert not np.array_equal(out.metrics.episode_return[0], out.metrics.episode_return[1])
  assert not np.allclose(out.metrics.q_mean[0], out.metrics.q_mean[1])


def test_initial_weights_exploration_and_minibatches_depend_on_the_key_and_hparams_vmap():
  # Runs 0 and 1: frozen weights (learning rate 0) and pure exploration (epsilon 1), two keys; what differs
  # between them is the key's own streams (a fixed key inside train would make them equal). Run 2: swept
  # values of the traced hyperparameters, in the same program.
  config = _tiny_config()
  frozen = dqn.default_hparams(config)._replace(learning_rate=jnp.float32(0.0), epsilon_start=jnp.float32(1.0),
                                                epsilon_end=jnp.float32(1.0))
  swept = dqn.default_hparams(config)._replace(epsilon_end=jnp.float32(0.5), tau=jnp.float32(0.1))
  hparams = jax.tree.map(lambda *xs: jnp.stack(xs), frozen, frozen, swept)
  keys = jax.random.split(jax.random.key(3), 3)
  out = jax.jit(jax.vmap(dqn.make_train(config)))(keys, hparams)
  kernels = out.params["params"]["hidden_0"]["kernel"]
  assert not np.allclose(kernels[0], kernels[1])  # initial weights (never trained)
  assert not np.array_equal(out.metrics.episodes[0], out.metrics.episodes[1])  # exploration and environments
  assert not np.allclose(out.metrics.target_mean[0], out.metrics.target_mean[1])  # the sampled minibatches
  np.testing.assert_allclose(out.metrics.epsilon[:, -1], [1.0, 1.0, 0.5], rtol=1e-6)
  np.testing.assert_array_equal(out.metrics.update_norm[:2], 0.0)
  assert np.all(np.isfinite(out.metrics.total_loss))


@pytest.mark.parametrize("fields,message", [
    ({"buffer_size": 8, "batch_size": 16}, "buffer_size 8 is smaller than batch_size 16"),
    ({"epsilon_start": 1.5}, "epsilon_start must be in \\[0, 1\\], got 1.5"),
    ({"epsilon_end": -0.1}, "epsilon_end must be in \\[0, 1\\], got -0.1"),
    ({"target_update_period": 0}, "target_update_period must be a positive integer"),
    ({"env_name": "Pong-v0"}, "unknown env_name 'Pong-v0'; choose one of: CartPole-v1"),
    ({"loss": "l1"}, "unknown loss 'l1'; choose one of: huber, mse"),
    ({"tau": 0.0}, "tau must be in \\(0, 1\\], got 0.0"),
    ({"total_timesteps": 2}, "total_timesteps 2 is less than"),
])
def test_bad_config_is_a_config_error(fields, message):
  with pytest.raises(ConfigError, match=message):
    dqn.make_train(_tiny_config(**fields))


def test_bad_config_is_one_line_and_exit_2_from_the_command_line(tmp_path):
  proc = run_python(["-m", "experiments.dqn", "--config=experiments/dqn.py:smoke", f"--workdir={tmp_path / 'w'}",
                     "--config.buffer_size=32", "--config.batch_size=64"])
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == ["error: buffer_size 32 is smaller than batch_size 64"]
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_smoke_experiment_writes_greedy_returns(tmp_path):
  config = dqn_experiment.get_config("smoke")
  results = dqn_experiment.run(config, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  assert written["final_return_per_seed"] == results["final_return_per_seed"]
  assert set(dqn_experiment.metric_names(config)) <= set(results)  # what a sweep may plot
  assert len(results["final_return_per_seed"]) == config.num_seeds
  assert written["config"]["env_name"] == "CartPole-v1" and written["wall_time_s"] > 0
  assert os.path.getsize(tmp_path / "returns.png") > 0
  for initial, final in zip(results["initial_return_per_seed"], results["final_return_per_seed"]):
    assert initial < 45 and final > 66, results  # a random policy returns about 22


@pytest.mark.slow
def test_tables_smoke_writes_both_tables(tmp_path):
  from experiments.tables import dqn as table  # pylint: disable=import-outside-toplevel
  config = table.get_config("smoke")
  out = table.run(config, str(tmp_path))
  assert set(out["greedy_return_per_seed"]) == set(table.CELLS)
  assert all(np.shape(r) == (config.num_seeds, config.num_evaluations) for r in out["greedy_return_per_seed"].values())
  assert set(out["start_value_estimate"]) == {"DQN", "Double DQN"}
  text = (tmp_path / "dqn.md").read_text()
  assert "| no replay, no target network |" in text and "| Double DQN |" in text
  assert (tmp_path / "dqn.png").stat().st_size > 1000


def test_sweep_varies_only_traced_fields(tmp_path):
  proc = run_python(["-m", "experiments.sweep", "--config=experiments/dqn.py:smoke", f"--workdir={tmp_path / 'w'}",
                     "--vary=buffer_size=64,128"])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: cannot vary buffer_size: it is not a traced hyperparameter")
  assert lines[0].endswith("traced: epsilon_end, epsilon_start, exploration_fraction, gamma, learning_rate, tau")
  assert not (tmp_path / "w").exists()
