"""A2C: equal to PPO with one epoch, one minibatch and no clipping; config checks; the experiment end to end."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import a2c as a2c_experiment
from experiments import ppo as ppo_experiment
from research.rl import a2c, ppo
from research.train import ConfigError


def _tiny_config(**fields):
  """A few updates of a small network."""
  config = a2c_experiment.get_config("smoke")
  config.num_envs, config.num_steps, config.total_timesteps, config.hidden_size = 2, 8, 80, 16
  for name, value in fields.items():
    config[name] = value
  return config


def test_a2c_is_ppo_with_one_epoch_one_minibatch_and_no_clipping():
  # Huang et al. 2022: one gradient step at the parameters that collected the rollout has ratio 1, so PPO's
  # clipping never binds; PPO also standardises advantages and uses Adam, so A2C is configured to match.
  config = _tiny_config(optimizer="adam", normalize_advantages=True, gae_lambda=0.95, ent_coef=0.01,
                        vf_coef=0.5, learning_rate=3e-3)
  ppo_config = ppo_experiment.get_config("smoke")
  for name in ("env_name", "num_envs", "num_steps", "total_timesteps", "gamma", "gae_lambda", "ent_coef", "vf_coef",
               "max_grad_norm", "learning_rate", "anneal_lr", "hidden_size"):
    ppo_config[name] = config[name]
  ppo_config.update_epochs, ppo_config.num_minibatches, ppo_config.clip_value_loss = 1, 1, False
  assert config.optimizer_eps == 1e-5  # PPO's Adam epsilon

  key = jax.random.key(7)
  ours = jax.jit(a2c.make_train(config))(key)
  theirs = jax.jit(ppo.make_train(ppo_config))(key)
  assert ours.metrics.env_steps.shape == (5,)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), ours.params, theirs.params)
  # The policy losses differ in value (-mean(log pi A) vs -mean(rho A), rho = 1) but not in gradient.
  for name in ("value_loss", "entropy", "grad_norm", "update_norm"):
    np.testing.assert_allclose(getattr(ours.metrics, name), getattr(theirs.metrics, name), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(ours.metrics.episodes, theirs.metrics.episodes)  # the same rollouts
  np.testing.assert_allclose(theirs.metrics.clip_fraction, 0.0)
  # The parameters moved: the equality is not that of two untrained networks.
  init = a2c.make_train(_tiny_config(learning_rate=0.0, optimizer="adam"))
  still = jax.jit(init)(key).params
  assert not np.allclose(still["params"]["actor_head"]["kernel"], ours.params["params"]["actor_head"]["kernel"])


def test_rmsprop_seeds_and_swept_learning_rates_in_one_program():
  config = _tiny_config()
  keys = jax.random.split(jax.random.key(1), 2)
  hparams = a2c.default_hparams(config)._replace(learning_rate=np.array([1e-3, 0.0], np.float32))
  hparams = jax.tree.map(lambda x: np.broadcast_to(x, (2,)), hparams)
  out = jax.jit(jax.vmap(a2c.make_train(config)))(keys, hparams)
  assert np.all(np.isfinite(out.metrics.total_loss))
  np.testing.assert_allclose(out.metrics.learning_rate[:, 0], [1e-3, 0.0])
  assert np.all(out.metrics.update_norm[1] == 0.0) and np.all(out.metrics.update_norm[0] > 0.0)
  kernels = out.params["params"]["actor_0"]["kernel"]
  assert not np.allclose(kernels[0], kernels[1])  # each seed its own initialisation


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "sgd", "unknown optimizer 'sgd'; choose one of: rmsprop, adam"),
    ("env_name", "Pong", "unknown env_name 'Pong'"),
    ("gae_lambda", 1.5, "gae_lambda must be in \\[0, 1\\], got 1.5"),
    ("total_timesteps", 10, "less than one rollout"),
])
def test_bad_config_is_a_config_error(field, value, message):
  with pytest.raises(ConfigError, match=message):
    a2c.make_train(_tiny_config(**{field: value}))


@pytest.mark.slow
def test_smoke_experiment_learns_cartpole(tmp_path):
  config = a2c_experiment.get_config("smoke")
  results = a2c_experiment.run(config, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  assert written["final_return_per_seed"] == results["final_return_per_seed"]
  assert set(a2c_experiment.metric_names(config)) <= set(results)  # what a sweep may plot
  assert len(results["final_return_per_seed"]) == config.num_seeds
  assert os.path.getsize(tmp_path / "returns.png") > 0
  # A random policy returns about 22. The initial return averages the first 10% of updates, which already learn
  # (31 and 46 for the two seeds under the test flags, and it moves with the compiled bits): learning shows as a
  # final return far above both (about 450 and 490).
  for initial, final in zip(results["initial_return_per_seed"], results["final_return_per_seed"]):
    assert final > 60 and final > initial + 15, results
