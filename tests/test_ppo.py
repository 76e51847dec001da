"""Policy gradient and PPO: losses against closed forms and loops, the jitted run, the experiment."""

import json
import os

import gymnasium
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ppo as ppo_experiment
from research.rl import ppo
from research.train import ConfigError, restore_pytree

# One worker runs this file: its module fixture is costly (see conftest.py).
pytestmark = pytest.mark.xdist_group("ppo_smoke_run")


def _tiny_config(algorithm="ppo"):
  """Two updates of a small network: compiles like the real thing, runs in milliseconds."""
  config = ppo_experiment.get_config("smoke")
  config.algorithm = algorithm
  config.num_envs = 2
  config.num_steps = 16
  config.total_timesteps = 64
  config.update_epochs = 2
  config.num_minibatches = 2
  config.hidden_size = 16
  return config


# ----------------------------------------------------------------------------- config


def test_unknown_env_raises_config_error_listing_names(tmp_path):
  config = ppo_experiment.get_config("smoke")
  config.env_name = "Pong-v0"
  with pytest.raises(ConfigError, match="CartPole-v1, Acrobot-v1, MountainCar-v0"):
    ppo.make_train(config)
  with pytest.raises(ConfigError, match="env_name"):
    ppo_experiment.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")  # nothing compiled or written


def test_bad_minibatch_split_raises_config_error():
  config = _tiny_config()
  config.num_minibatches = 5  # 2 envs x 16 steps = 32 samples
  with pytest.raises(ConfigError, match="divisible"):
    ppo.make_train(config)


@pytest.mark.parametrize("env_name", ["Acrobot-v1", "MountainCar-v0"])
def test_other_envs_build_and_trace(env_name):
  config = _tiny_config()
  config.env_name = env_name
  out = jax.eval_shape(ppo.make_train(config), jax.random.key(0))
  obs_dim = gymnax.make(env_name)[0].observation_space(gymnax.make(env_name)[1]).shape[0]
  assert out.params["params"]["actor_0"]["kernel"].shape == (obs_dim, config.hidden_size)
  assert out.params["params"]["actor_head"]["kernel"].shape == (config.hidden_size, 3)
  assert out.metrics.episode_return.shape == (ppo.num_updates(config),)


# ----------------------------------------------------------------------------- the jitted run


def test_train_deterministic_and_vmap_equals_single_runs():
  # A few updates only: over ~100 updates the last-bit differences of vmapped vs single matmuls
  # can flip a sampled action, after which the runs legitimately part ways.
  config = _tiny_config()
  train = ppo.make_train(config)
  keys = jax.random.split(jax.random.key(3), 2)
  single = jax.jit(train)
  first = single(keys[0])
  jax.tree.map(np.testing.assert_array_equal, first, single(keys[0]))
  assert np.all(np.isfinite(first.metrics.total_loss))
  np.testing.assert_array_equal(first.metrics.env_steps, [32, 64])
  batched = jax.jit(jax.vmap(train))(keys)
  for i, one in enumerate([first, single(keys[1])]):
    jax.tree.map(lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-5, atol=1e-6), batched, one)
  kernels = batched.params["params"]["actor_0"]["kernel"]
  assert not np.allclose(kernels[0], kernels[1])  # the seeds differ


def test_reinforce_runs_one_on_policy_step():
  config = _tiny_config("reinforce")
  out = jax.jit(ppo.make_train(config))(jax.random.key(0))
  assert np.all(np.isfinite(out.metrics.total_loss))
  # One gradient step per rollout, taken at the parameters that collected it: ratio exactly 1.
  np.testing.assert_allclose(out.metrics.approx_kl, 0.0, atol=1e-7)
  np.testing.assert_allclose(out.metrics.clip_fraction, 0.0)
  np.testing.assert_allclose(out.metrics.learning_rate, config.learning_rate * np.array([1.0, 0.5]), rtol=1e-6)


def test_final_return_weights_episodes():
  nan = np.nan
  metrics = ppo.UpdateMetrics(*[np.zeros((1, 10))] * len(ppo.UpdateMetrics._fields))
  metrics = metrics._replace(episodes=np.array([[1, 0, 0, 0, 0, 0, 0, 0, 1, 3]]),
                             episode_return=np.array([[5.0, nan, nan, nan, nan, nan, nan, nan, 10.0, 30.0]]))
  np.testing.assert_allclose(ppo.final_return(metrics, 0.2), [(10.0 + 3 * 30.0) / 4])
  np.testing.assert_allclose(ppo.initial_return(metrics, 0.1), [5.0])
  assert np.isnan(ppo.initial_return(metrics._replace(episodes=np.zeros((1, 10))), 0.1)[0])


