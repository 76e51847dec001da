"""Tabular RL: DP against closed forms and a numpy value iteration on gymnasium's tables,
sample-based methods against Python loops and known values, and the two table scripts."""

import json

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import harness
from experiments.tables import cliff_walking, td_vs_mc
from research.rl import envs
from research.rl import tabular

FROZEN_LAKES = [("4x4", True), ("4x4", False), ("8x8", True), ("8x8", False)]
RANDOM_WALK_TRUE = np.array([0, 1, 2, 3, 4, 5, 0]) / 6


# --------------------------------------------------------------------------------------
# Finite MDPs and dynamic programming.
# --------------------------------------------------------------------------------------


def test_discounted_returns_match_python_loop():
  rewards = np.array([1.0, -2.0, 0.5, 3.0, 0.0, 1.0, 2.0], np.float32)
  dones = np.array([False, False, True, False, False, True, False])
  gamma = 0.9
  expected, running = np.zeros_like(rewards), 0.0
  for t in reversed(range(len(rewards))):
    running = rewards[t] + gamma * (0.0 if dones[t] else running)
    expected[t] = running
  np.testing.assert_allclose(tabular.discounted_returns(rewards, gamma, dones), expected, rtol=1e-6)
  no_dones = sum(gamma ** t * r for t, r in enumerate(rewards))
  np.testing.assert_allclose(tabular.discounted_returns(rewards, gamma)[0], no_dones, rtol=1e-6)


def test_policy_forms_and_markov_reward_process():
  mdp = envs.frozen_lake("4x4", is_slippery=True).mdp
  actions = jax.random.randint(jax.random.key(0), (16,), 0, 4)
  p_int, r_int = tabular.markov_reward_process(mdp, actions)
  p_prob, r_prob = tabular.markov_reward_process(mdp, jax.nn.one_hot(actions, 4))
  np.testing.assert_allclose(p_int, p_prob)
  np.testing.assert_allclose(r_int, r_prob)
  np.testing.assert_allclose(p_int.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(p_int, np.asarray(mdp.transitions)[np.arange(16), actions])


def test_exact_and_iterative_policy_evaluation_agree():
  mdp = envs.frozen_lake("4x4", is_slippery=True, discount=0.9).mdp
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (16, 4)))
  exact = tabular.policy_evaluation(mdp, probs)
  np.testing.assert_allclose(tabular.iterative_policy_evaluation(mdp, probs, tol=1e-7), exact, atol=1e-5)
  # v = r_π + γ P_π v on the live states: the Bellman equation itself.
  p_pi, r_pi = tabular.markov_reward_process(mdp, probs)
  live = ~np.asarray(mdp.terminal)
  np.testing.assert_allclose((r_pi + 0.9 * p_pi @ exact)[live], exact[live], atol=1e-5)
  assert np.all(np.asarray(exact)[~live] == 0)


def _numpy_value_iteration(gym_env, gamma: float) -> np.ndarray:
  """Value iteration in float64 on gymnasium's P lists (its own `terminated` flags), to convergence."""
  table = gym_env.unwrapped.P
  num_states, num_actions = len(table), len(table[0])
  continuing = np.zeros((num_states, num_actions, num_states))  # P(s'|s, a), 0 where the move terminates
  rewards = np.zeros((num_states, num_actions))
  for s in range(num_states):
    for a in range(num_actions):
      for prob, next_state, reward, terminated in table[s][a]:
        continuing[s, a, next_state] += 0.0 if terminated else prob
        rewards[s, a] += prob * reward
  values = np.zeros(num_states)
  for _ in range(100_000):
    new = np.max(rewards + gamma * continuing @ values, axis=1)
    if np.max(np.abs(new - values)) < 1e-12:
      break
    values = new
  # Gymnasium never steps out of a terminal state; its value is 0 as here.
  terminal = np.array([all(done and n == s for _, n, _, done in table[s][0]) for s in range(num_states)])
  return np.where(terminal, 0.0, new)


@pytest.mark.parametrize("map_name, is_slippery", FROZEN_LAKES)
def test_value_iteration_equals_policy_iteration_on_frozen_lake(map_name, is_slippery):
  gamma = 0.99
  env = envs.frozen_lake(map_name, is_slippery, discount=gamma)
  vi_values, vi_policy = tabular.value_iteration(env.mdp, tol=1e-7)
  pi_values, pi_policy = tabular.policy_iteration(env.mdp)
  reference = _numpy_value_iteration(gym.make("FrozenLake-v1", map_name=map_name, is_slippery=is_slippery), gamma)
  # Stopping at a sweep change of tol leaves an error of at most tol γ / (1 - γ) = 1e-5.
  np.testing.assert_allclose(vi_values, reference, atol=5e-5)
  np.testing.assert_allclose(pi_values, reference, atol=5e-5)
  # Ties between equally good actions may be broken differently: compare the policies' values.
  np.testing.assert_allclose(tabular.policy_evaluation(env.mdp, vi_policy), reference, atol=5e-5)
  np.testing.assert_allclose(tabular.policy_evaluation(env.mdp, pi_policy), reference, atol=5e-5)
  if not is_slippery:  # the shortest path to G takes 6 (4x4) or 14 (8x8) steps; G pays 1
    shortest = {"4x4": 6, "8x8": 14}[map_name]
    np.testing.assert_allclose(vi_values[0], gamma ** (shortest - 1), rtol=1e-5)


