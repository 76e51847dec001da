"""TAMER (Knox & Stone 2009): an agent that learns a trainer's feedback and acts greedily on it.

TAMER ("Training an Agent Manually via Evaluative Reinforcement") never sees the
environment's reward. A trainer watches and now and then signals approval (+1) or
disapproval (-1); the agent fits H^(s, a), a model of that signal, and acts myopically,
a = argmax_a H^(s, a). Two things make it more than regression:

1. Delay and credit assignment. A person reacts a fraction of a second late, so a signal
   that arrives at step t is about one of the last few steps. TAMER credits each recent
   (s_{t-i}, a_{t-i}) with the probability c_i that the signal was about it, under an
   assumed delay distribution (here uniform over delay_min..delay_max steps), and fits
   H^ by credit-weighted least squares: sum_i c_i (h - H^(s_{t-i}, a_{t-i}))^2.
2. Sparse, noisy feedback. Signals come for a fraction of the steps, and some are wrong.

Past signals (with the window of steps they credit) are kept in a replay buffer, and every
step takes one Adam step on a minibatch of them, as Deep TAMER (Warnell et al. 2018) does.

The trainer here is simulated from a hidden action-value function Q_h: its signal about
(s, a) is +1 if a is a best action under Q_h and -1 otherwise, flipped with probability
`error_rate` (noise), given for a step with probability `feedback_prob` (sparsity) and
arriving delay_min..delay_max steps late. On CartPole Q_h(s, a) = (2a - 1) k.s, the
preference of a linear controller that balances the pole (k below); on a tabular
environment (research.rl.envs) Q_h is the optimal Q* from value iteration. Both are linear
in the observation (one-hot for tables): Q_h(s, .) = s @ W_h.

`make_train(config)` returns `train(key, hparams=None) -> TrainOutput` like the other
scans; `error_rate` and `feedback_prob` are traced, so one program trains a grid of
trainers.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.checks import ConfigError, check_choice, check_positive
from research.rl import config as rl_config
from research.rl import dqn, rollout, tabular
from research.rl.networks import QNetwork
from research.rl.rollout import EnvState, VecEnv, final_return, initial_return
from research.train import apply_gradients

# Gains of a linear CartPole controller, push right when k . (x, x_dot, theta, theta_dot) > 0: it balances the
# pole for the full 500 steps from gymnasium's start states (tests/test_tamer.py).
CARTPOLE_GAINS = (0.05, 0.2, 1.0, 0.3)
ENV_NAMES = ("CartPole-v1",) + rollout.TABULAR

# The config fields make_train reads; experiments may add their own (seed, num_seeds).
CONFIG_FIELDS = ("env_name", "num_envs", "total_timesteps", "error_rate", "feedback_prob", "delay_min", "delay_max",
                 "buffer_size", "batch_size", "learning_rate", "hidden_size", "num_evaluations", "eval_episodes")

__all__ = ["CARTPOLE_GAINS", "CONFIG_FIELDS", "ENV_NAMES", "Evaluation", "Feedback", "HParams", "TrainOutput",
           "UpdateMetrics", "check_config", "credit", "default_hparams", "final_return", "hidden_q",
           "initial_return", "make_train", "num_updates", "trainer_signal", "approves"]


# ----------------------------------------------------------------------------- the simulated trainer


def hidden_q(env_name: str, env: VecEnv) -> jax.Array:
  """W_h (obs_dim, num_actions) of the trainer's hidden action values Q_h(s, .) = s @ W_h."""
  if env_name == "CartPole-v1":
    k = jnp.asarray(CARTPOLE_GAINS, jnp.float32)
    return jnp.stack([-k, k], axis=-1)  # Q_h(s, a) = (2a - 1) k.s
  values, _ = tabular.value_iteration(env.env.tabular.mdp)
  return tabular.action_values(env.env.tabular.mdp, values)  # (S, A): Q*, rows picked by one-hot observations


