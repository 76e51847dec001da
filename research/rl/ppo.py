"""Policy gradient (REINFORCE with a baseline) and PPO, the whole training run inside one jit.

`make_train(config)` returns a pure function `train(key) -> TrainOutput`. Rollouts over
vectorised gymnax environments, advantage estimation and every gradient step are
`lax.scan`s, so one training run is one XLA program and seeds are a `jax.vmap` over it:

    train = make_train(config)
    out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 4))
    out.metrics.episode_return  # (4, num_updates)

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

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.train import ConfigError, apply_gradients, check_choice, check_positive

ENV_NAMES = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")
ALGORITHMS = ("ppo", "reinforce")

# The config fields make_train reads; experiments may add their own (seed, num_seeds).
CONFIG_FIELDS = ("env_name", "algorithm", "num_envs", "num_steps", "total_timesteps", "update_epochs",
                 "num_minibatches", "gamma", "gae_lambda", "clip_eps", "clip_value_loss", "ent_coef",
                 "vf_coef", "max_grad_norm", "learning_rate", "anneal_lr", "hidden_size")


# ----------------------------------------------------------------------------- network


def orthogonal(scale: float = 1.0) -> nn.initializers.Initializer:
  """Flax's `nn.initializers.orthogonal` (the same matrix up to rounding), without a LAPACK QR.

  The Q of a Gaussian matrix's QR with R's diagonal made positive is what Gram-Schmidt on its
  columns gives; here classical Gram-Schmidt, applied twice per column for float32 accuracy, in
  a `lax.fori_loop` of matrix-vector products. The training program is vmapped over seeds, and
  a vmapped QR becomes a batched LAPACK call that jaxlib fans out over XLA's CPU thread pool; on
  two cores two such calls can wait on each other forever, hanging the run at initialisation.
  """

  def init(key, shape, dtype=jnp.float32):
    if len(shape) != 2:
      raise ValueError(f"orthogonal initialisation needs a 2-D kernel, got shape {shape}")
    rows, cols = shape
    m, n = (cols, rows) if rows < cols else (rows, cols)
    a = jax.random.normal(key, (m, n), jnp.float32)

    def column(j, q):
      v = a[:, j]
      for _ in range(2):  # "twice is enough" (Giraud et al. 2005); unfilled columns of q are zero
        v = v - q @ (q.T @ v)
      return q.at[:, j].set(v / jnp.linalg.norm(v))

    q = jax.lax.fori_loop(0, n, column, jnp.zeros((m, n), jnp.float32))
    return (scale * (q.T if rows < cols else q)).astype(dtype)

  return init


class ActorCritic(nn.Module):
  """Separate tanh MLPs for the policy logits and the state value.

  Orthogonal initialisation (`orthogonal`) with gain sqrt(2) for hidden layers, 0.01 for the policy head
  (near-uniform initial policy) and 1 for the value head, zero biases.
  """

  num_actions: int
  hidden_size: int = 64

  @nn.compact
  def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Maps observations (..., obs_dim) to (logits (..., num_actions), value (...))."""
    hidden_init = orthogonal(np.sqrt(2.0))
    x = obs
    for i in range(2):
      x = nn.tanh(nn.Dense(self.hidden_size, kernel_init=hidden_init, name=f"actor_{i}")(x))
    logits = nn.Dense(self.num_actions, kernel_init=orthogonal(0.01), name="actor_head")(x)
    v = obs
    for i in range(2):
      v = nn.tanh(nn.Dense(self.hidden_size, kernel_init=hidden_init, name=f"critic_{i}")(v))
    value = nn.Dense(1, kernel_init=orthogonal(1.0), name="critic_head")(v)
    return logits, value[..., 0]


def log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
  """log pi(action) of a categorical policy: logits (..., A), action (...) -> (...)."""
  return jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], axis=-1)[..., 0]


