"""Vectorised gymnax environments with episode statistics, and the rollout scan PPO, A2C and DQN share.

    env = VecEnv.make("CartPole-v1", num_envs=4)
    state = env.reset(key)                                     # EnvState: gymnax state, obs, stats
    state, traj = collect(env, policy, state, keys)            # keys (T,): traj leaves (T, num_envs, ...)
    metrics = episode_metrics(traj)                            # episodes finished, their mean return

`VecEnv` is gymnax's auto-resetting `step` vmapped over environments plus a LogWrapper:
the running return and length of every environment's episode. `Transition` keeps what any
of the algorithms needs: s_t, a_t, r_t, s'_t (the state the step reached, before the
auto-reset), termination separate from time-limit truncation, and the episode's return so
far; the policy adds its own outputs (log-probabilities, values) as `extras`.

The reductions at the bottom (`final_return`, `initial_return`) turn per-update episode
statistics, leaves (..., num_updates), into one return per run.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from research.checks import check_choice
from research.rl import envs

CLASSIC_CONTROL = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")
# Young & Tian (2019)'s MinAtar games as gymnax ships them (10 x 10 grids, one channel per object kind).
MINATAR = ("Breakout-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")
# research.rl.envs's tabular environments behind gymnax's interface: one-hot observations, a time limit.
TABULAR = tuple(envs.ENVS)
ENV_NAMES = CLASSIC_CONTROL + MINATAR + TABULAR


class EpisodeStats(NamedTuple):
  """Running return and length of each environment's current episode (a LogWrapper)."""
  episode_return: jax.Array  # (num_envs,) float32
  episode_length: jax.Array  # (num_envs,) int32


class EnvState(NamedTuple):
  """Everything a vectorised environment carries between steps."""
  inner: Any  # gymnax state, every leaf (num_envs, ...)
  obs: jax.Array  # (num_envs, *obs_shape): the observation the next action sees
  stats: EpisodeStats


class Transition(NamedTuple):
  """One vectorised environment step; stacked by `collect` to (num_steps, num_envs, ...)."""
  obs: jax.Array  # (num_envs, *obs_shape) s_t
  action: jax.Array  # (num_envs,) int32
  reward: jax.Array  # (num_envs,)
  next_obs: jax.Array  # (num_envs, *obs_shape) s'_t, before the auto-reset
  terminated: jax.Array  # (num_envs,) bool
  done: jax.Array  # (num_envs,) bool: terminated or truncated
  episode_return: jax.Array  # (num_envs,) return so far of the episode containing step t
  episode_length: jax.Array  # (num_envs,) its length so far
  extras: Any  # what the policy returned beside the action (e.g. log-probability and value)


class VecEnv(NamedTuple):
  """A gymnax environment vmapped over `num_envs` copies, with episode statistics."""
  env: Any  # gymnax.environments.environment.Environment
  params: Any  # its EnvParams
  num_envs: int

  @classmethod
  def make(cls, name: str, num_envs: int) -> "VecEnv":
    """Builds a registered gymnax environment; ConfigError (listing ENV_NAMES) for any other name."""
    check_choice("env_name", name, ENV_NAMES)
    if name in TABULAR:
      env = envs.GymnaxTabular(envs.make(name))
      return cls(env, env.default_params, num_envs)
    env, params = gymnax.make(name)
    return cls(env, params, num_envs)

  @property
  def obs_shape(self) -> tuple[int, ...]:
    return tuple(self.env.observation_space(self.params).shape)

  @property
  def num_actions(self) -> int:
    return int(self.env.action_space(self.params).n)

  @property
  def max_episode_steps(self) -> int:
    return int(self.params.max_steps_in_episode)

  def reset(self, key: jax.Array) -> EnvState:
    """Fresh episodes in every environment (one key per environment, split from `key`)."""
    obs, inner = jax.vmap(self.env.reset, in_axes=(0, None))(jax.random.split(key, self.num_envs), self.params)
    zeros = EpisodeStats(jnp.zeros((self.num_envs,), jnp.float32), jnp.zeros((self.num_envs,), jnp.int32))
    return EnvState(inner=inner, obs=obs, stats=zeros)

  def step(self, key: jax.Array, state: EnvState, action: jax.Array, extras: Any = None
           ) -> tuple[EnvState, Transition]:
    """One step of every environment; finished episodes reset automatically (gymnax's `step`).

    Args:
      key: split into one key per environment.
      state: the current EnvState.
      action: (num_envs,) actions.
      extras: stored in the Transition as is.

    Returns:
      The next EnvState and the Transition of this step.
    """
    obs, inner, reward, terminated, truncated, info = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
        jax.random.split(key, self.num_envs), state.inner, action, self.params)
    done = jnp.logical_or(terminated, truncated)
    episode_return = state.stats.episode_return + reward
    episode_length = state.stats.episode_length + 1
    transition = Transition(obs=state.obs, action=action, reward=reward, next_obs=info["final_observation"],
                            terminated=terminated, done=done, episode_return=episode_return,
                            episode_length=episode_length, extras=extras)
    stats = EpisodeStats(episode_return=jnp.where(done, 0.0, episode_return),
                         episode_length=jnp.where(done, 0, episode_length))
    return EnvState(inner=inner, obs=obs, stats=stats), transition


