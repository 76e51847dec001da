"""The pieces PPO, A2C and DQN share: losses and targets against loops and hand values, networks, rollouts."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.rl import losses, networks, rollout

# ----------------------------------------------------------------------------- GAE


def _gae_forward_loop(rewards, values, next_values, terminated, done, gamma, lam):
  """The forward view: A_t = sum_l (gamma lambda)^l delta_{t+l} up to the end of t's episode or rollout."""
  num_steps, num_envs = rewards.shape
  advantages = np.zeros((num_steps, num_envs))
  for n in range(num_envs):
    for t in range(num_steps):
      total = 0.0
      for l in range(t, num_steps):
        bootstrap = 0.0 if terminated[l, n] else gamma * next_values[l, n]
        delta = rewards[l, n] + bootstrap - values[l, n]
        total += (gamma * lam) ** (l - t) * delta
        if done[l, n]:
          break
      advantages[t, n] = total
  return advantages


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_gae_matches_forward_loop(lam):
  rng = np.random.default_rng(0)
  num_steps, num_envs, gamma = 9, 4, 0.99
  rewards = rng.normal(size=(num_steps, num_envs))
  values = rng.normal(size=(num_steps, num_envs))
  next_values = rng.normal(size=(num_steps, num_envs))
  terminated = rng.random((num_steps, num_envs)) < 0.2
  truncated = (rng.random((num_steps, num_envs)) < 0.2) & ~terminated
  done = terminated | truncated
  assert terminated.any() and truncated.any()
  advantages, targets = losses.gae(*(jnp.asarray(x, jnp.float32) for x in (rewards, values, next_values)),
                                jnp.asarray(terminated), jnp.asarray(done), gamma, lam)
  expected = _gae_forward_loop(rewards, values, next_values, terminated, done, gamma, lam)
  np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(targets, expected + values, rtol=1e-5, atol=1e-5)


def test_gae_termination_vs_truncation_by_hand():
  # One environment, three steps; the episode ends at step 1, a new one runs at step 2.
  # With lambda = 1 the advantage is the discounted return to the episode's end minus V(s_t),
  # plus gamma^k V(s') only when the end was a time limit (truncation), not a terminal state.
  gamma = 0.9
  rewards = jnp.array([[1.0], [2.0], [4.0]])
  values = jnp.array([[0.5], [0.25], [3.0]])
  next_values = jnp.array([[0.25], [10.0], [7.0]])  # V(s'_1) = 10 is the state the episode ended in
  done = jnp.array([[False], [True], [False]])
  for terminated_at_1, tail in ((True, 0.0), (False, 10.0)):
    terminated = jnp.array([[False], [terminated_at_1], [False]])
    advantages, _ = losses.gae(rewards, values, next_values, terminated, done, gamma, 1.0)
    expected = [1.0 + gamma * 2.0 + gamma ** 2 * tail - 0.5,
                2.0 + gamma * tail - 0.25,
                4.0 + gamma * 7.0 - 3.0]  # the rollout's cut bootstraps through V(s'_2)
    np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-6)


# ----------------------------------------------------------------------------- losses


def test_clipped_surrogate_by_hand():
  # ratio 1.5 or 0.5 against advantage +1 or -1, eps = 0.2:
  # min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; min(-1.5, -1.2) = -1.5; min(-0.5, -0.8) = -0.8.
  old = jnp.log(jnp.array([0.2, 0.4, 0.2, 0.4]))
  new = old + jnp.log(jnp.array([1.5, 0.5, 1.5, 0.5]))
  advantages = jnp.array([1.0, 1.0, -1.0, -1.0])
  loss = losses.clipped_surrogate_loss(new, old, advantages, 0.2)
  np.testing.assert_allclose(loss, -(1.2 + 0.5 - 1.5 - 0.8) / 4, rtol=1e-6)
  # Inside the clip range the loss is the plain importance-weighted surrogate.
  loss = losses.clipped_surrogate_loss(old + jnp.log(1.1), old, advantages, 0.2)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)


def test_value_loss_by_hand():
  values, old_values, targets = jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0]), jnp.array([3.0, -1.0])
  np.testing.assert_allclose(losses.value_loss(values, old_values, targets, None), 0.5 * (4.0 + 1.0) / 2, rtol=1e-6)
  # Clipped: V is pulled back to old +- 0.5 = 0.5 for sample 0: max((1-3)^2, (0.5-3)^2) = 6.25.
  np.testing.assert_allclose(losses.value_loss(values, old_values, targets, 0.5), 0.5 * (6.25 + 1.0) / 2, rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 64), (64, 64), (64, 2), (64, 1), (3, 5)])