def entropy(logits: jax.Array) -> jax.Array:
  """Entropy of a categorical policy: logits (..., A) -> (...)."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


# ----------------------------------------------------------------------------- losses


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array, done: jax.Array,
        gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation as a reverse scan over time.

  1. delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
  2. A_t = delta_t + gamma lambda (1 - done_t) A_{t+1},  A_T = 0

  s'_t is the state step t reached before any auto-reset, so a truncated episode
  bootstraps through V(s'_t) while a terminated one does not; `done` (terminated or
  truncated) stops the sum from crossing into the next episode. At the end of the rollout
  the last delta already bootstraps through V(s'_{T-1}).

  Args:
    rewards: (T, ...) rewards r_t.
    values: (T, ...) V(s_t).
    next_values: (T, ...) V(s'_t).
    terminated: (T, ...) 1 where s'_t is terminal, else 0.
    done: (T, ...) 1 where the episode ended at step t (terminated or truncated), else 0.
    gamma: discount factor.
    lam: GAE lambda; 1 gives the discounted return-to-go minus V (REINFORCE's advantage).

  Returns:
    (advantages, value targets), both (T, ...); targets = advantages + values.
  """
  terminated = terminated.astype(values.dtype)
  done = done.astype(values.dtype)
  deltas = rewards + gamma * (1.0 - terminated) * next_values - values  # (T, ...)

  def backward(next_advantage, step):
    delta, step_done = step
    advantage = delta + gamma * lam * (1.0 - step_done) * next_advantage
    return advantage, advantage

  _, advantages = jax.lax.scan(backward, jnp.zeros_like(values[0]), (deltas, done), reverse=True)
  return advantages, advantages + values


def clipped_surrogate_loss(new_log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                           clip_eps: float) -> jax.Array:
  """PPO's clipped surrogate objective, negated (a loss to minimise).

  L = -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)),  rho = pi_new(a|s) / pi_old(a|s).

  Args:
    new_log_prob: (B,) log pi_new(a|s).
    old_log_prob: (B,) log pi_old(a|s) recorded in the rollout.
    advantages: (B,) advantage estimates.
    clip_eps: the clipping range eps.

  Returns:
    The scalar loss.
  """
  ratio = jnp.exp(new_log_prob - old_log_prob)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
  return -jnp.mean(jnp.minimum(unclipped, clipped))


def value_loss(values: jax.Array, old_values: jax.Array, targets: jax.Array, clip_eps: float | None) -> jax.Array:
  """0.5 * mean squared error of V, with PPO's pessimistic clipping when clip_eps is given.

  Clipped: 0.5 * mean(max((V - G)^2, (V_old + clip(V - V_old, -eps, eps) - G)^2)).

  Args:
    values: (B,) V(s) under the current parameters.
    old_values: (B,) V(s) recorded in the rollout.
    targets: (B,) value targets G.
    clip_eps: clipping range, or None for the plain squared error.

  Returns:
    The scalar loss.
  """
  squared = jnp.square(values - targets)
  if clip_eps is not None:
    clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    squared = jnp.maximum(squared, jnp.square(clipped_values - targets))
  return 0.5 * jnp.mean(squared)


# ----------------------------------------------------------------------------- carries


class EpisodeStats(NamedTuple):
  """Running return and length of each environment's current episode (a LogWrapper)."""
  episode_return: jax.Array  # (num_envs,) float32
  episode_length: jax.Array  # (num_envs,) int32


class RunnerState(NamedTuple):
  """The carry of the update scan."""
  params: Any
  opt_state: optax.OptState
  env_state: Any  # gymnax state, every leaf (num_envs, ...)
  obs: jax.Array  # (num_envs, obs_dim)
  stats: EpisodeStats


