"""research.sweep: a vmapped member is the run research.train.train makes; swept hyperparameters take effect."""

import dataclasses

import jax
import numpy as np
import pytest

import tiny_run
from research import data as data_lib
from research import sweep
from research.train import Keys, init_state, train


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def digits():
  return data_lib.load("digits", "train")


def _config(steps: int = 6):
  config = tiny_run.make_config(steps, batch=32)
  config.seed = 3
  return config


def test_member_equals_the_training_loop_run(tmp_path, digits):
  config = _config()
  task = tiny_run.make_task(config, hidden=8)
  run = train(task, config, str(tmp_path), digits)
  result = sweep.run(task, config, digits, seeds=[config.seed, config.seed + 1])
  member = jax.tree.map(lambda x: np.asarray(x)[0], result.state)
  other = jax.tree.map(lambda x: np.asarray(x)[1], result.state)
  assert int(member.step) == config.steps
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), member.params, run.state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), member.ema_params,
               run.state.ema_params)
  # The loop's train_loss is the mean over its last log interval (here all 6 steps) of the member's losses.
  assert config.log_every >= config.steps
  np.testing.assert_allclose(float(np.mean(result.metrics["loss"][0])), run.results["train_loss"], rtol=1e-5)
  assert result.metrics["loss"].shape == (2, config.steps)
  # Another seed is another run.
  assert not np.allclose(other.params["params"]["Dense_0"]["kernel"], member.params["params"]["Dense_0"]["kernel"])


def test_swept_learning_rates_give_different_runs(digits):
  config = _config()
  task = tiny_run.make_task(config, hidden=8)
  result = sweep.run(task, config, digits, seeds=[0, 0, 0],
                     hparams={"learning_rate": [config.optimizer.learning_rate, 0.0, 1e-1]})
  kernels = np.asarray(result.state.params["params"]["Dense_1"]["kernel"])  # (members, hidden, 10)
  assert not np.allclose(kernels[0], kernels[2])
  # Learning rate 0 leaves the initialisation (same seed, so the same init for every member).
  init = init_state(task, Keys.from_seed(0).init, {k: v[:32] for k, v in digits.items()}, config.ema_decay).params
  np.testing.assert_array_equal(kernels[1], init["params"]["Dense_1"]["kernel"])
  assert not np.allclose(kernels[0], init["params"]["Dense_1"]["kernel"])


def test_bad_hparams_shape_raises(digits):
  config = _config()
  task = tiny_run.make_task(config, hidden=8)
  with pytest.raises(ValueError, match="one value per seed"):
    sweep.run(task, config, digits, seeds=[0, 1], hparams={"learning_rate": [1e-3]})
  with pytest.raises(ValueError, match="cannot vary optimizer.momentum_typo: it is not a traced"):
    sweep.run(task, config, digits, seeds=[0], hparams={"momentum_typo": [0.9]})


def _noisy_task(config):
  """tiny_run's classifier with input noise drawn from the step's key, so the key streams matter."""
  task = tiny_run.make_task(config, hidden=8)

  def loss(params, batch, key, train, hparams):
    noisy = batch["image"].astype(np.float32) + 4.0 * jax.random.normal(key, batch["image"].shape)
    return task.loss(params, {**batch, "image": noisy}, key, train, hparams)

  return dataclasses.replace(task, loss=loss)


def test_chained_runs_equal_one_run(digits):
  config = _config(steps=7)
  task = _noisy_task(config)
  seeds = [config.seed, config.seed + 5]
  whole = sweep.run(task, config, digits, seeds=seeds)
  first = sweep.run(task, config, digits, seeds=seeds, steps=3)
  rest = sweep.run(task, config, digits, seeds=seeds, state=first.state)  # the 4 steps still to go
  assert np.asarray(rest.state.step).tolist() == [7, 7]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), rest.state, whole.state)
  np.testing.assert_allclose(np.concatenate([first.metrics["loss"], rest.metrics["loss"]], axis=1),
                             whole.metrics["loss"], rtol=1e-5)
  # The continuation is not a fresh start: from the initial state the same 4 steps end elsewhere.
  fresh = sweep.run(task, config, digits, seeds=seeds, steps=4)
  assert not np.allclose(fresh.state.params["params"]["Dense_0"]["kernel"],
                         rest.state.params["params"]["Dense_0"]["kernel"])


def test_continuing_needs_a_common_step_and_no_new_hparams(digits):
  config = _config(steps=4)
  task = tiny_run.make_task(config, hidden=8)
  first = sweep.run(task, config, digits, seeds=[0, 1], steps=2)
  with pytest.raises(ValueError, match="hparams are set at initialisation"):
    sweep.run(task, config, digits, seeds=[0, 1], state=first.state, hparams={"learning_rate": [1e-3, 1e-3]})
  with pytest.raises(ValueError, match="state must hold 3 members"):
    sweep.run(task, config, digits, seeds=[0, 1, 2], state=first.state)
  with pytest.raises(ValueError, match="a sweep needs steps >= 1, got 0"):
    sweep.run(task, config, digits, seeds=[0, 1], state=first.state, steps=0)