def test_value_iteration_on_cliff_finds_the_13_step_path():
  env = envs.cliff_walking()
  values, policy = tabular.value_iteration(env.mdp)
  assert float(values[envs.CLIFF_START]) == -13.0
  path = tabular.rollout(env, policy, jax.random.key(0), 20)
  assert bool(path.terminated) and int(path.valid.sum()) == 13
  assert float(path.rewards.sum()) == -13.0


def test_dp_vmaps_over_mdps():
  mdps = [envs.frozen_lake("4x4", True, discount=g).mdp for g in (0.9, 0.99)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *mdps)
  values, _ = jax.vmap(tabular.value_iteration)(stacked)
  for one, mdp in zip(values, mdps):
    np.testing.assert_allclose(one, tabular.value_iteration(mdp)[0], atol=1e-6)


# --------------------------------------------------------------------------------------
# Sample-based methods: the compiled scans against plain Python loops on tiny input.
# --------------------------------------------------------------------------------------


def _draw(key, probs) -> int:
  """Inverse-CDF sampling at one uniform number, as the library draws actions."""
  cdf = np.cumsum(np.asarray(probs, np.float32))
  return int(np.searchsorted(cdf, np.float32(jax.random.uniform(key)) * cdf[-1], side="right"))


def _epsilon_greedy(q_row: np.ndarray, epsilon: float) -> np.ndarray:
  best = (q_row == q_row.max()).astype(np.float32)
  return epsilon / len(q_row) + (1 - epsilon) * best / best.sum()


def _deterministic_step(mdp, state: int, action: int) -> tuple[int, float, bool]:
  next_state = int(np.argmax(mdp.transitions[state, action]))
  return next_state, float(mdp.rewards[state, action]), bool(mdp.terminal[next_state])


def _python_td_control(algorithm: str, mdp, key, alpha: float, epsilon: float, config) -> tuple:
  """SARSA / Q-learning / expected SARSA as a plain loop on a deterministic MDP, same keys."""
  q = np.zeros(mdp.rewards.shape)
  returns, lengths = [], []
  for e in range(config.num_episodes):
    k_reset, k_first, k_steps = jax.random.split(jax.random.fold_in(key, e), 3)
    del k_reset  # the cliff always starts at S
    state, t, done, total = envs.CLIFF_START, 0, False, 0.0
    action = _draw(k_first, _epsilon_greedy(q[state], epsilon)) if algorithm == "sarsa" else 0
    while not done and t < config.max_steps:
      k_action, _ = jax.random.split(jax.random.fold_in(k_steps, t))
      if algorithm != "sarsa":
        action = _draw(k_action, _epsilon_greedy(q[state], epsilon))
      next_state, reward, done = _deterministic_step(mdp, state, action)
      if algorithm == "sarsa":
        next_action = _draw(k_action, _epsilon_greedy(q[next_state], epsilon))
        bootstrap = q[next_state, next_action]
      elif algorithm == "q_learning":
        bootstrap = q[next_state].max()
      else:
        bootstrap = _epsilon_greedy(q[next_state], epsilon) @ q[next_state]
      q[state, action] += alpha * (reward + (0.0 if done else bootstrap) - q[state, action])
      state, total, t = next_state, total + reward, t + 1
      if algorithm == "sarsa":
        action = next_action
    returns.append(total)
    lengths.append(t)
  return q, np.array(returns), np.array(lengths)


@pytest.mark.parametrize("algorithm", tabular.TD_CONTROL)
def test_td_control_vmapped_over_alpha_and_epsilon_equals_python_loop(algorithm):
  env = envs.cliff_walking()
  mdp = jax.device_get(env.mdp)
  config = tabular.TabularConfig(num_episodes=3, max_steps=25)
  key = jax.random.key(7)
  alphas, epsilons = np.array([0.5, 0.2], np.float32), np.array([0.3, 0.1], np.float32)
  train = tabular.make_td_control(env, config, algorithm)
  swept = jax.jit(jax.vmap(train, in_axes=(None, 0)))(key, tabular.HParams(alphas, epsilons, np.zeros(2)))
  for i, (alpha, epsilon) in enumerate(zip(alphas, epsilons)):
    q, returns, lengths = _python_td_control(algorithm, mdp, key, float(alpha), float(epsilon), config)
    np.testing.assert_allclose(swept.q[i], q, atol=1e-4)
    np.testing.assert_allclose(swept.episode_returns[i], returns)
    np.testing.assert_array_equal(swept.episode_lengths[i], lengths)


