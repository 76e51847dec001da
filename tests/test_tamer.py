"""TAMER: the simulated trainer, credit assignment, config checks, and learning on CartPole and cliff walking."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tamer as tamer_experiment
from research.rl import rollout, tamer
from research.train import ConfigError


def test_cartpole_trainer_prefers_a_controller_that_balances_the_pole():
  # The hidden Q_h is the preference of the linear controller push-right-iff k.s > 0; it balances the pole for the
  # whole episode from gymnasium's start states, so its approval is worth learning.
  env = gymnasium.make("CartPole-v1")
  k = np.asarray(tamer.CARTPOLE_GAINS)
  for episode in range(5):
    obs, _ = env.reset(seed=episode)
    for t in range(500):
      obs, _, terminated, truncated, _ = env.step(int(k @ obs > 0))
      if terminated or truncated:
        break
    assert t == 499 and truncated and not terminated
  w_h = tamer.hidden_q("CartPole-v1", rollout.VecEnv.make("CartPole-v1", 1))
  states = jnp.array([[0.0, 0.0, 0.1, 0.0], [0.0, 0.0, -0.1, 0.0]])
  np.testing.assert_array_equal(tamer.approves(w_h, states, jnp.array([1, 1])), [True, False])


def test_tabular_trainer_approves_the_optimal_actions_of_cliff_walking():
  env = rollout.VecEnv.make("cliff_walking", 1)
  w_h = tamer.hidden_q("cliff_walking", env)  # Q* (48, 4)
  start = jax.nn.one_hot(jnp.array([36, 36, 36, 36]), 48)
  # At the start only "up" is optimal; "right" falls off the cliff, "down" and "left" hit the wall.
  np.testing.assert_array_equal(tamer.approves(w_h, start, jnp.arange(4)), [True, False, False, False])
  signals = tamer.trainer_signal(w_h, jnp.tile(start[:1], (20_000, 1)), jnp.zeros(20_000, jnp.int32), 0.2,
                                 jax.random.key(0))
  assert set(np.unique(signals)) == {-1.0, 1.0}
  np.testing.assert_allclose(np.mean(signals == -1.0), 0.2, atol=0.01)  # the error rate


def test_credit_is_uniform_over_the_delay_window():
  np.testing.assert_allclose(tamer.credit(4, 1, 3), [0.0, 1 / 3, 1 / 3, 1 / 3])
  np.testing.assert_allclose(tamer.credit(2, 1, 1), [0.0, 1.0])


@pytest.mark.parametrize("fields,message", [
    ({"delay_min": 3, "delay_max": 1}, "0 <= delay_min <= delay_max"),
    ({"error_rate": 1.5}, "error_rate must be in \\[0, 1\\], got 1.5"),
    ({"feedback_prob": -0.5}, "feedback_prob must be in \\[0, 1\\]"),
    ({"env_name": "Acrobot-v1"}, "unknown env_name 'Acrobot-v1'; choose one of: CartPole-v1, random_walk"),
])
def test_bad_config_is_a_config_error(fields, message):
  config = tamer_experiment.get_config("smoke")
  config.update(fields)
  with pytest.raises(ConfigError, match=message):
    tamer.make_train(config)


@pytest.mark.slow
@pytest.mark.parametrize("preset,solved", [("smoke", 300.0), ("tabular", -13.0)])  # random: 22, -200
def test_tamer_learns_from_the_simulated_trainer_alone(preset, solved):
  config = tamer_experiment.get_config(preset)
  config.update(num_seeds=2, num_evaluations=2, eval_episodes=2, total_timesteps=2_000)
  train = tamer.make_train(config)
  hparams = jax.tree.map(lambda x: jnp.broadcast_to(x, (2,)), tamer.default_hparams(config))
  hparams = hparams._replace(feedback_prob=jnp.array([1.0, 0.0]))  # the second trainer never speaks
  out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 2), hparams)
  greedy = np.asarray(out.evaluation.episode_return[:, -1]).mean(-1)
  assert greedy[0] >= solved, greedy
  assert greedy[1] < solved - 10, greedy  # without feedback nothing is learnt
  np.testing.assert_array_equal(out.metrics.signals[1], 0)
  assert out.metrics.signals[0].mean() > 0.5  # a signal at nearly every step (none about a previous episode)
  assert out.metrics.approval[0, -200:].mean() > 0.7  # mostly the trainer's choice (CartPole: the controller's)


@pytest.mark.slow
def test_table_smoke_writes_its_report(tmp_path):
  from experiments.tables import tamer as table  # pylint: disable=import-outside-toplevel
  config = table.get_config("smoke")
  out = table.run(config, str(tmp_path))
  for env_name in ("CartPole-v1", "cliff_walking"):
    curves = out[env_name]["greedy_return_mean"]
    assert "DQN on the reward" in curves and len(curves) >= len(config.trainers) + 1
    assert all(len(c) == config.num_evaluations for c in curves.values())
  assert "delay 1..3" in " ".join(out["cliff_walking"]["greedy_return_mean"])
  text = (tmp_path / "tamer.md").read_text()
  assert "python" in text and "| DQN on the reward |" in text
  assert (tmp_path / "tamer.png").stat().st_size > 1000


def test_the_experiment_writes_its_files_through_the_rl_runner(tmp_path):
  """`python -m experiments.tamer`'s run (TAMER has no chunks: research.rl.experiment's one-program path)."""
  config = tamer_experiment.get_config("smoke")
  config.update(num_seeds=2, num_evaluations=2, eval_episodes=2, total_timesteps=2_000)
  results = tamer_experiment.run(config, str(tmp_path))
  assert len(results["final_return_per_seed"]) == 2 and results["num_updates"] == tamer.num_updates(config)
  assert all(np.isfinite(r) for r in results["final_return_per_seed"])
  assert (tmp_path / "returns.png").stat().st_size > 1000 and (tmp_path / "params").is_dir()