def trainer_signal(w_h: jax.Array, obs: jax.Array, action: jax.Array, error_rate: jax.Array,
                   key: jax.Array) -> jax.Array:
  """The trainer's +1 (a is a best action under Q_h) or -1 (it is not) about (s, a), flipped w.p. error_rate.

  Approving only the best actions (rather than those above the mean) matters where one action is
  much worse than the rest: next to the cliff, walking into a wall beats the mean.

  Args:
    w_h: (obs_dim, A) the hidden Q_h.
    obs: (N, obs_dim) observations s.
    action: (N,) actions a.
    error_rate: probability of a flipped (wrong) signal.
    key: the flips.

  Returns:
    (N,) float32 signals.
  """
  flip = jax.random.uniform(key, action.shape) < error_rate
  return jnp.where(flip, -1.0, 1.0) * jnp.where(approves(w_h, obs, action), 1.0, -1.0)


def approves(w_h: jax.Array, obs: jax.Array, action: jax.Array) -> jax.Array:
  """Whether a is a best action under Q_h: (N,) bool."""
  q = obs.astype(jnp.float32) @ w_h  # (N, A)
  return jnp.take_along_axis(q, action[:, None], axis=-1)[:, 0] >= q.max(-1)


def credit(window: int, delay_min: int, delay_max: int) -> np.ndarray:
  """TAMER's credit c_i of the step i steps back (i = 0 the latest) under a uniform delay: (window,)."""
  c = np.zeros(window, np.float32)
  c[delay_min:delay_max + 1] = 1.0 / (delay_max - delay_min + 1)
  return c


# ----------------------------------------------------------------------------- carries


class HParams(NamedTuple):
  """The hyperparameters `train(key, hparams)` takes as arrays, so a sweep can vmap them."""
  learning_rate: jax.Array  # Adam step size of H^
  error_rate: jax.Array  # the trainer's probability of a wrong signal
  feedback_prob: jax.Array  # the probability that the trainer signals about a step


def default_hparams(config) -> HParams:
  """The config's values of the vmappable hyperparameters, as float32 scalars."""
  return rl_config.default_hparams(HParams, config)


class History(NamedTuple):
  """Each environment's last `window` steps, the latest first."""
  obs: jax.Array  # (num_envs, window, obs_dim)
  action: jax.Array  # (num_envs, window) int32
  valid: jax.Array  # (num_envs, window) bool: the step belongs to the current episode


class Feedback(NamedTuple):
  """One signal with the steps it credits (a replay buffer item)."""
  obs: jax.Array  # (window, obs_dim) the steps before the signal arrived, the latest first
  action: jax.Array  # (window,) int32
  weight: jax.Array  # (window,) credit c_i, 0 for steps of an earlier episode
  signal: jax.Array  # () h


class Learner(NamedTuple):
  params: Any
  opt_state: optax.OptState


class RunnerState(NamedTuple):
  """The carry of the step scan."""
  learner: Learner
  env: EnvState
  history: History
  buffer: dqn.ReplayBuffer  # of Feedback


class UpdateMetrics(NamedTuple):
  """Per-step outputs of `train`, each (num_updates,) (plus leading vmap axes)."""
  env_steps: jax.Array  # environment steps taken after this step, summed over envs
  episodes: jax.Array  # episodes completed at this step
  episode_return: jax.Array  # their mean return in the environment's reward; NaN when none completed
  episode_length: jax.Array  # their mean length; NaN when none completed
  signals: jax.Array  # trainer signals that arrived at this step
  approval: jax.Array  # share of this step's actions that are best under Q_h (the noiseless trainer approves)
  total_loss: jax.Array  # the credit-weighted squared error of H^ on the minibatch
  grad_norm: jax.Array
  param_norm: jax.Array
  update_norm: jax.Array


class Evaluation(NamedTuple):
  """Greedy episodes (argmax H^) after every num_updates / num_evaluations steps."""
  env_steps: jax.Array  # (num_evaluations,)
  episode_return: jax.Array  # (num_evaluations, eval_episodes) in the environment's reward