class Transition(NamedTuple):
  """One vectorised environment step; stacked by the rollout scan to (num_steps, num_envs, ...)."""
  obs: jax.Array  # (num_envs, obs_dim) s_t
  action: jax.Array  # (num_envs,) int32
  log_prob: jax.Array  # (num_envs,) log pi_old(a_t|s_t)
  value: jax.Array  # (num_envs,) V_old(s_t)
  reward: jax.Array  # (num_envs,)
  next_obs: jax.Array  # (num_envs, obs_dim) s'_t, before the auto-reset
  terminated: jax.Array  # (num_envs,) bool
  done: jax.Array  # (num_envs,) bool: terminated or truncated
  episode_return: jax.Array  # (num_envs,) return so far of the episode containing step t
  episode_length: jax.Array  # (num_envs,) its length so far


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
  return HParams(*(jnp.asarray(config[name], jnp.float32) for name in HParams._fields))


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
  check_choice("env_name", config.env_name, ENV_NAMES)
  check_choice("algorithm", config.algorithm, ALGORITHMS)
  for name in ("num_envs", "num_steps", "total_timesteps", "update_epochs", "num_minibatches", "hidden_size"):
    value = getattr(config, name)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise ConfigError(f"{name} must be an integer, got {value!r}")
    check_positive(name, value)
  batch_size = config.num_envs * config.num_steps
  if config.total_timesteps < batch_size:
    raise ConfigError(f"total_timesteps {config.total_timesteps} is less than one rollout "
                      f"(num_envs * num_steps = {batch_size})")
  if config.algorithm == "ppo" and batch_size % config.num_minibatches:
    raise ConfigError(f"num_envs * num_steps = {batch_size} is not divisible by num_minibatches "
                      f"{config.num_minibatches}")
  for name in ("gamma", "gae_lambda"):
    value = getattr(config, name)
    if not 0.0 <= value <= 1.0:
      raise ConfigError(f"{name} must be in [0, 1], got {value}")
  check_positive("clip_eps", config.clip_eps)
  check_positive("ent_coef", config.ent_coef, allow_zero=True)
  check_positive("vf_coef", config.vf_coef, allow_zero=True)
  check_positive("max_grad_norm", config.max_grad_norm)
  check_positive("learning_rate", config.learning_rate, allow_zero=True)


def num_updates(config) -> int:
  """Number of rollout + update iterations: total_timesteps // (num_envs * num_steps)."""
  return config.total_timesteps // (config.num_envs * config.num_steps)


