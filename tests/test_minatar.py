"""MinAtar through gymnax: Breakout's dynamics against the reference `minatar` package; the conv torso's networks."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.rl import networks, rollout


def test_breakout_matches_the_minatar_package_on_random_actions():
  minatar = pytest.importorskip("minatar")
  env, params = gymnax.make("Breakout-MinAtar")
  step = jax.jit(env.step_env)
  rng = np.random.default_rng(0)
  steps = 0
  for episode in range(6):
    _, state = env.reset_env(jax.random.key(episode), params)
    reference = minatar.Environment("breakout", sticky_action_prob=0.0)
    # The ball's start (one of two corners) is the game's only randomness: copied from gymnax's reset.
    reference.env.ball_x, reference.env.ball_dir = int(state.ball_x), int(state.ball_dir)
    reference.env.last_x = reference.env.ball_x
    np.testing.assert_array_equal(env.get_obs(state), reference.state())
    for t in range(300):
      action = int(rng.integers(3))  # gymnax's minimal set: no-op, left, right
      obs, state, reward, terminated, _ = step(jax.random.key(t), state, action, params)
      ref_reward, ref_terminal = reference.act(reference.minimal_action_set()[action])
      steps += 1
      assert float(reward) == ref_reward, (episode, t)
      assert bool(terminated) == ref_terminal, (episode, t)
      np.testing.assert_array_equal(np.asarray(obs, bool), reference.state(), err_msg=f"episode {episode} step {t}")
      if ref_terminal:
        break
  assert steps > 50


@pytest.mark.parametrize("name", rollout.MINATAR)
def test_minatar_games_build_with_the_conv_torso(name):
  env = rollout.VecEnv.make(name, 2)
  assert env.obs_shape[:2] == (10, 10)
  obs = env.reset(jax.random.key(0)).obs  # (2, 10, 10, channels)
  q_net = networks.QNetwork(num_actions=env.num_actions, hidden_size=32, torso="conv")
  actor_critic = networks.ActorCritic(num_actions=env.num_actions, hidden_size=32, torso="conv")
  q = q_net.apply(q_net.init(jax.random.key(0), obs), obs)
  logits, value = actor_critic.apply(actor_critic.init(jax.random.key(0), obs), obs)
  assert q.shape == logits.shape == (2, env.num_actions) and value.shape == (2,)
  assert jnp.all(jnp.isfinite(q))


@pytest.mark.slow
def test_table_smoke_trains_every_algorithm_on_breakout(tmp_path):
  from experiments.tables import minatar as table  # pylint: disable=import-outside-toplevel
  config = table.get_config("smoke")
  out = table.run(config, str(tmp_path))
  finals = out["final_return_per_seed"]
  assert set(finals) == set(table.ALGORITHMS)
  for algorithm in table.ALGORITHMS:
    assert len(finals[algorithm]["Breakout-MinAtar"]) == config.num_seeds
  assert "| PPO |" in (tmp_path / "minatar.md").read_text()


def test_table_rejects_an_unknown_game():
  from experiments.tables import minatar as table  # pylint: disable=import-outside-toplevel
  from research.train import ConfigError  # pylint: disable=import-outside-toplevel
  config = table.get_config("smoke")
  config.games = "Pong-MinAtar"
  with pytest.raises(ConfigError, match="unknown game 'Pong-MinAtar'"):
    table.run(config, "/nonexistent")