class TrainOutput(NamedTuple):
  params: Any  # final H^ parameters
  metrics: UpdateMetrics
  evaluation: Evaluation


# ----------------------------------------------------------------------------- training


def check_config(config) -> None:
  """Raises ConfigError on the first bad field, before anything is built or compiled."""
  check_choice("env_name", config.env_name, ENV_NAMES)
  rl_config.check_integers(config, ("num_envs", "total_timesteps", "buffer_size", "batch_size", "hidden_size",
                                    "num_evaluations", "eval_episodes"))
  if not 0 <= config.delay_min <= config.delay_max or int(config.delay_max) != config.delay_max:
    raise ConfigError(f"the delay must satisfy 0 <= delay_min <= delay_max (integer steps), got "
                      f"{config.delay_min}..{config.delay_max}")
  rl_config.check_unit_interval(config, ("error_rate", "feedback_prob"))
  if config.buffer_size < config.num_envs:
    raise ConfigError(f"buffer_size {config.buffer_size} is smaller than num_envs {config.num_envs}")
  if num_updates(config) < 1:
    raise ConfigError(f"total_timesteps {config.total_timesteps} is less than num_evaluations "
                      f"{config.num_evaluations} steps of num_envs = {config.num_envs} environments")
  check_positive("learning_rate", config.learning_rate, allow_zero=True)


def num_updates(config) -> int:
  """Steps of the run (each of every environment, one gradient step): whole evaluation blocks."""
  per_block = config.total_timesteps // (config.num_envs * config.num_evaluations)
  return per_block * config.num_evaluations


