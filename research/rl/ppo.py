"""Policy gradient (REINFORCE with a baseline) and PPO, the whole training run inside one jit.

`make_train(config)` returns a pure function `train(key) -> TrainOutput`. Rollouts over
vectorised gymnax environments, advantage estimation and every gradient step are
`lax.scan`s, so one training run is one XLA program and seeds are a `jax.vmap` over it:

    train = make_train(config)
    out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 4))
    out.metrics.episode_return  # (4, num_updates)

`make_chunks(config)` builds the same run in parts, `init(key)` and `advance(carry, first_update,
length)`, for a driver that runs it a chunk of updates at a time (progress, checkpoints, a stop
on a signal: research/rl/experiment.py); chunked or not, the run is the same bit for bit.

Two algorithms share the rollout, the network and the optimizer:

- "ppo" (Schulman et al., 2017): clipped surrogate, GAE(lambda) advantages (Schulman et
  al., 2016), optionally clipped value loss, entropy bonus, `update_epochs` passes of
  `num_minibatches` shuffled minibatches over each rollout.
- "reinforce" (Williams, 1992) with a learned baseline: the discounted return-to-go minus
  V(s), one gradient step on the whole rollout. Episodes outlive a rollout of `num_steps`
  steps, so the return of an unfinished episode is completed with V at the cut (GAE with
  lambda = 1); `gae_lambda`, `clip_eps`, `update_epochs` and `num_minibatches` are unused.

gymnax separates termination from time-limit truncation; the advantage bootstraps through
V of the state a truncated step reached (before the auto-reset) and not through a
terminal one.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from research.checks import ConfigError, check_choice, check_positive
from research.rl import config as rl_config
from research.rl import rollout
from research.rl.losses import clipped_surrogate_loss, entropy, gae, log_prob, value_loss
from research.rl.networks import ActorCritic
from research.rl.rollout import EnvState, Transition, VecEnv, final_return, initial_return
from research.train import apply_gradients

ALGORITHMS = ("ppo", "reinforce")

# The config fields make_train reads; experiments may add their own (seed, num_seeds).
CONFIG_FIELDS = ("env_name", "algorithm", "num_envs", "num_steps", "total_timesteps", "update_epochs",
                 "num_minibatches", "gamma", "gae_lambda", "clip_eps", "clip_value_loss", "ent_coef",
                 "vf_coef", "max_grad_norm", "learning_rate", "anneal_lr", "hidden_size")

__all__ = ["ALGORITHMS", "CONFIG_FIELDS", "Batch", "Carry", "Chunks", "HParams", "LossStats", "PolicyOutput", "TrainOutput",
           "UpdateMetrics", "advantage_batch", "check_config", "default_hparams", "final_return",
           "initial_return", "make_chunks", "make_train", "num_updates", "sample_action"]


# ----------------------------------------------------------------------------- carries


class PolicyOutput(NamedTuple):
  """What the actor-critic records beside each action (a Transition's `extras`)."""
  log_prob: jax.Array  # (num_envs,) log pi_old(a_t|s_t)
  value: jax.Array  # (num_envs,) V_old(s_t)


class RunnerState(NamedTuple):
  """The carry of the update scan."""
  params: Any
  opt_state: optax.OptState
  env: EnvState


class Batch(NamedTuple):
  """What a gradient step sees, flattened over (num_steps * num_envs)."""
  obs: jax.Array  # (B, obs_dim)
  action: jax.Array  # (B,)
  log_prob: jax.Array  # (B,)
  value: jax.Array  # (B,)
  advantage: jax.Array  # (B,)
  target: jax.Array  # (B,)


class Learner(NamedTuple):
  """The carry of the epoch and minibatch scans."""
  params: Any
  opt_state: optax.OptState


class LossStats(NamedTuple):
  """Per-gradient-step diagnostics."""
  total_loss: jax.Array
  policy_loss: jax.Array
  value_loss: jax.Array
  entropy: jax.Array
  approx_kl: jax.Array  # mean of (rho - 1) - log rho, a low-variance KL(old || new) estimate
  clip_fraction: jax.Array  # fraction of samples with |rho - 1| > clip_eps
  grad_norm: jax.Array  # global norm of the gradient, before clipping
  param_norm: jax.Array  # global norm of the parameters after the step
  update_norm: jax.Array  # global norm of the applied update


class UpdateMetrics(NamedTuple):
  """Per-update outputs of `train`, each (num_updates,) (plus leading vmap axes)."""
  env_steps: jax.Array  # environment steps taken after this update, summed over envs
  episodes: jax.Array  # episodes completed during this update's rollout
  episode_return: jax.Array  # mean return of those episodes; NaN when none completed
  episode_length: jax.Array  # mean length of those episodes; NaN when none completed
  learning_rate: jax.Array  # learning rate used by this update
  total_loss: jax.Array  # the rest are means over this update's gradient steps
  policy_loss: jax.Array
  value_loss: jax.Array
  entropy: jax.Array
  approx_kl: jax.Array
  clip_fraction: jax.Array
  grad_norm: jax.Array
  param_norm: jax.Array
  update_norm: jax.Array


class HParams(NamedTuple):
  """The hyperparameters `train(key, hparams)` takes as arrays, so a sweep can vmap them.

  `default_hparams(config)` fills them from the config; everything else in the config
  (sizes, environment, algorithm) is fixed when `make_train` builds the program.
  """
  learning_rate: jax.Array  # peak Adam step size (annealed linearly when config.anneal_lr)
  gamma: jax.Array  # discount
  gae_lambda: jax.Array  # GAE lambda (REINFORCE always uses 1)
  clip_eps: jax.Array  # PPO clipping range (also for the value loss when clipped)
  ent_coef: jax.Array  # entropy bonus weight
  vf_coef: jax.Array  # value loss weight


def default_hparams(config) -> HParams:
  """The config's values of the vmappable hyperparameters, as float32 scalars."""
  return rl_config.default_hparams(HParams, config)


class TrainOutput(NamedTuple):
  """What `train(key)` returns."""
  params: Any  # final ActorCritic parameters
  metrics: UpdateMetrics


# ----------------------------------------------------------------------------- training


def check_config(config) -> None:
  """Raises ConfigError on the first bad field, before anything is built or compiled.

  Args:
    config: an object with the attributes in CONFIG_FIELDS (e.g. an ml_collections ConfigDict).
  """
  check_choice("env_name", config.env_name, rollout.ENV_NAMES)
  check_choice("algorithm", config.algorithm, ALGORITHMS)
  rl_config.check_integers(config, ("num_envs", "num_steps", "total_timesteps", "update_epochs", "num_minibatches",
                                    "hidden_size"))
  batch_size = config.num_envs * config.num_steps
  if config.total_timesteps < batch_size:
    raise ConfigError(f"total_timesteps {config.total_timesteps} is less than one rollout "
                      f"(num_envs * num_steps = {batch_size})")
  if config.algorithm == "ppo" and batch_size % config.num_minibatches:
    raise ConfigError(f"num_envs * num_steps = {batch_size} is not divisible by num_minibatches "
                      f"{config.num_minibatches}")
  rl_config.check_unit_interval(config, ("gamma", "gae_lambda"))
  check_positive("clip_eps", config.clip_eps)
  check_positive("ent_coef", config.ent_coef, allow_zero=True)
  check_positive("vf_coef", config.vf_coef, allow_zero=True)
  check_positive("max_grad_norm", config.max_grad_norm)
  check_positive("learning_rate", config.learning_rate, allow_zero=True)


def num_updates(config) -> int:
  """Number of rollout + update iterations: total_timesteps // (num_envs * num_steps)."""
  return config.total_timesteps // (config.num_envs * config.num_steps)


def actor_critic(config, env: VecEnv) -> ActorCritic:
  """The ActorCritic for `env`: MLPs on flat observations, the conv torso on MinAtar's grids."""
  torso = "conv" if config.env_name in rollout.MINATAR else "mlp"
  return ActorCritic(num_actions=env.num_actions, hidden_size=config.hidden_size, torso=torso)


def sample_action(network: ActorCritic, params, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, PolicyOutput]:
  """A rollout policy (research.rl.rollout.Policy): a ~ pi(.|s), with log pi(a|s) and V(s) as extras."""
  logits, value = network.apply(params, obs)  # (num_envs, A), (num_envs,)
  action = jax.random.categorical(key, logits)  # (num_envs,)
  return action, PolicyOutput(log_prob=log_prob(logits, action), value=value)


def advantage_batch(network: ActorCritic, params, traj: Transition, gamma, lam) -> Batch:
  """GAE(lambda) advantages and value targets of a rollout, flattened into one Batch.

  Args:
    network: the ActorCritic that collected `traj`.
    params: its parameters (V(s'_t) is evaluated with them).
    traj: Transitions with PolicyOutput extras, leaves (num_steps, num_envs, ...).
    gamma: discount.
    lam: GAE lambda (1: n-step returns bootstrapped at the rollout's end).

  Returns:
    The Batch, leaves (num_steps * num_envs, ...) in time-major order.
  """
  _, next_values = network.apply(params, traj.next_obs)  # (num_steps, num_envs)
  advantages, targets = gae(traj.reward, traj.extras.value, next_values, traj.terminated, traj.done, gamma, lam)
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  return Batch(obs=flat(traj.obs), action=flat(traj.action), log_prob=flat(traj.extras.log_prob),
               value=flat(traj.extras.value), advantage=flat(advantages), target=flat(targets))


class Carry(NamedTuple):
  """What a chunked run carries from one chunk of updates to the next (one run's; vmaps add leading axes)."""
  runner: RunnerState  # parameters, optimizer state and environment state
  update_keys: jax.Array  # (num_updates, 2) uint32: the key data of every update's key, split up front


class Chunks(NamedTuple):
  """The training run of `make_train` in parts a driver calls chunk by chunk (see `make_chunks`)."""
  init: Callable[..., Carry]  # init(key, hparams=None) -> Carry before the first update
  advance: Callable[..., tuple[Carry, UpdateMetrics]]  # advance(carry, first_update, length, hparams=None)
  num_updates: int  # updates in the whole run
  output: Callable[..., Any]  # output(carry, metrics) -> TrainOutput: the run's output from its last carry and metrics


def make_chunks(config) -> Chunks:
  """Builds the training run as `init` and `advance`, pure functions a driver calls chunk by chunk.

      chunks = make_chunks(config)
      carry = chunks.init(key)
      carry, first = chunks.advance(carry, 0, 10)  # updates 0..9, metrics (10,)
      carry, rest = chunks.advance(carry, 10, chunks.num_updates - 10)
      out = chunks.output(carry, jax.tree.map(lambda *x: jnp.concatenate(x), first, rest))

  gives the parameters and metrics of `make_train(config)(key)` bit for bit, whatever the
  chunks: the per-update keys are split once in `init` and indexed by update number, and the
  learning rate schedule reads the global update index.

  Args:
    config: an object with the attributes in CONFIG_FIELDS; closed over, never mutated.

  Returns:
    Chunks(init, advance, num_updates, output). `init(key, hparams=None)` takes a key of the default
    PRNG implementation (typed or raw); `advance(carry, first_update, length, hparams=None)`
    runs updates first_update .. first_update + length - 1 (`length` a Python int, fixed when
    traced; `first_update` may be traced) and returns the carry and their UpdateMetrics, each
    (length,). Both are jit- and vmap-able; `hparams` must be the same in every call.

  Raises:
    ConfigError: on a bad config, e.g. an environment other than ENV_NAMES.
  """
  check_config(config)
  is_ppo = config.algorithm == "ppo"
  num_envs, num_steps = config.num_envs, config.num_steps
  batch_size = num_envs * num_steps
  n_updates = num_updates(config)
  grad_steps_per_update = config.update_epochs * config.num_minibatches if is_ppo else 1
  env = VecEnv.make(config.env_name, num_envs)
  network = actor_critic(config, env)

  def learning_rate(hp: HParams, update: jax.Array) -> jax.Array:
    """Linear annealing to 0, held constant within an update."""
    if not config.anneal_lr:
      return hp.learning_rate
    return hp.learning_rate * (1.0 - update / n_updates)

  def optimizer(hp: HParams) -> optax.GradientTransformation:
    # optax counts gradient steps; the schedule turns the count back into an update index.
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        # eps=1e-5 rather than optax's 1e-8, as in the reference PPO implementations.
        optax.adam(lambda count: learning_rate(hp, count // grad_steps_per_update), eps=1e-5),
    )

  def init(key: jax.Array, hparams: HParams | None = None) -> Carry:
    """The carry before the first update; pure in `key` and `hparams` (default: the config's values)."""
    hp = rl_config.resolve(HParams, config, hparams)
    k_init, k_reset, k_updates = jax.random.split(key, 3)
    params = network.init(k_init, jnp.zeros((1,) + env.obs_shape, jnp.float32))
    runner = RunnerState(params=params, opt_state=optimizer(hp).init(params), env=env.reset(k_reset))
    # Key data rather than typed keys: the carry is saved in checkpoints as plain arrays.
    update_keys = jax.random.key_data(jax.random.split(k_updates, n_updates))  # (num_updates, 2)
    return Carry(runner=runner, update_keys=update_keys)

  def advance(carry: Carry, first_update, length: int,
              hparams: HParams | None = None) -> tuple[Carry, UpdateMetrics]:
    """Runs `length` updates from update `first_update` on; their metrics are (length,) each."""
    hp = rl_config.resolve(HParams, config, hparams)
    gamma, clip_eps, ent_coef, vf_coef = hp.gamma, hp.clip_eps, hp.ent_coef, hp.vf_coef
    lam = hp.gae_lambda if is_ppo else 1.0
    value_clip = clip_eps if (is_ppo and config.clip_value_loss) else None
    tx = optimizer(hp)

    def loss_fn(params, batch: Batch) -> tuple[jax.Array, LossStats]:
      logits, values = network.apply(params, batch.obs)  # (B, A), (B,)
      new_log_prob = log_prob(logits, batch.action)
      # Normalised advantages keep the policy step's scale independent of the reward scale.
      advantages = (batch.advantage - batch.advantage.mean()) / (batch.advantage.std() + 1e-8)
      if is_ppo:
        policy_loss = clipped_surrogate_loss(new_log_prob, batch.log_prob, advantages, clip_eps)
      else:
        policy_loss = -jnp.mean(new_log_prob * advantages)
      v_loss = value_loss(values, batch.value, batch.target, value_clip)
      ent = jnp.mean(entropy(logits))
      total = policy_loss + vf_coef * v_loss - ent_coef * ent
      log_ratio = new_log_prob - batch.log_prob
      ratio = jnp.exp(log_ratio)
      no_health = jnp.zeros(())  # filled in by gradient_step
      stats = LossStats(total_loss=total, policy_loss=policy_loss, value_loss=v_loss, entropy=ent,
                        approx_kl=jnp.mean(ratio - 1.0 - log_ratio),
                        clip_fraction=jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32)),
                        grad_norm=no_health, param_norm=no_health, update_norm=no_health)
      return total, stats

    def gradient_step(learner: Learner, batch: Batch) -> tuple[Learner, LossStats]:
      grads, stats = jax.grad(loss_fn, has_aux=True)(learner.params, batch)
      params, opt_state, health = apply_gradients(tx, learner.params, learner.opt_state, grads)
      return Learner(params, opt_state), stats._replace(**health)

    def epoch(learner: Learner, batch: Batch, key: jax.Array) -> tuple[Learner, LossStats]:
      permutation = jax.random.permutation(key, batch_size)
      minibatches = jax.tree.map(  # (num_minibatches, B / num_minibatches, ...)
          lambda x: x[permutation].reshape((config.num_minibatches, -1) + x.shape[1:]), batch)
      return jax.lax.scan(gradient_step, learner, minibatches)

    def update(runner: RunnerState, xs: tuple[jax.Array, jax.Array]) -> tuple[RunnerState, UpdateMetrics]:
      update_index, key = xs
      k_rollout, k_shuffle = jax.random.split(key)
      policy = lambda obs, k: sample_action(network, runner.params, obs, k)
      env_state, traj = rollout.collect(env, policy, runner.env, jax.random.split(k_rollout, num_steps))
      batch = advantage_batch(network, runner.params, traj, gamma, lam)  # traj leaves: (num_steps, num_envs, ...)

      learner = Learner(runner.params, runner.opt_state)
      if is_ppo:
        learner, loss_stats = jax.lax.scan(lambda l, k: epoch(l, batch, k), learner,
                                           jax.random.split(k_shuffle, config.update_epochs))
      else:
        learner, loss_stats = gradient_step(learner, batch)
      runner = RunnerState(params=learner.params, opt_state=learner.opt_state, env=env_state)

      loss_means = jax.tree.map(jnp.mean, loss_stats)
      metrics = UpdateMetrics(env_steps=(update_index + 1) * batch_size, **rollout.episode_metrics(traj)._asdict(),
                              learning_rate=learning_rate(hp, update_index), **loss_means._asdict())
      return runner, metrics

    indices = first_update + jnp.arange(length)  # (length,) global update numbers
    keys = jax.random.wrap_key_data(jax.lax.dynamic_slice_in_dim(carry.update_keys, first_update, length))
    runner, metrics = jax.lax.scan(update, carry.runner, (indices, keys))
    return carry._replace(runner=runner), metrics

  def output(carry: Carry, metrics: UpdateMetrics) -> TrainOutput:
    return TrainOutput(params=carry.runner.params, metrics=metrics)

  return Chunks(init=init, advance=advance, num_updates=n_updates, output=output)


def make_train(config) -> Callable[..., TrainOutput]:
  """Builds the pure training function for `config` (validated here, before any tracing).

  Args:
    config: an object with the attributes in CONFIG_FIELDS; closed over, never mutated.

  Returns:
    `train(key, hparams=None) -> TrainOutput`, jit- and vmap-able over `key` (a typed or raw
    PRNG key of the default implementation) and over `hparams` (an HParams of arrays, e.g.
    several learning rates): `make_chunks`' init and one chunk of every update.

  Raises:
    ConfigError: on a bad config, e.g. an environment other than ENV_NAMES.
  """
  chunks = make_chunks(config)

  def train(key: jax.Array, hparams: HParams | None = None) -> TrainOutput:
    """Runs the whole training; pure in `key` and `hparams` (default: the config's values)."""
    carry, metrics = chunks.advance(chunks.init(key, hparams), 0, chunks.num_updates, hparams)
    return chunks.output(carry, metrics)

  return train