def _random_walk_episode(key, max_steps: int) -> list[tuple[int, float]]:
  """(state, reward) pairs of one uniform-policy episode, with the keys rollout and TD use."""
  mdp = jax.device_get(envs.random_walk().mdp)
  k_reset, k_steps = jax.random.split(key)
  del k_reset  # the walk always starts in C
  state, steps = 3, []
  for t in range(max_steps):
    k_action, _ = jax.random.split(jax.random.fold_in(k_steps, t))
    next_state, reward, done = _deterministic_step(mdp, state, _draw(k_action, [0.5, 0.5]))
    steps.append((state, reward))
    state = next_state
    if done:
      break
  return steps


def test_td_prediction_scan_equals_python_loop():
  env = envs.random_walk()
  config = tabular.TabularConfig(num_episodes=3, max_steps=30)
  key, alpha = jax.random.key(3), 0.1
  result = tabular.make_td_prediction(env, tabular.uniform_policy(7, 2), config)(key, tabular.HParams(alpha=alpha,
                                                                                                      init_value=0.5))
  values = np.where(np.asarray(env.mdp.terminal), 0.0, 0.5)
  history = [values.copy()]
  for e in range(config.num_episodes):
    episode = _random_walk_episode(jax.random.fold_in(key, e), config.max_steps)
    next_states = [s for s, _ in episode[1:]] + [None]
    for (state, reward), next_state in zip(episode, next_states):
      bootstrap = 0.0 if next_state is None else values[next_state]
      values[state] += alpha * (reward + bootstrap - values[state])
    history.append(values.copy())
  np.testing.assert_allclose(result.history, np.stack(history), atol=1e-6)


@pytest.mark.parametrize("first_visit, constant_alpha", [(True, False), (False, True)])
def test_mc_prediction_scan_equals_python_loop(first_visit, constant_alpha):
  env = envs.random_walk()
  config = tabular.TabularConfig(num_episodes=4, max_steps=40, first_visit=first_visit,
                                 constant_alpha=constant_alpha)
  key, alpha = jax.random.key(5), 0.1
  result = tabular.make_mc_prediction(env, tabular.uniform_policy(7, 2), config)(key, tabular.HParams(alpha=alpha))
  values, counts = np.zeros(7), np.zeros(7)
  for e in range(config.num_episodes):
    episode = _random_walk_episode(jax.random.fold_in(key, e), config.max_steps)
    if len(episode) == config.max_steps and episode[-1][1] == 0.0:
      continue  # cut off (a +1 ends the walk; a 0 as the last reward may be a cut)
    g, returns = 0.0, []
    for _, reward in reversed(episode):
      g = reward + g
      returns.append(g)
    seen = set()
    for (state, _), g in zip(episode, reversed(returns)):
      if first_visit and state in seen:
        continue
      seen.add(state)
      counts[state] += 1
      step = alpha if constant_alpha else 1.0 / counts[state]
      values[state] += step * (g - values[state])
  np.testing.assert_allclose(result.values, values, atol=1e-6)


# --------------------------------------------------------------------------------------
# Sample-based methods: convergence, vmap over hyperparameters.
# --------------------------------------------------------------------------------------


def test_mc_prediction_converges_on_random_walk():
  # TD(0) and constant-α MC are checked against a simulation in the td_vs_mc test below.
  env = envs.random_walk()
  config = tabular.TabularConfig(num_episodes=300, max_steps=200, first_visit=True)
  predict = tabular.make_mc_prediction(env, tabular.uniform_policy(7, 2), config)
  values = np.asarray(jax.jit(jax.vmap(predict))(jax.random.split(jax.random.key(0), 8)).values)
  rms = np.sqrt(np.mean((values - RANDOM_WALK_TRUE)[:, 1:-1] ** 2, axis=1))  # (seeds,)
  assert rms.mean() < 0.05, rms
  np.testing.assert_allclose(values.mean(0), RANDOM_WALK_TRUE, atol=0.04)


def test_mc_control_reaches_the_goal_on_frozen_lake():
  env = envs.frozen_lake("4x4", is_slippery=False)
  train = tabular.make_mc_control(env, tabular.TabularConfig(num_episodes=600, max_steps=50, first_visit=True))
  keys = jax.random.split(jax.random.key(0), 8)
  q = jax.jit(jax.vmap(train, in_axes=(0, None)))(keys, tabular.HParams(epsilon=0.1)).q
  start_values = jax.vmap(lambda q: tabular.policy_evaluation(env.mdp, tabular.greedy_policy(q))[0])(q)
  # The greedy policy takes a shortest path (6 steps, so 0.99^5) in most runs; some runs may
  # not have found G yet (all returns 0 until the first success).
  assert np.sum(np.isclose(start_values, 0.99 ** 5, rtol=1e-5)) >= 6, start_values


