"""Tabular environments: exact matrices against gymnasium's toy-text tables, sampled steps
against the matrices, and the random walk's known values."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.rl import envs
from research.rl import tabular

FROZEN_LAKES = [("4x4", True), ("4x4", False), ("8x8", True), ("8x8", False)]


def _gym_tables(env) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(transitions (S, A, S), expected rewards (S, A), terminated-on-entry (S,)) from `P`."""
  table = env.unwrapped.P
  num_states, num_actions = len(table), len(table[0])
  transitions = np.zeros((num_states, num_actions, num_states))
  rewards = np.zeros((num_states, num_actions))
  terminal = np.zeros(num_states, bool)
  for s in range(num_states):
    for a in range(num_actions):
      for prob, next_state, reward, terminated in table[s][a]:
        transitions[s, a, next_state] += prob
        rewards[s, a] += prob * reward
        terminal[next_state] |= terminated
  return transitions, rewards, terminal


@pytest.mark.parametrize("map_name, is_slippery", FROZEN_LAKES)
def test_frozen_lake_matches_gymnasium(map_name, is_slippery):
  gym_env = gym.make("FrozenLake-v1", map_name=map_name, is_slippery=is_slippery)
  transitions, rewards, terminal = _gym_tables(gym_env)
  mdp = envs.frozen_lake(map_name, is_slippery).mdp
  np.testing.assert_allclose(mdp.transitions, transitions, atol=1e-6)
  np.testing.assert_allclose(mdp.rewards, rewards, atol=1e-6)
  # Gymnasium makes G and H absorbing with reward 0, and flags entering them as terminated.
  np.testing.assert_array_equal(mdp.terminal, terminal)
  gym_env.close()


def test_cliff_walking_matches_gymnasium():
  gym_env = gym.make("CliffWalking-v1")
  transitions, rewards, terminal = _gym_tables(gym_env)
  mdp = envs.cliff_walking().mdp
  np.testing.assert_array_equal(mdp.terminal, terminal)
  # Gymnasium also tabulates moves out of the goal, which an episode never makes; here the
  # goal is absorbing. Every other row, cliff cells included, must agree.
  live = ~terminal
  np.testing.assert_allclose(mdp.transitions[live], transitions[live], atol=1e-6)
  np.testing.assert_allclose(mdp.rewards[live], rewards[live], atol=1e-6)
  assert int(gym_env.unwrapped.start_state_index) == envs.CLIFF_START
  gym_env.close()


def _all_pairs(env: tabular.Env, keys: jax.Array):
  """Steps every (state, action) pair once per key: arrays of shape (K, S, A)."""
  states = jnp.arange(env.num_states, dtype=jnp.int32)
  actions = jnp.arange(env.num_actions, dtype=jnp.int32)
  over_actions = jax.vmap(env.step, in_axes=(None, None, 0))
  over_states = jax.vmap(over_actions, in_axes=(None, 0, None))
  return jax.jit(jax.vmap(over_states, in_axes=(0, None, None)))(keys, states, actions)


@pytest.mark.parametrize("name", ["random_walk", "cliff_walking", "frozen_lake_4x4_not_slippery",
                                  "frozen_lake_8x8_not_slippery"])
def test_deterministic_step_follows_its_mdp(name):
  env = envs.make(name)
  next_states, rewards, dones = _all_pairs(env, jax.random.split(jax.random.key(0), 1))
  mdp = env.mdp
  np.testing.assert_array_equal(next_states[0], np.argmax(mdp.transitions, axis=-1))
  np.testing.assert_allclose(rewards[0], mdp.rewards)
  np.testing.assert_array_equal(dones[0], np.asarray(mdp.terminal)[next_states[0]])
  assert np.all(np.max(mdp.transitions, axis=-1) == 1.0)


@pytest.mark.parametrize("map_name", ["4x4", "8x8"])
def test_slippery_step_frequencies_match_transitions(map_name):
  env = envs.frozen_lake(map_name, is_slippery=True)
  num_samples = 2000
  next_states, rewards, _ = _all_pairs(env, jax.random.split(jax.random.key(1), num_samples))
  next_states = np.asarray(next_states)  # (K, S, A)
  counts = np.zeros(env.mdp.transitions.shape)  # (S, A, S)
  s, a = np.meshgrid(np.arange(env.num_states), np.arange(env.num_actions), indexing="ij")
  for sample in next_states:
    np.add.at(counts, (s, a, sample), 1.0 / num_samples)
  # Three outcomes of probability 1/3: the standard error of each frequency is ~0.011.
  np.testing.assert_allclose(counts, env.mdp.transitions, atol=0.05)
  np.testing.assert_allclose(np.mean(rewards, axis=0), env.mdp.rewards, atol=0.05)
  assert np.all(counts[env.mdp.transitions == 0] == 0)


def test_reset_is_the_start_state():
  key = jax.random.key(0)
  assert int(envs.random_walk().reset(key)) == 3  # C, the middle of A..E
  assert int(envs.cliff_walking().reset(key)) == envs.CLIFF_START
  assert int(envs.frozen_lake("8x8").reset(key)) == 0


def test_random_walk_true_values_from_dp():
  env = envs.random_walk()
  uniform = tabular.uniform_policy(env.num_states, env.num_actions)
  values = tabular.policy_evaluation(env.mdp, uniform)
  np.testing.assert_allclose(values, np.arange(7) / 6 * np.array([0, 1, 1, 1, 1, 1, 0]), atol=1e-6)
  iterative = tabular.iterative_policy_evaluation(env.mdp, uniform, tol=1e-6)
  np.testing.assert_allclose(iterative, values, atol=1e-5)


def test_unknown_names_list_the_choices():
  with pytest.raises(ValueError, match="frozen_lake_4x4"):
    envs.make("frozen_lake_5x5")
  with pytest.raises(ValueError, match="8x8"):
    envs.frozen_lake("5x5")
  with pytest.raises(ValueError, match="odd"):
    envs.random_walk(4)