# `policy(obs (num_envs, ...), key) -> (action (num_envs,), extras)`.
Policy = Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]


def collect(env: VecEnv, policy: Policy, state: EnvState, keys: jax.Array) -> tuple[EnvState, Transition]:
  """A rollout of len(keys) steps of every environment, as a `lax.scan`.

  Each step splits its key into an action key and an environment key.

  Args:
    env: the vectorised environment.
    policy: `policy(obs, key) -> (action, extras)`; closes over the parameters it acts with.
    state: the EnvState to start from.
    keys: (num_steps,) keys, one per step.

  Returns:
    The EnvState after the rollout and the Transitions, leaves (num_steps, num_envs, ...).
  """

  def step(state: EnvState, key: jax.Array) -> tuple[EnvState, Transition]:
    k_action, k_env = jax.random.split(key)
    action, extras = policy(state.obs, k_action)
    return env.step(k_env, state, action, extras)

  return jax.lax.scan(step, state, keys)


class EpisodeMetrics(NamedTuple):
  """The episodes that ended inside a rollout."""
  episodes: jax.Array  # how many ended
  episode_return: jax.Array  # their mean return; NaN when none ended
  episode_length: jax.Array  # their mean length; NaN when none ended


def episode_metrics(traj: Transition) -> EpisodeMetrics:
  """Counts and averages the episodes that ended in a rollout (leaves (num_steps, num_envs, ...))."""
  episodes = jnp.sum(traj.done)
  done = traj.done.astype(jnp.float32)
  per_episode = lambda x: jnp.where(episodes > 0, jnp.sum(done * x) / jnp.maximum(episodes, 1), jnp.nan)
  return EpisodeMetrics(episodes=episodes, episode_return=per_episode(traj.episode_return),
                        episode_length=per_episode(traj.episode_length))


class GreedyEpisodes(NamedTuple):
  """One evaluation episode in each environment of a VecEnv."""
  episode_return: jax.Array  # (num_envs,) sum of rewards
  discounted_return: jax.Array  # (num_envs,) sum_t gamma^t r_t
  initial_obs: jax.Array  # (num_envs, *obs_shape) the first observation s_0


def greedy_returns(env: VecEnv, act: Callable[[jax.Array], jax.Array], key: jax.Array,
                   gamma: float | jax.Array = 1.0) -> GreedyEpisodes:
  """One episode in each of env.num_envs environments under a deterministic policy.

  A scan over the longest possible episode (env.max_episode_steps); each environment's
  rewards count until its first episode ends.

  Args:
    env: the vectorised environment (its num_envs is the number of episodes).
    act: `act(obs) -> action`, e.g. the argmax of Q.
    key: resets and (stochastic) dynamics.
    gamma: the discount of `discounted_return`.

  Returns:
    GreedyEpisodes: each environment's return, discounted return and first observation.
  """
  k_reset, k_steps = jax.random.split(key)

  def step(carry, key):
    state, running, discount, total, discounted = carry
    state, transition = env.step(key, state, act(state.obs))
    reward = jnp.where(running, transition.reward, 0.0)
    carry = (state, running & ~transition.done, discount * gamma, total + reward, discounted + discount * reward)
    return carry, None

  start = env.reset(k_reset)
  zeros = jnp.zeros((env.num_envs,), jnp.float32)
  carry = (start, jnp.ones((env.num_envs,), bool), jnp.ones((), jnp.float32), zeros, zeros)
  (_, _, _, total, discounted), _ = jax.lax.scan(step, carry, jax.random.split(k_steps, env.max_episode_steps))
  return GreedyEpisodes(episode_return=total, discounted_return=discounted, initial_obs=start.obs)


# ----------------------------------------------------------------------------- per-run reductions


def _mean_episode_return(metrics, updates: slice) -> np.ndarray:
  episodes = np.asarray(metrics.episodes, np.float64)[..., updates]
  returns = np.asarray(metrics.episode_return, np.float64)[..., updates]
  # Episodes are weighted equally; updates that completed none (NaN return) add nothing.
  total = np.sum(np.where(episodes > 0, returns * episodes, 0.0), axis=-1)
  count = np.sum(episodes, axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _num_last(metrics, fraction: float) -> int:
  return max(1, int(round(np.shape(metrics.episodes)[-1] * fraction)))


def final_return(metrics, fraction: float = 0.1) -> np.ndarray:
  """Mean return of the episodes completed in the last `fraction` of updates (at least one).

  Args:
    metrics: per-update metrics with `episodes` and `episode_return`, leaves (..., num_updates),
      e.g. (num_seeds, num_updates).
    fraction: the share of the final updates to average over.

  Returns:
    (...) array, e.g. one mean return per seed; NaN where no episode completed.
  """
  return _mean_episode_return(metrics, slice(-_num_last(metrics, fraction), None))


def initial_return(metrics, fraction: float = 0.1) -> np.ndarray:
  """Like `final_return`, over the first `fraction` of updates."""
  return _mean_episode_return(metrics, slice(None, _num_last(metrics, fraction)))