def make_train(config) -> Callable[..., TrainOutput]:
  """Builds the pure training function for `config` (validated here, before any tracing).

  Args:
    config: an object with the attributes in CONFIG_FIELDS; closed over, never mutated.

  Returns:
    `train(key, hparams=None) -> TrainOutput`, jit- and vmap-able over `key` and `hparams`.
  """
  check_config(config)
  num_envs = config.num_envs
  env = VecEnv.make(config.env_name, num_envs)
  eval_env = VecEnv.make(config.env_name, config.eval_episodes)
  w_h = hidden_q(config.env_name, env)
  # H^ is an MLP on CartPole and a table (linear in the one-hot observation) on a tabular environment.
  network = QNetwork(num_actions=env.num_actions, hidden_size=config.hidden_size,
                     torso="linear" if config.env_name in rollout.TABULAR else "mlp")
  window = config.delay_max + 1
  weights = jnp.asarray(credit(window, config.delay_min, config.delay_max))  # (window,)
  n_updates = num_updates(config)
  updates_per_evaluation = n_updates // config.num_evaluations
  obs_dim = env.obs_shape[0]

  def train(key: jax.Array, hparams: HParams | None = None) -> TrainOutput:
    """Runs the whole training; pure in `key` and `hparams` (default: the config's values)."""
    hp = rl_config.resolve(HParams, config, hparams)
    tx = optax.adam(hp.learning_rate)

    def loss_fn(params, batch: Feedback) -> jax.Array:
      h_hat = network.apply(params, batch.obs)  # (B, window, A)
      h_taken = jnp.take_along_axis(h_hat, batch.action[..., None], axis=-1)[..., 0]  # (B, window)
      squared = batch.weight * jnp.square(batch.signal[:, None] - h_taken)
      return squared.sum() / jnp.maximum(batch.weight.sum(), 1e-8)

    def step(runner: RunnerState, update_index: jax.Array) -> tuple[RunnerState, UpdateMetrics]:
      k_env, k_delay, k_give, k_flip, k_sample = jax.random.split(jax.random.fold_in(k_steps, update_index), 5)
      obs = runner.env.obs
      action = jnp.argmax(network.apply(runner.learner.params, obs), axis=-1).astype(jnp.int32)
      env_state, transition = env.step(k_env, runner.env, action)

      # The step joins each environment's history, the latest first.
      shift = lambda old, new: jnp.concatenate([new[:, None], old[:, :-1]], axis=1)
      history = History(obs=shift(runner.history.obs, obs), action=shift(runner.history.action, action),
                        valid=shift(runner.history.valid, jnp.ones((num_envs,), bool)))

      # The trainer's signal about the step `delay` steps back arrives now (if it belongs to this episode).
      delay = jax.random.randint(k_delay, (num_envs,), config.delay_min, config.delay_max + 1)
      pick = lambda x: jnp.take_along_axis(x, delay.reshape((num_envs, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
      signal = trainer_signal(w_h, pick(history.obs), pick(history.action), hp.error_rate, k_flip)
      arrives = (jax.random.uniform(k_give, (num_envs,)) < hp.feedback_prob) & pick(history.valid)
      items = Feedback(obs=history.obs, action=history.action, weight=weights * history.valid, signal=signal)
      buffer = dqn.buffer_add(runner.buffer, items, mask=arrives)

      # One Adam step on past signals (a zero step until the first one arrives: every weight is 0 then).
      batch = dqn.buffer_sample(buffer._replace(count=jnp.maximum(buffer.count, 1)), k_sample, config.batch_size)
      loss, grads = jax.value_and_grad(loss_fn)(runner.learner.params, batch)
      params, opt_state, health = apply_gradients(tx, runner.learner.params, runner.learner.opt_state, grads)

      # A new episode starts with an empty history.
      history = history._replace(valid=history.valid & ~transition.done[:, None])
      approved = approves(w_h, obs, action)
      episodes = rollout.episode_metrics(jax.tree.map(lambda x: x[None], transition))
      metrics = UpdateMetrics(env_steps=(update_index + 1) * num_envs, **episodes._asdict(),
                              signals=arrives.sum(), approval=approved.mean(), total_loss=loss, **health)
      runner = RunnerState(learner=Learner(params, opt_state), env=env_state, history=history, buffer=buffer)
      return runner, metrics

    def block(runner: RunnerState, block_index: jax.Array) -> tuple[RunnerState, tuple[UpdateMetrics, Evaluation]]:
      indices = block_index * updates_per_evaluation + jnp.arange(updates_per_evaluation)
      runner, metrics = jax.lax.scan(step, runner, indices)
      params = runner.learner.params
      greedy = lambda obs: jnp.argmax(network.apply(params, obs), axis=-1)
      episodes = rollout.greedy_returns(eval_env, greedy, jax.random.fold_in(k_eval, block_index))
      evaluation = Evaluation(env_steps=(block_index + 1) * updates_per_evaluation * num_envs,
                              episode_return=episodes.episode_return)
      return runner, (metrics, evaluation)

    k_init, k_reset, k_steps, k_eval = jax.random.split(key, 4)
    params = network.init(k_init, jnp.zeros((1, obs_dim), jnp.float32))
    history = History(obs=jnp.zeros((num_envs, window, obs_dim), jnp.float32),
                      action=jnp.zeros((num_envs, window), jnp.int32), valid=jnp.zeros((num_envs, window), bool))
    example = Feedback(obs=jnp.zeros((window, obs_dim), jnp.float32), action=jnp.zeros((window,), jnp.int32),
                       weight=jnp.zeros((window,), jnp.float32), signal=jnp.zeros((), jnp.float32))
    runner = RunnerState(learner=Learner(params, tx.init(params)), env=env.reset(k_reset), history=history,
                         buffer=dqn.buffer_init(config.buffer_size, example))
    runner, (metrics, evaluation) = jax.lax.scan(block, runner, jnp.arange(config.num_evaluations))
    metrics = jax.tree.map(lambda x: x.reshape((n_updates,) + x.shape[2:]), metrics)
    return TrainOutput(params=runner.learner.params, metrics=metrics, evaluation=evaluation)

  return train