def test_orthogonal_init_is_flax_orthogonal_without_a_lapack_call(shape):
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  key = jax.random.key(3)
  np.testing.assert_allclose(networks.orthogonal(2.0)(key, shape), nn.initializers.orthogonal(2.0)(key, shape),
                             atol=2e-5)
  q = np.asarray(networks.orthogonal(1.0)(key, shape), np.float64)
  small = min(shape)
  np.testing.assert_allclose(q.T @ q if shape[0] >= shape[1] else q @ q.T, np.eye(small), atol=1e-5)
  # Vmapped over seeds (as the training program is) it stays matrix products, where Flax's is a batched
  # LAPACK QR (the call that can hang a two-core machine).
  keys = jax.random.split(key, 4)
  lowered = lambda init: jax.jit(jax.vmap(lambda k: init(k, shape))).lower(keys).as_text()
  assert "lapack" in lowered(nn.initializers.orthogonal(1.0))
  assert "lapack" not in lowered(networks.orthogonal(1.0))


def test_log_prob_and_entropy_closed_form():
  logits = np.array([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0], [5.0, -5.0, 1.0]], np.float32)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  actions = np.array([2, 1, 0])
  np.testing.assert_allclose(losses.log_prob(jnp.asarray(logits), jnp.asarray(actions)),
                             np.log(probs[np.arange(3), actions]), rtol=1e-5)
  expected_entropy = -(probs * np.log(probs)).sum(-1)
  np.testing.assert_allclose(losses.entropy(jnp.asarray(logits)), expected_entropy, rtol=1e-5)
  np.testing.assert_allclose(expected_entropy[1], np.log(3.0), rtol=1e-6)  # uniform: log A


def test_orthogonal_conv_kernel_is_orthogonal_as_a_matrix():
  kernel = np.asarray(networks.orthogonal(1.0)(jax.random.key(0), (3, 3, 4, 16)), np.float64)
  q = kernel.reshape(36, 16)
  np.testing.assert_allclose(q.T @ q, np.eye(16), atol=1e-5)


# ----------------------------------------------------------------------------- Q-learning


def test_q_learning_targets_by_hand():
  reward = jnp.array([1.0, 0.5])
  terminated = jnp.array([False, True])
  next_q_target = jnp.array([[2.0, 5.0, 3.0], [9.0, 1.0, 1.0]])
  next_q_online = jnp.array([[0.0, 0.0, 4.0], [0.0, 7.0, 0.0]])  # prefers action 2, then action 1
  # DQN: max of the target network; the terminal row pays its reward only.
  np.testing.assert_allclose(losses.q_learning_target(reward, terminated, next_q_target, 0.9), [1.0 + 0.9 * 5.0, 0.5])
  # Double DQN: the online network's argmax (2), evaluated by the target network (3.0), below the max (5.0).
  np.testing.assert_allclose(losses.q_learning_target(reward, terminated, next_q_target, 0.9, next_q_online),
                             [1.0 + 0.9 * 3.0, 0.5])