def test_unknown_algorithm_lists_the_choices():
  with pytest.raises(ValueError, match="expected_sarsa"):
    tabular.make_td_control(envs.cliff_walking(), tabular.TabularConfig(1, 1), "dqn")


# --------------------------------------------------------------------------------------
# The table scripts, end to end on their smoke presets.
# --------------------------------------------------------------------------------------


def _numpy_random_walk_rms(method: str, alpha: float, episodes: int, runs: int, seed: int) -> np.ndarray:
  """Sutton & Barto Figure 6.2 by a plain simulation: mean RMS error after 0..episodes."""
  rng = np.random.default_rng(seed)
  true = RANDOM_WALK_TRUE[1:-1]
  curves = np.zeros((runs, episodes + 1))
  for r in range(runs):
    values = np.array([0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0])
    curves[r, 0] = np.sqrt(np.mean((values[1:-1] - true) ** 2))
    for e in range(episodes):
      states = [3]
      while states[-1] not in (0, 6):
        states.append(states[-1] + (1 if rng.random() < 0.5 else -1))
      outcome = float(states[-1] == 6)
      for s, s_next in zip(states[:-1], states[1:]):
        if method == "td":
          target = outcome if s_next == 6 else values[s_next]
        else:
          target = outcome
        values[s] += alpha * (target - values[s])
      curves[r, e + 1] = np.sqrt(np.mean((values[1:-1] - true) ** 2))
  return curves.mean(0)


def test_td_vs_mc_smoke_matches_a_numpy_simulation(tmp_path):
  config = td_vs_mc.get_config("smoke")
  results = td_vs_mc.run(config, str(tmp_path))
  for name in ("td_vs_mc.md", "td_vs_mc.png", "results.json"):
    assert (tmp_path / name).exists()
  written = json.loads((tmp_path / "results.json").read_text())
  assert set(written["td"]) == {str(a) for a in config.td_alphas}
  assert set(written["mc"]) == {str(a) for a in config.mc_alphas}
  # The table shows the command that made it: this process's (tests/test_harness.py checks its form).
  assert f"Command: `{harness.command()}`" in (tmp_path / "td_vs_mc.md").read_text()
  # Statistical parity of the whole curves with an independent simulation (500 runs).
  for method, alphas in (("td", config.td_alphas), ("mc", config.mc_alphas)):
    for alpha, curve in zip(alphas, results["rms_curves"][method]):
      reference = _numpy_random_walk_rms(method, alpha, config.num_episodes, 500, seed=1)
      np.testing.assert_allclose(curve, reference, atol=0.02)
  # After 20 episodes TD(0) with α = 0.1 is within ~0.06 RMS of the true values.
  assert written["td"]["0.1"] < 0.1


def test_cliff_walking_smoke_q_learning_finds_the_optimal_path(tmp_path):
  config = cliff_walking.get_config("smoke")
  results = cliff_walking.run(config, str(tmp_path))
  for name in ("cliff_walking.md", "cliff_walking.png", "results.json"):
    assert (tmp_path / name).exists()
  written = json.loads((tmp_path / "results.json").read_text())
  for name in ("sarsa", "q_learning"):
    assert {"mean_return_last100", "greedy_path_length"} <= set(written[name])
    assert len(results[name]["mean_return_per_episode"]) == config.num_episodes
  assert harness.command() in (tmp_path / "cliff_walking.md").read_text()
  # Example 6.6's result: online, SARSA (on the safe path) does better than Q-learning, which
  # learns the edge and falls off while exploring; in the book about -25 vs -50 per episode.
  assert written["sarsa"]["mean_return_last100"] > written["q_learning"]["mean_return_last100"]
  late = slice(config.num_episodes // 2, None)
  online = {name: np.mean(results[name]["mean_return_per_episode"][late]) for name in ("sarsa", "q_learning")}
  assert online["sarsa"] > online["q_learning"] + 10, online
  # Every run's greedy policy takes the optimal path: up, eleven steps right along the edge, down.
  q_learning = written["q_learning"]
  assert q_learning["greedy_path_length_counts"] == {"13": config.num_runs}
  assert q_learning["greedy_path"] == [36] + list(range(24, 36)) + [47]
  env = envs.cliff_walking()
  assert float(tabular.value_iteration(env.mdp)[0][envs.CLIFF_START]) == -q_learning["greedy_path_length"]
