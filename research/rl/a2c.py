"""A2C: synchronous advantage actor-critic (Mnih et al. 2016), the whole training run inside one jit.

`make_train(config)` returns a pure `train(key, hparams=None) -> TrainOutput`, vmappable over
seeds and hyperparameters like research/rl/ppo.py, whose rollout and advantage code it uses:

    out = jax.jit(jax.vmap(make_train(config)))(jax.random.split(jax.random.key(0), 4))

`make_chunks(config)` builds the same run in parts a driver calls a chunk of updates at a time,
as research.rl.ppo.make_chunks does.

Each update: `num_steps` steps of `num_envs` environments with the current policy, then ONE
gradient step on the whole rollout of

  L = -mean(log pi(a|s) A) + vf_coef * 0.5 * mean((V(s) - G)^2) - ent_coef * mean(H(pi(.|s)))

where G = A + V(s). With gae_lambda = 1 (the default) A + V(s) is the paper's n-step return:
the rewards up to the end of the rollout (or of the episode), bootstrapped there with V; a
gae_lambda below 1 gives GAE. The paper's optimizer is RMSProp (decay 0.99; here eps is
added outside the square root, as PyTorch and Stable-Baselines3 do); Adam is an option.

Huang et al. (2022) note that A2C is PPO with one epoch, one minibatch and no clipping: with
a single gradient step at the parameters that collected the rollout, the probability ratio
is 1 and clipping never binds. Keys are derived exactly as ppo.make_train derives them, so
an A2C run and a PPO run so configured (Adam, normalised advantages, no value clipping) see
the same rollouts and end with the same parameters (tests/test_a2c.py).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from research.checks import ConfigError, check_choice, check_positive
from research.rl import config as rl_config
from research.rl import ppo, rollout
from research.rl.losses import entropy, log_prob, value_loss
from research.rl.ppo import Batch
from research.rl.rollout import EnvState, VecEnv, final_return, initial_return
from research.train import apply_gradients

OPTIMIZERS = ("rmsprop", "adam")

# The config fields make_train reads; experiments may add their own (seed, num_seeds).
CONFIG_FIELDS = ("env_name", "num_envs", "num_steps", "total_timesteps", "gamma", "gae_lambda", "ent_coef",
                 "vf_coef", "max_grad_norm", "learning_rate", "anneal_lr", "optimizer", "rmsprop_decay",
                 "optimizer_eps", "normalize_advantages", "hidden_size")

__all__ = ["CONFIG_FIELDS", "HParams", "TrainOutput", "UpdateMetrics", "check_config", "default_hparams",
           "final_return", "initial_return", "make_chunks", "make_train", "num_updates"]


class HParams(NamedTuple):
  """The hyperparameters `train(key, hparams)` takes as arrays, so a sweep can vmap them."""
  learning_rate: jax.Array  # RMSProp or Adam step size (annealed linearly to 0 when config.anneal_lr)
  gamma: jax.Array  # discount
  gae_lambda: jax.Array  # 1: n-step returns; below 1: GAE(lambda)
  ent_coef: jax.Array  # entropy bonus weight
  vf_coef: jax.Array  # value loss weight


def default_hparams(config) -> HParams:
  """The config's values of the vmappable hyperparameters, as float32 scalars."""
  return rl_config.default_hparams(HParams, config)


class RunnerState(NamedTuple):
  """The carry of the update scan."""
  params: Any
  opt_state: optax.OptState
  env: EnvState


class UpdateMetrics(NamedTuple):
  """Per-update outputs of `train`, each (num_updates,) (plus leading vmap axes)."""
  env_steps: jax.Array  # environment steps taken after this update, summed over envs
  episodes: jax.Array  # episodes completed during this update's rollout
  episode_return: jax.Array  # mean return of those episodes; NaN when none completed
  episode_length: jax.Array  # mean length of those episodes; NaN when none completed
  learning_rate: jax.Array  # learning rate of this update
  total_loss: jax.Array
  policy_loss: jax.Array
  value_loss: jax.Array
  entropy: jax.Array
  grad_norm: jax.Array  # global norm of the gradient, before clipping
  param_norm: jax.Array  # global norm of the parameters after the step
  update_norm: jax.Array  # global norm of the applied update


class TrainOutput(NamedTuple):
  """What `train(key)` returns."""
  params: Any  # final ActorCritic parameters
  metrics: UpdateMetrics


def check_config(config) -> None:
  """Raises ConfigError on the first bad field, before anything is built or compiled.

  Args:
    config: an object with the attributes in CONFIG_FIELDS (e.g. an ml_collections ConfigDict).
  """
  check_choice("env_name", config.env_name, rollout.ENV_NAMES)
  check_choice("optimizer", config.optimizer, OPTIMIZERS)
  rl_config.check_integers(config, ("num_envs", "num_steps", "total_timesteps", "hidden_size"))
  if config.total_timesteps < config.num_envs * config.num_steps:
    raise ConfigError(f"total_timesteps {config.total_timesteps} is less than one rollout "
                      f"(num_envs * num_steps = {config.num_envs * config.num_steps})")
  rl_config.check_unit_interval(config, ("gamma", "gae_lambda"))
  if not 0.0 <= config.rmsprop_decay < 1.0:
    raise ConfigError(f"rmsprop_decay must be in [0, 1), got {config.rmsprop_decay}")
  check_positive("optimizer_eps", config.optimizer_eps)
  check_positive("ent_coef", config.ent_coef, allow_zero=True)
  check_positive("vf_coef", config.vf_coef, allow_zero=True)
  check_positive("max_grad_norm", config.max_grad_norm)
  check_positive("learning_rate", config.learning_rate, allow_zero=True)