# ----------------------------------------------------------------------------- CartPole


def test_cartpole_dynamics_match_gymnasium():
  env, params = gymnax.make("CartPole-v1")
  reference = gymnasium.make("CartPole-v1").unwrapped
  reference.reset(seed=0)
  rng = np.random.default_rng(0)
  # Non-terminal states, some close enough to the x / theta limits to cross them in one step.
  states = rng.uniform([-2.39, -2.0, -0.2, -2.0], [2.39, 2.0, 0.2, 2.0], size=(64, 4)).astype(np.float32)
  actions = rng.integers(0, 2, size=64)
  gx_state = env.reset(jax.random.key(0), params)[1].replace(
      x=jnp.asarray(states[:, 0]), x_dot=jnp.asarray(states[:, 1]), theta=jnp.asarray(states[:, 2]),
      theta_dot=jnp.asarray(states[:, 3]), time=jnp.zeros(64, jnp.int32))
  step = jax.jit(jax.vmap(env.step_env, in_axes=(None, 0, 0, None)))
  obs, _, reward, terminated, _ = step(jax.random.key(0), gx_state, jnp.asarray(actions), params)
  for i in range(64):
    reference.state = states[i].astype(np.float64)
    reference.steps_beyond_terminated = None  # a fresh episode: the terminating step still pays 1
    ref_obs, ref_reward, ref_terminated, _, _ = reference.step(int(actions[i]))
    np.testing.assert_allclose(obs[i], ref_obs, rtol=1e-5, atol=1e-6)
    assert float(reward[i]) == ref_reward
    assert bool(terminated[i]) == ref_terminated
  assert np.asarray(terminated).any() and not np.asarray(terminated).all()


def _random_policy_return(episodes: int = 200) -> float:
  env = gymnasium.make("CartPole-v1")
  rng = np.random.default_rng(0)
  total = 0.0
  for episode in range(episodes):
    env.reset(seed=episode)
    done = False
    while not done:
      _, reward, terminated, truncated, _ = env.step(int(rng.integers(2)))
      total += reward
      done = terminated or truncated
  return total / episodes


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ppo_smoke"))
  config = ppo_experiment.get_config("smoke")
  return workdir, config, ppo_experiment.run(config, workdir)


def test_smoke_experiment_writes_outputs(smoke_run):
  workdir, config, results = smoke_run
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  assert written["final_return_per_seed"] == results["final_return_per_seed"]
  assert len(written["final_return_per_seed"]) == config.num_seeds
  assert written["wall_time_s"] > 0 and written["config"]["env_name"] == "CartPole-v1"
  assert os.path.getsize(os.path.join(workdir, "returns.png")) > 0
  params = restore_pytree(os.path.join(workdir, "params"))
  kernel = params["params"]["actor_0"]["kernel"]
  assert kernel.shape == (config.num_seeds, 4, config.hidden_size)


def test_smoke_training_beats_random_policy(smoke_run):
  _, _, results = smoke_run
  random_return = _random_policy_return()
  assert 15.0 < random_return < 30.0  # about 22 for a uniformly random CartPole policy
  for initial, final in zip(results["initial_return_per_seed"], results["final_return_per_seed"]):
    assert initial < 2 * random_return  # the initial policy is close to uniform
    assert final > 3 * random_return, results


def test_hyperparameters_vmap_in_one_program_like_separate_configs():
  config = _tiny_config()
  keys = jnp.stack([jax.random.key_data(jax.random.key(5))] * 2)
  hparams = jax.tree.map(lambda x: jnp.broadcast_to(x, (2,)), ppo.default_hparams(config))
  hparams = hparams._replace(learning_rate=jnp.array([1e-3, 3e-2]), ent_coef=jnp.array([0.0, 0.1]))
  batched = jax.jit(jax.vmap(ppo.make_train(config)))(jax.random.wrap_key_data(keys), hparams)
  for i, (lr, ent) in enumerate([(1e-3, 0.0), (3e-2, 0.1)]):
    single_config = _tiny_config()
    single_config.learning_rate, single_config.ent_coef = lr, ent
    single = jax.jit(ppo.make_train(single_config))(jax.random.key(5))
    jax.tree.map(lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-5, atol=1e-6), batched, single)
  np.testing.assert_allclose(batched.metrics.learning_rate[:, 0], [1e-3, 3e-2], rtol=1e-6)