def test_td_loss_huber_and_mse():
  q = jnp.array([0.0, 0.5, 3.0, -2.0])
  targets = jnp.array([0.2, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(losses.td_loss(q, targets, "huber"), np.mean(optax.huber_loss(q, targets, delta=1.0)),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.td_loss(q, targets, "mse"), 0.5 * np.mean(np.square(q - targets)), rtol=1e-6)
  # The targets are constants: the gradient flows only into Q(s, a).
  grad = jax.grad(lambda t: losses.td_loss(q, t, "mse"))(targets)
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match="huber, mse"):
    losses.td_loss(q, targets, "l1")


@pytest.mark.parametrize("torso,obs_shape", [("mlp", (4,)), ("conv", (10, 10, 4))])
def test_dueling_head_mean_advantage_is_zero(torso, obs_shape):
  network = networks.QNetwork(num_actions=3, hidden_size=8, torso=torso, dueling=True)
  obs = jax.random.normal(jax.random.key(0), (5,) + obs_shape)
  params = network.init(jax.random.key(1), obs)
  q = network.apply(params, obs)
  assert q.shape == (5, 3)
  # Q = V + A - mean A, so the mean over actions of Q is V(s), the value stream.
  _, state = network.apply(params, obs, capture_intermediates=True)
  value = state["intermediates"]["value_head"]["__call__"][0][:, 0]
  np.testing.assert_allclose(q.mean(-1), value, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- rollouts


def _random_policy(obs, key):
  return jax.random.randint(key, obs.shape[:1], 0, 2), None


def test_collect_matches_a_python_loop_of_env_steps():
  env = rollout.VecEnv.make("CartPole-v1", num_envs=3)
  state = env.reset(jax.random.key(0))
  keys = jax.random.split(jax.random.key(1), 60)
  final_state, traj = jax.jit(lambda s, k: rollout.collect(env, _random_policy, s, k))(state, keys)
  assert traj.obs.shape == (60, 3, 4) and traj.reward.shape == (60, 3)

  # The same steps one at a time, with the statistics kept by hand.
  inner, obs = state.inner, state.obs
  running = np.zeros(3)
  step = jax.jit(jax.vmap(env.env.step, in_axes=(0, 0, 0, None)))
  for t in range(60):
    k_action, k_env = jax.random.split(keys[t])
    action = jax.random.randint(k_action, (3,), 0, 2)
    np.testing.assert_allclose(traj.obs[t], obs, rtol=1e-5, atol=1e-6)  # one program vs step by step
    np.testing.assert_array_equal(traj.action[t], action)
    obs, inner, reward, terminated, truncated, info = step(jax.random.split(k_env, 3), inner, action, env.params)
    running += np.asarray(reward)
    np.testing.assert_allclose(traj.next_obs[t], info["final_observation"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(traj.terminated[t], terminated)
    np.testing.assert_array_equal(traj.done[t], terminated | truncated)
    np.testing.assert_allclose(traj.episode_return[t], running)
    running[np.asarray(terminated | truncated)] = 0.0
  np.testing.assert_allclose(final_state.obs, obs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(final_state.stats.episode_return, running)
  assert traj.done.sum() > 0  # random CartPole episodes last about 22 steps

  metrics = rollout.episode_metrics(traj)
  done = np.asarray(traj.done)
  assert int(metrics.episodes) == done.sum()
  np.testing.assert_allclose(metrics.episode_return, np.asarray(traj.episode_return)[done].mean(), rtol=1e-6)
  # A CartPole episode pays 1 per step: its return is its length.
  np.testing.assert_allclose(metrics.episode_return, metrics.episode_length, rtol=1e-6)


def test_greedy_returns_count_the_first_episode_only():
  env = rollout.VecEnv.make("CartPole-v1", num_envs=4)
  always_left = lambda obs: jnp.zeros(obs.shape[:1], jnp.int32)
  episodes = jax.jit(lambda k: rollout.greedy_returns(env, always_left, k, 0.9))(jax.random.key(0))
  returns = episodes.episode_return
  # Pushing one way only topples the pole in about 10 steps; the episodes after the first do not count.
  assert np.all((np.asarray(returns) >= 5) & (np.asarray(returns) <= 15)), returns
  # The same count by hand for the first environment: its reset key, then one key per step.
  k_reset, k_steps = jax.random.split(jax.random.key(0))
  gx_env, params = gymnax.make("CartPole-v1")
  _, state = gx_env.reset(jax.random.split(k_reset, 4)[0], params)
  total = discounted = 0.0
  for t, key in enumerate(jax.random.split(k_steps, env.max_episode_steps)):
    _, state, reward, terminated, truncated, _ = gx_env.step(jax.random.split(key, 4)[0], state, 0, params)
    total += float(reward)
    discounted += 0.9 ** t * float(reward)
    if terminated or truncated:
      break
  assert float(returns[0]) == total
  np.testing.assert_allclose(episodes.discounted_return[0], discounted, rtol=1e-5)
  np.testing.assert_array_equal(episodes.initial_obs, env.reset(k_reset).obs)


def test_unknown_environment_is_a_config_error():
  from research.checks import ConfigError  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match="unknown env_name 'Pong-v0'; choose one of: CartPole-v1"):
    rollout.VecEnv.make("Pong-v0", 2)


def test_tabular_environment_behind_gymnax_steps_resets_and_truncates():
  env = rollout.VecEnv.make("cliff_walking", 2)
  assert env.obs_shape == (48,) and env.num_actions == 4 and env.max_episode_steps == 200
  state = env.reset(jax.random.key(0))
  np.testing.assert_array_equal(state.obs.argmax(-1), [36, 36])
  # Right from the start is the cliff: -100 and back to the start; up is -1.
  state, step = env.step(jax.random.key(1), state, jnp.array([1, 0]))
  np.testing.assert_array_equal(step.reward, [-100.0, -1.0])
  np.testing.assert_array_equal(state.obs.argmax(-1), [36, 24])
  assert not step.done.any()
  # Walking into the wall for the whole time limit: truncated (not terminated) at step 200, then reset.
  run = jax.jit(lambda s, k: rollout.collect(env, lambda obs, key: (jnp.array([3, 3]), None), s, k))
  state, traj = run(env.reset(jax.random.key(2)), jax.random.split(jax.random.key(3), 201))
  assert traj.done[199].all() and not traj.terminated.any() and not traj.done[:199].any()
  np.testing.assert_array_equal(traj.episode_return[199], [-200.0, -200.0])
  np.testing.assert_array_equal(state.stats.episode_length, [1, 1])
