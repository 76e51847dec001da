"""DQN (Mnih et al. 2015) and Double DQN (van Hasselt et al. 2016), the whole training run inside one jit.

`make_train(config)` returns a pure `train(key, hparams=None) -> TrainOutput`: acting,
the replay buffer, every gradient step, the target network and periodic greedy evaluations
are `lax.scan`s over one carry, so seeds (and swept hyperparameters) are a `jax.vmap`:

    train = make_train(config)
    out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 4))
    out.evaluation.episode_return  # (4, num_evaluations, eval_episodes) greedy returns

`make_chunks(config)` builds the same run in parts a driver calls a chunk of updates at a time,
as research.rl.ppo.make_chunks does; the evaluations ride in the carry.

One update: every environment takes `num_steps` epsilon-greedy steps (epsilon linear from
epsilon_start to epsilon_end over the first exploration_fraction of the run), the
transitions go into the replay buffer, and once `learning_starts` environment steps have
been taken, `gradient_steps` minibatches of `batch_size` are sampled uniformly from it,
each one Adam step on the TD loss (Huber or squared error) against

  DQN:         y = r + gamma (1 - terminated) max_a Q_target(s', a)
  Double DQN:  y = r + gamma (1 - terminated) Q_target(s', argmax_a Q_online(s', a))

Every `target_update_period` updates the target network moves to
tau * online + (1 - tau) * target (tau = 1: a copy, as in the paper; small tau with period 1:
Polyak averaging). A dueling head (Wang et al. 2016) is an option of the network.

The replay buffer is a pytree in the carry: fixed-size arrays written circularly, so its
memory is allocated once; s' is stored beside s (the state a step reached before the
auto-reset), which doubles the observations but keeps truncation and episode ends exact.
Every seed draws its own initial weights, exploration, environments and minibatches from
its own key.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from research.checks import ConfigError, check_choice, check_positive
from research.rl import config as rl_config
from research.rl import ppo, rollout
from research.rl.losses import TD_LOSSES, q_learning_target, td_loss
from research.rl.networks import QNetwork
from research.rl.rollout import EnvState, VecEnv, final_return, initial_return
from research.train import apply_gradients

# The config fields make_train reads; experiments may add their own (seed, num_seeds).
CONFIG_FIELDS = ("env_name", "num_envs", "num_steps", "total_timesteps", "buffer_size", "batch_size",
                 "learning_starts", "gradient_steps", "epsilon_start", "epsilon_end", "exploration_fraction",
                 "target_update_period", "tau", "loss", "double_dqn", "dueling", "gamma", "learning_rate",
                 "anneal_lr", "max_grad_norm", "hidden_size", "num_evaluations", "eval_episodes")

__all__ = ["CONFIG_FIELDS", "Carry", "Evaluation", "Experience", "HParams", "ReplayBuffer", "TrainOutput",
           "UpdateMetrics", "buffer_add", "buffer_init", "buffer_sample", "check_config", "default_hparams", "epsilon",
           "epsilon_greedy", "final_return", "initial_return", "make_chunks", "make_train", "num_updates",
           "q_network"]


# ----------------------------------------------------------------------------- replay buffer


class Experience(NamedTuple):
  """Transitions as the buffer stores them, leaves (N, ...)."""
  obs: jax.Array  # (N, *obs_shape) s
  action: jax.Array  # (N,) int32
  reward: jax.Array  # (N,) float32
  next_obs: jax.Array  # (N, *obs_shape) s', before any auto-reset
  terminated: jax.Array  # (N,) bool: s' is terminal (not merely the time limit)


class ReplayBuffer(NamedTuple):
  """A circular buffer of `size` items (any pytree); `position` is the next slot written."""
  data: Any  # the items, leaves (size, ...): Experience for DQN
  position: jax.Array  # () int32
  count: jax.Array  # () int32: filled slots, at most size


def buffer_init(size: int, example: Any) -> ReplayBuffer:
  """An empty buffer of `size` items shaped like `example` (one item: arrays or ShapeDtypeStructs)."""
  data = jax.tree.map(lambda x: jnp.zeros((size,) + tuple(x.shape), x.dtype), example)
  return ReplayBuffer(data=data, position=jnp.zeros((), jnp.int32), count=jnp.zeros((), jnp.int32))


def buffer_add(buffer: ReplayBuffer, items: Any, mask: jax.Array | None = None) -> ReplayBuffer:
  """Writes N items (leaves (N, ...)) at position, position + 1, ... (mod size), over the oldest once full.

  Args:
    buffer: the buffer.
    items: N items, leaves (N, ...) (N at most the buffer's size).
    mask: (N,) bool: write only these items, packed in order; None writes all.

  Returns:
    The buffer with the items written.
  """
  size = jax.tree.leaves(buffer.data)[0].shape[0]
  n = jax.tree.leaves(items)[0].shape[0]
  if mask is None:
    offsets, written = jnp.arange(n), n
  else:
    offsets = jnp.where(mask, jnp.cumsum(mask) - 1, size)  # an item left out goes past the end: dropped
    written = jnp.sum(mask).astype(jnp.int32)
  slots = jnp.where(offsets < size, (buffer.position + offsets) % size, size)  # (N,)
  data = jax.tree.map(lambda stored, new: stored.at[slots].set(new.astype(stored.dtype), mode="drop"),
                      buffer.data, items)
  return ReplayBuffer(data=data, position=(buffer.position + written) % size,
                      count=jnp.minimum(buffer.count + written, size))


def buffer_sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int) -> Any:
  """`batch_size` items drawn uniformly, with replacement, from the filled slots (count must be > 0)."""
  index = jax.random.randint(key, (batch_size,), 0, buffer.count)
  return jax.tree.map(lambda x: x[index], buffer.data)


# ----------------------------------------------------------------------------- acting


def epsilon(env_steps: jax.Array, total_timesteps: int, hp: "HParams") -> jax.Array:
  """Linear schedule: epsilon_start at step 0 to epsilon_end after exploration_fraction * total_timesteps."""
  duration = hp.exploration_fraction * total_timesteps
  progress = jnp.where(duration > 0, jnp.minimum(env_steps / jnp.maximum(duration, 1.0), 1.0), 1.0)
  return hp.epsilon_start + progress * (hp.epsilon_end - hp.epsilon_start)


def epsilon_greedy(q_values: jax.Array, eps: jax.Array, key: jax.Array) -> jax.Array:
  """argmax_a Q(s, a), replaced with probability eps by a uniformly random action: (N, A) -> (N,)."""
  k_explore, k_action = jax.random.split(key)
  n, num_actions = q_values.shape
  explore = jax.random.uniform(k_explore, (n,)) < eps
  random_action = jax.random.randint(k_action, (n,), 0, num_actions)
  return jnp.where(explore, random_action, jnp.argmax(q_values, axis=-1)).astype(jnp.int32)


# ----------------------------------------------------------------------------- carries


class HParams(NamedTuple):
  """The hyperparameters `train(key, hparams)` takes as arrays, so a sweep can vmap them."""
  learning_rate: jax.Array  # Adam step size (annealed linearly to 0 when config.anneal_lr)
  gamma: jax.Array  # discount
  epsilon_start: jax.Array  # exploration at the first step
  epsilon_end: jax.Array  # exploration after the schedule
  exploration_fraction: jax.Array  # share of total_timesteps over which epsilon falls linearly
  tau: jax.Array  # target update: target <- tau * online + (1 - tau) * target


def default_hparams(config) -> HParams:
  """The config's values of the vmappable hyperparameters, as float32 scalars."""
  return rl_config.default_hparams(HParams, config)


class Learner(NamedTuple):
  """The trained part of the carry."""
  params: Any
  target_params: Any
  opt_state: optax.OptState


class RunnerState(NamedTuple):
  """The carry of the update scan."""
  learner: Learner
  env: EnvState
  buffer: ReplayBuffer


class LossStats(NamedTuple):
  """Per-gradient-step diagnostics."""
  total_loss: jax.Array  # the TD loss
  q_mean: jax.Array  # mean Q(s, a) of the minibatch's actions
  target_mean: jax.Array  # mean TD target y
  grad_norm: jax.Array  # global norm of the gradient, before clipping
  param_norm: jax.Array  # global norm of the parameters after the step
  update_norm: jax.Array  # global norm of the applied update


class UpdateMetrics(NamedTuple):
  """Per-update outputs of `train`, each (num_updates,) (plus leading vmap axes)."""
  env_steps: jax.Array  # environment steps taken after this update, summed over envs
  episodes: jax.Array  # episodes completed during this update's steps
  episode_return: jax.Array  # mean return of those episodes (epsilon-greedy); NaN when none completed
  episode_length: jax.Array  # mean length of those episodes; NaN when none completed
  epsilon: jax.Array  # exploration rate of this update's steps
  learning_rate: jax.Array  # learning rate of this update's gradient steps
  total_loss: jax.Array  # the rest are means over this update's gradient steps (0 before learning starts)
  q_mean: jax.Array
  target_mean: jax.Array
  grad_norm: jax.Array
  param_norm: jax.Array
  update_norm: jax.Array


class Evaluation(NamedTuple):
  """Greedy (epsilon = 0) episodes after every num_updates / num_evaluations updates."""
  env_steps: jax.Array  # (num_evaluations,) environment steps trained on before the evaluation
  episode_return: jax.Array  # (num_evaluations, eval_episodes) undiscounted returns
  discounted_return: jax.Array  # (num_evaluations, eval_episodes) sum_t gamma^t r_t actually obtained
  initial_value: jax.Array  # (num_evaluations, eval_episodes) max_a Q(s_0, a): what the network predicts


class TrainOutput(NamedTuple):
  """What `train(key)` returns."""
  params: Any  # final online QNetwork parameters
  metrics: UpdateMetrics
  evaluation: Evaluation


# ----------------------------------------------------------------------------- training


def check_config(config) -> None:
  """Raises ConfigError on the first bad field, before anything is built or compiled.

  Args:
    config: an object with the attributes in CONFIG_FIELDS (e.g. an ml_collections ConfigDict).
  """
  check_choice("env_name", config.env_name, rollout.ENV_NAMES)
  check_choice("loss", config.loss, TD_LOSSES)
  rl_config.check_integers(config, ("num_envs", "num_steps", "total_timesteps", "buffer_size", "batch_size",
                                    "gradient_steps", "hidden_size", "num_evaluations", "eval_episodes"))
  if config.target_update_period < 1 or int(config.target_update_period) != config.target_update_period:
    raise ConfigError(f"target_update_period must be a positive integer (updates between target network "
                      f"updates), got {config.target_update_period}")
  check_positive("learning_starts", config.learning_starts, allow_zero=True)
  if config.buffer_size < config.batch_size:
    raise ConfigError(f"buffer_size {config.buffer_size} is smaller than batch_size {config.batch_size}")
  steps_per_update = config.num_envs * config.num_steps
  if config.buffer_size < steps_per_update:
    raise ConfigError(f"buffer_size {config.buffer_size} is smaller than one update's transitions "
                      f"(num_envs * num_steps = {steps_per_update})")
  if num_updates(config) < 1:
    raise ConfigError(f"total_timesteps {config.total_timesteps} is less than num_evaluations "
                      f"{config.num_evaluations} updates of num_envs * num_steps = {steps_per_update} steps")
  rl_config.check_unit_interval(config, ("epsilon_start", "epsilon_end", "exploration_fraction", "gamma"))
  if not 0.0 < config.tau <= 1.0:
    raise ConfigError(f"tau must be in (0, 1], got {config.tau}")
  check_positive("learning_rate", config.learning_rate, allow_zero=True)
  check_positive("max_grad_norm", config.max_grad_norm)


def num_updates(config) -> int:
  """Updates of the run: total_timesteps // (num_envs * num_steps), rounded down to whole evaluation blocks."""
  per_block = config.total_timesteps // (config.num_envs * config.num_steps * config.num_evaluations)
  return per_block * config.num_evaluations


def q_network(config, env: VecEnv) -> QNetwork:
  """The QNetwork for `env`: an MLP on flat observations, the conv torso on MinAtar's grids."""
  torso = "conv" if config.env_name in rollout.MINATAR else "mlp"
  return QNetwork(num_actions=env.num_actions, hidden_size=config.hidden_size, torso=torso, dueling=config.dueling)


class Carry(NamedTuple):
  """What a chunked run carries from one chunk of updates to the next (one run's; vmaps add leading axes)."""
  runner: RunnerState  # the networks, optimizer state, environments and replay buffer
  update_key: jax.Array  # (2,) uint32 key data: update u's key is fold_in(update_key, u)
  eval_key: jax.Array  # (2,) uint32 key data: evaluation b's key is fold_in(eval_key, b)
  evaluation: Evaluation  # every evaluation, written as training reaches it (NaN returns before)


def make_chunks(config) -> ppo.Chunks:
  """Builds the training run as `init` and `advance`, called chunk by chunk as research.rl.ppo.make_chunks'.

      chunks = make_chunks(config)
      carry = chunks.init(key)
      carry, first = chunks.advance(carry, 0, 10)  # updates 0..9, metrics (10,)
      carry, rest = chunks.advance(carry, 10, chunks.num_updates - 10)
      out = chunks.output(carry, concatenated metrics)  # make_train(config)(key), bit for bit

  Whatever the chunks, every update's keys are folded from the run's key by update number,
  and epsilon, the learning rate and the target network's updates read the global update
  index. The greedy evaluations run at fixed update numbers, inside the update that ends
  each block of num_updates / num_evaluations updates, and are kept in the carry, so a chunk
  may end anywhere.

  Args:
    config: an object with the attributes in CONFIG_FIELDS; closed over, never mutated.

  Returns:
    research.rl.ppo.Chunks(init, advance, num_updates, output) with `Carry` carries and
    UpdateMetrics per update; `output(carry, metrics)` is the TrainOutput with the carry's
    evaluations. `first_update` should not be vmapped: the evaluation is then a real branch.

  Raises:
    ConfigError: on a bad config, e.g. a buffer smaller than a batch.
  """
  check_config(config)
  env = VecEnv.make(config.env_name, config.num_envs)
  eval_env = VecEnv.make(config.env_name, config.eval_episodes)
  network = q_network(config, env)
  steps_per_update = config.num_envs * config.num_steps
  n_updates = num_updates(config)
  updates_per_evaluation = n_updates // config.num_evaluations
  # The first update whose gradient steps run: learning_starts environment steps have been taken.
  first_learning_update = -(-config.learning_starts // steps_per_update)
  # MinAtar's observations are 0/1 grids: stored as bools they take a quarter of the memory.
  obs_dtype = jnp.bool_ if config.env_name in rollout.MINATAR else jnp.float32

  def learning_rate(hp: HParams, update: jax.Array) -> jax.Array:
    """Linear annealing to 0 over the updates that learn, held constant within an update."""
    if not config.anneal_lr:
      return hp.learning_rate
    learning_updates = max(n_updates - first_learning_update, 1)
    return hp.learning_rate * (1.0 - jnp.maximum(update - first_learning_update, 0) / learning_updates)

  def optimizer(hp: HParams) -> optax.GradientTransformation:
    # optax counts gradient steps; the schedule turns the count back into an update index.
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(lambda count: learning_rate(hp, first_learning_update + count // config.gradient_steps)),
    )

  def init(key: jax.Array, hparams: HParams | None = None) -> Carry:
    """The carry before the first update; pure in `key` and `hparams` (default: the config's values)."""
    hp = rl_config.resolve(HParams, config, hparams)
    k_init, k_reset, k_updates, k_eval = jax.random.split(key, 4)
    params = network.init(k_init, jnp.zeros((1,) + env.obs_shape, jnp.float32))
    learner = Learner(params=params, target_params=params, opt_state=optimizer(hp).init(params))
    example = Experience(obs=jax.ShapeDtypeStruct(env.obs_shape, obs_dtype), action=jnp.zeros((), jnp.int32),
                         reward=jnp.zeros((), jnp.float32), next_obs=jax.ShapeDtypeStruct(env.obs_shape, obs_dtype),
                         terminated=jnp.zeros((), bool))
    runner = RunnerState(learner=learner, env=env.reset(k_reset), buffer=buffer_init(config.buffer_size, example))
    not_yet = jnp.full((config.num_evaluations, config.eval_episodes), jnp.nan, jnp.float32)
    evaluation = Evaluation(env_steps=jnp.zeros((config.num_evaluations,), jnp.int32), episode_return=not_yet,
                            discounted_return=not_yet, initial_value=not_yet)
    # Key data rather than typed keys: the carry is saved in checkpoints as plain arrays.
    return Carry(runner=runner, update_key=jax.random.key_data(k_updates), eval_key=jax.random.key_data(k_eval),
                 evaluation=evaluation)

  def advance(carry: Carry, first_update, length: int,
              hparams: HParams | None = None) -> tuple[Carry, UpdateMetrics]:
    """Runs `length` updates from update `first_update` on (and the evaluations they end); metrics (length,) each."""
    hp = rl_config.resolve(HParams, config, hparams)
    tx = optimizer(hp)
    k_updates = jax.random.wrap_key_data(carry.update_key)
    k_eval = jax.random.wrap_key_data(carry.eval_key)

    def loss_fn(params, target_params, batch: Experience) -> tuple[jax.Array, LossStats]:
      obs = batch.obs.astype(jnp.float32)
      next_obs = batch.next_obs.astype(jnp.float32)
      q = network.apply(params, obs)  # (B, A)
      q_taken = jnp.take_along_axis(q, batch.action[:, None], axis=-1)[:, 0]  # (B,)
      next_q_target = network.apply(target_params, next_obs)  # (B, A)
      next_q_online = network.apply(params, next_obs) if config.double_dqn else None
      targets = q_learning_target(batch.reward, batch.terminated, next_q_target, hp.gamma,
                                  None if next_q_online is None else jax.lax.stop_gradient(next_q_online))
      loss = td_loss(q_taken, targets, config.loss)
      no_health = jnp.zeros(())  # filled in by gradient_step
      return loss, LossStats(total_loss=loss, q_mean=q_taken.mean(), target_mean=targets.mean(),
                             grad_norm=no_health, param_norm=no_health, update_norm=no_health)

    def gradient_step(learner: Learner, batch: Experience) -> tuple[Learner, LossStats]:
      grads, stats = jax.grad(loss_fn, has_aux=True)(learner.params, learner.target_params, batch)
      params, opt_state, health = apply_gradients(tx, learner.params, learner.opt_state, grads)
      return learner._replace(params=params, opt_state=opt_state), stats._replace(**health)

    def learn(learner: Learner, buffer: ReplayBuffer, key: jax.Array) -> tuple[Learner, LossStats]:
      batches = jax.vmap(lambda k: buffer_sample(buffer, k, config.batch_size))(
          jax.random.split(key, config.gradient_steps))  # leaves (gradient_steps, batch_size, ...)
      learner, stats = jax.lax.scan(gradient_step, learner, batches)
      return learner, jax.tree.map(jnp.mean, stats)

    def skip(learner: Learner, buffer: ReplayBuffer, key: jax.Array) -> tuple[Learner, LossStats]:
      del buffer, key
      zero = jnp.zeros((), jnp.float32)
      return learner, LossStats(*([zero] * len(LossStats._fields)))

    def evaluate(evaluation: Evaluation, params, block: jax.Array) -> Evaluation:
      """`evaluation` with evaluation `block` written: greedy episodes of `params`."""
      greedy = lambda obs: jnp.argmax(network.apply(params, obs), axis=-1)
      episodes = rollout.greedy_returns(eval_env, greedy, jax.random.fold_in(k_eval, block), hp.gamma)
      initial_value = network.apply(params, episodes.initial_obs).max(axis=-1)  # (eval_episodes,)
      this = Evaluation(env_steps=(block + 1) * updates_per_evaluation * steps_per_update,
                        episode_return=episodes.episode_return, discounted_return=episodes.discounted_return,
                        initial_value=initial_value)
      return jax.tree.map(lambda every, new: every.at[block].set(new), evaluation, this)

    def update(carry: Carry, update_index: jax.Array) -> tuple[Carry, UpdateMetrics]:
      runner = carry.runner
      k_act, k_learn = jax.random.split(jax.random.fold_in(k_updates, update_index))
      eps = epsilon(update_index * steps_per_update, config.total_timesteps, hp)
      params = runner.learner.params
      policy = lambda obs, k: (epsilon_greedy(network.apply(params, obs), eps, k), None)
      env_state, traj = rollout.collect(env, policy, runner.env, jax.random.split(k_act, config.num_steps))
      flat = lambda x: x.reshape((steps_per_update,) + x.shape[2:])  # (num_steps, num_envs, ...) -> (N, ...)
      buffer = buffer_add(runner.buffer, Experience(obs=flat(traj.obs), action=flat(traj.action),
                                                    reward=flat(traj.reward), next_obs=flat(traj.next_obs),
                                                    terminated=flat(traj.terminated)))
      # The predicates depend on the update index only, never on a vmapped value: real branches under vmap.
      learner, stats = jax.lax.cond(update_index >= first_learning_update, learn, skip, runner.learner, buffer,
                                    k_learn)
      refresh = (update_index + 1) % config.target_update_period == 0
      tau = jnp.where(refresh, hp.tau, 0.0)
      learner = learner._replace(target_params=optax.incremental_update(learner.params, learner.target_params, tau))
      block, into_block = jnp.divmod(update_index + 1, updates_per_evaluation)
      evaluation = jax.lax.cond(into_block == 0, evaluate, lambda evaluation, *_: evaluation, carry.evaluation,
                                learner.params, block - 1)
      carry = carry._replace(runner=RunnerState(learner=learner, env=env_state, buffer=buffer), evaluation=evaluation)
      metrics = UpdateMetrics(env_steps=(update_index + 1) * steps_per_update,
                              **rollout.episode_metrics(traj)._asdict(), epsilon=eps,
                              learning_rate=learning_rate(hp, update_index), **stats._asdict())
      return carry, metrics

    return jax.lax.scan(update, carry, first_update + jnp.arange(length))  # global update numbers

  def output(carry: Carry, metrics: UpdateMetrics) -> TrainOutput:
    return TrainOutput(params=carry.runner.learner.params, metrics=metrics, evaluation=carry.evaluation)

  return ppo.Chunks(init=init, advance=advance, num_updates=n_updates, output=output)


def make_train(config) -> Callable[..., TrainOutput]:
  """Builds the pure training function for `config` (validated here, before any tracing).

  Args:
    config: an object with the attributes in CONFIG_FIELDS; closed over, never mutated.

  Returns:
    `train(key, hparams=None) -> TrainOutput`, jit- and vmap-able over `key` (a typed or raw
    PRNG key) and over `hparams` (an HParams of arrays): `make_chunks`' init and one chunk of
    every update.

  Raises:
    ConfigError: on a bad config, e.g. a buffer smaller than a batch.
  """
  chunks = make_chunks(config)

  def train(key: jax.Array, hparams: HParams | None = None) -> TrainOutput:
    """Runs the whole training; pure in `key` and `hparams` (default: the config's values)."""
    carry, metrics = chunks.advance(chunks.init(key, hparams), 0, chunks.num_updates, hparams)
    return chunks.output(carry, metrics)

  return train