def make_train(config) -> Callable[..., TrainOutput]:
  """Builds the pure training function for `config` (validated here, before any tracing).

  Args:
    config: an object with the attributes in CONFIG_FIELDS; closed over, never mutated.

  Returns:
    `train(key, hparams=None) -> TrainOutput`, jit- and vmap-able over `key` (a typed or raw
    PRNG key) and over `hparams` (an HParams of arrays, e.g. several learning rates).

  Raises:
    ConfigError: on a bad config, e.g. an environment other than ENV_NAMES.
  """
  check_config(config)
  is_ppo = config.algorithm == "ppo"
  num_envs, num_steps = config.num_envs, config.num_steps
  batch_size = num_envs * num_steps
  n_updates = num_updates(config)
  grad_steps_per_update = config.update_epochs * config.num_minibatches if is_ppo else 1
  env, env_params = gymnax.make(config.env_name)
  obs_shape = env.observation_space(env_params).shape
  network = ActorCritic(num_actions=env.action_space(env_params).n, hidden_size=config.hidden_size)

  env_reset = jax.vmap(env.reset, in_axes=(0, None))
  env_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

  def train(key: jax.Array, hparams: HParams | None = None) -> TrainOutput:
    """Runs the whole training; pure in `key` and `hparams` (default: the config's values)."""
    hp = default_hparams(config) if hparams is None else HParams(*(jnp.asarray(h, jnp.float32) for h in hparams))
    gamma, clip_eps, ent_coef, vf_coef = hp.gamma, hp.clip_eps, hp.ent_coef, hp.vf_coef
    lam = hp.gae_lambda if is_ppo else 1.0
    value_clip = clip_eps if (is_ppo and config.clip_value_loss) else None

    def learning_rate(update: jax.Array) -> jax.Array:
      """Linear annealing to 0, held constant within an update."""
      if not config.anneal_lr:
        return hp.learning_rate
      return hp.learning_rate * (1.0 - update / n_updates)

    # optax counts gradient steps; the schedule turns the count back into an update index.
    tx = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        # eps=1e-5 rather than optax's 1e-8, as in the reference PPO implementations.
        optax.adam(lambda count: learning_rate(count // grad_steps_per_update), eps=1e-5),
    )

    def rollout_step(runner: RunnerState, key: jax.Array) -> tuple[RunnerState, Transition]:
      k_action, k_env = jax.random.split(key)
      logits, value = network.apply(runner.params, runner.obs)  # (num_envs, A), (num_envs,)
      action = jax.random.categorical(k_action, logits)  # (num_envs,)
      obs, env_state, reward, terminated, truncated, info = env_step(
          jax.random.split(k_env, num_envs), runner.env_state, action, env_params)
      done = jnp.logical_or(terminated, truncated)
      episode_return = runner.stats.episode_return + reward
      episode_length = runner.stats.episode_length + 1
      transition = Transition(obs=runner.obs, action=action, log_prob=log_prob(logits, action), value=value,
                              reward=reward, next_obs=info["final_observation"], terminated=terminated, done=done,
                              episode_return=episode_return, episode_length=episode_length)
      stats = EpisodeStats(episode_return=jnp.where(done, 0.0, episode_return),
                           episode_length=jnp.where(done, 0, episode_length))
      return runner._replace(env_state=env_state, obs=obs, stats=stats), transition

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
      runner, traj = jax.lax.scan(rollout_step, runner, jax.random.split(k_rollout, num_steps))
      # traj leaves: (num_steps, num_envs, ...)

      _, next_values = network.apply(runner.params, traj.next_obs)  # (num_steps, num_envs)
      advantages, targets = gae(traj.reward, traj.value, next_values, traj.terminated, traj.done, gamma, lam)
      flat = lambda x: x.reshape((batch_size,) + x.shape[2:])
      batch = Batch(obs=flat(traj.obs), action=flat(traj.action), log_prob=flat(traj.log_prob),
                    value=flat(traj.value), advantage=flat(advantages), target=flat(targets))

      learner = Learner(runner.params, runner.opt_state)
      if is_ppo:
        learner, loss_stats = jax.lax.scan(lambda l, k: epoch(l, batch, k), learner,
                                           jax.random.split(k_shuffle, config.update_epochs))
      else:
        learner, loss_stats = gradient_step(learner, batch)
      runner = runner._replace(params=learner.params, opt_state=learner.opt_state)

      episodes = jnp.sum(traj.done)
      done = traj.done.astype(jnp.float32)
      per_episode = lambda x: jnp.where(episodes > 0, jnp.sum(done * x) / jnp.maximum(episodes, 1), jnp.nan)
      loss_means = jax.tree.map(jnp.mean, loss_stats)
      metrics = UpdateMetrics(
          env_steps=(update_index + 1) * batch_size, episodes=episodes,
          episode_return=per_episode(traj.episode_return), episode_length=per_episode(traj.episode_length),
          learning_rate=learning_rate(update_index), **loss_means._asdict())
      return runner, metrics

    k_init, k_reset, k_updates = jax.random.split(key, 3)
    params = network.init(k_init, jnp.zeros((1,) + tuple(obs_shape), jnp.float32))
    obs, env_state = env_reset(jax.random.split(k_reset, num_envs), env_params)
    runner = RunnerState(params=params, opt_state=tx.init(params), env_state=env_state, obs=obs,
                         stats=EpisodeStats(jnp.zeros((num_envs,), jnp.float32), jnp.zeros((num_envs,), jnp.int32)))
    update_keys = jax.random.split(k_updates, n_updates)
    runner, metrics = jax.lax.scan(update, runner, (jnp.arange(n_updates), update_keys))
    return TrainOutput(params=runner.params, metrics=metrics)

  return train


def _mean_episode_return(metrics: UpdateMetrics, updates: slice) -> np.ndarray:
  episodes = np.asarray(metrics.episodes, np.float64)[..., updates]
  returns = np.asarray(metrics.episode_return, np.float64)[..., updates]
  # Episodes are weighted equally; updates that completed none (NaN return) add nothing.
  total = np.sum(np.where(episodes > 0, returns * episodes, 0.0), axis=-1)
  count = np.sum(episodes, axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _num_last(metrics: UpdateMetrics, fraction: float) -> int:
  return max(1, int(round(np.shape(metrics.episodes)[-1] * fraction)))


def final_return(metrics: UpdateMetrics, fraction: float = 0.1) -> np.ndarray:
  """Mean return of the episodes completed in the last `fraction` of updates (at least one).

  Args:
    metrics: `TrainOutput.metrics`, leaves (..., num_updates), e.g. (num_seeds, num_updates).
    fraction: the share of the final updates to average over.

  Returns:
    (...) array, e.g. one mean return per seed; NaN where no episode completed.
  """
  return _mean_episode_return(metrics, slice(-_num_last(metrics, fraction), None))


def initial_return(metrics: UpdateMetrics, fraction: float = 0.1) -> np.ndarray:
  """Like `final_return`, over the first `fraction` of updates (from the near-uniform initial policy)."""
  return _mean_episode_return(metrics, slice(None, _num_last(metrics, fraction)))