def num_updates(config) -> int:
  """Number of rollout + update iterations: total_timesteps // (num_envs * num_steps)."""
  return config.total_timesteps // (config.num_envs * config.num_steps)


def make_chunks(config) -> ppo.Chunks:
  """Builds the training run as `init` and `advance`, called chunk by chunk as research.rl.ppo.make_chunks'.

  Chunked or not (`make_train`), the run is the same bit for bit.

  Args:
    config: an object with the attributes in CONFIG_FIELDS; closed over, never mutated.

  Returns:
    research.rl.ppo.Chunks(init, advance, num_updates, output) with research.rl.ppo.Carry carries.

  Raises:
    ConfigError: on a bad config.
  """
  check_config(config)
  num_steps = config.num_steps
  steps_per_update = config.num_envs * num_steps
  n_updates = num_updates(config)
  env = VecEnv.make(config.env_name, config.num_envs)
  network = ppo.actor_critic(config, env)

  def learning_rate(hp: HParams, update: jax.Array) -> jax.Array:
    if not config.anneal_lr:
      return hp.learning_rate
    return hp.learning_rate * (1.0 - update / n_updates)

  def transform(hp: HParams) -> optax.GradientTransformation:
    schedule = lambda update: learning_rate(hp, update)
    if config.optimizer == "rmsprop":
      optimizer = optax.rmsprop(schedule, decay=config.rmsprop_decay, eps=config.optimizer_eps, eps_in_sqrt=False)
    else:
      optimizer = optax.adam(schedule, eps=config.optimizer_eps)
    # One gradient step per update: optax's step count is the update index.
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optimizer)

  def init(key: jax.Array, hparams: HParams | None = None) -> ppo.Carry:
    """The carry before the first update; pure in `key` and `hparams` (default: the config's values)."""
    hp = rl_config.resolve(HParams, config, hparams)
    k_init, k_reset, k_updates = jax.random.split(key, 3)
    params = network.init(k_init, jnp.zeros((1,) + env.obs_shape, jnp.float32))
    runner = RunnerState(params=params, opt_state=transform(hp).init(params), env=env.reset(k_reset))
    update_keys = jax.random.key_data(jax.random.split(k_updates, n_updates))  # (num_updates, 2)
    return ppo.Carry(runner=runner, update_keys=update_keys)

  def advance(carry: ppo.Carry, first_update, length: int,
              hparams: HParams | None = None) -> tuple[ppo.Carry, UpdateMetrics]:
    """Runs `length` updates from update `first_update` on; their metrics are (length,) each."""
    hp = rl_config.resolve(HParams, config, hparams)
    tx = transform(hp)

    def loss_fn(params, batch: Batch) -> tuple[jax.Array, dict]:
      logits, values = network.apply(params, batch.obs)  # (B, A), (B,)
      advantages = batch.advantage
      if config.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
      policy_loss = -jnp.mean(log_prob(logits, batch.action) * advantages)
      v_loss = value_loss(values, batch.value, batch.target, None)
      ent = jnp.mean(entropy(logits))
      total = policy_loss + hp.vf_coef * v_loss - hp.ent_coef * ent
      return total, {"total_loss": total, "policy_loss": policy_loss, "value_loss": v_loss, "entropy": ent}

    def update(runner: RunnerState, xs: tuple[jax.Array, jax.Array]) -> tuple[RunnerState, UpdateMetrics]:
      update_index, key = xs
      k_rollout, _ = jax.random.split(key)  # the second key is PPO's shuffle key: kept so their rollouts agree
      policy = lambda obs, k: ppo.sample_action(network, runner.params, obs, k)
      env_state, traj = rollout.collect(env, policy, runner.env, jax.random.split(k_rollout, num_steps))
      batch = ppo.advantage_batch(network, runner.params, traj, hp.gamma, hp.gae_lambda)
      grads, losses = jax.grad(loss_fn, has_aux=True)(runner.params, batch)
      params, opt_state, health = apply_gradients(tx, runner.params, runner.opt_state, grads)
      metrics = UpdateMetrics(env_steps=(update_index + 1) * steps_per_update,
                              **rollout.episode_metrics(traj)._asdict(),
                              learning_rate=learning_rate(hp, update_index), **losses, **health)
      return RunnerState(params=params, opt_state=opt_state, env=env_state), metrics

    indices = first_update + jnp.arange(length)  # (length,) global update numbers
    keys = jax.random.wrap_key_data(jax.lax.dynamic_slice_in_dim(carry.update_keys, first_update, length))
    runner, metrics = jax.lax.scan(update, carry.runner, (indices, keys))
    return carry._replace(runner=runner), metrics

  def output(carry: ppo.Carry, metrics: UpdateMetrics) -> TrainOutput:
    return TrainOutput(params=carry.runner.params, metrics=metrics)

  return ppo.Chunks(init=init, advance=advance, num_updates=n_updates, output=output)


def make_train(config) -> Callable[..., TrainOutput]:
  """Builds the pure training function for `config` (validated here, before any tracing).

  Args:
    config: an object with the attributes in CONFIG_FIELDS; closed over, never mutated.

  Returns:
    `train(key, hparams=None) -> TrainOutput`, jit- and vmap-able over `key` and `hparams`:
    `make_chunks`' init and one chunk of every update.

  Raises:
    ConfigError: on a bad config.
  """
  chunks = make_chunks(config)

  def train(key: jax.Array, hparams: HParams | None = None) -> TrainOutput:
    """Runs the whole training; pure in `key` and `hparams` (default: the config's values)."""
    carry, metrics = chunks.advance(chunks.init(key, hparams), 0, chunks.num_updates, hparams)
    return chunks.output(carry, metrics)

  return train
