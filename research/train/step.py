"""Train state and the update step the loop (and research/sweep.py) compiles."""

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.train.task import Task


class Keys(NamedTuple):
  """Named sub-streams of the run's seed: init, per-step training, evaluation."""

  init: jax.Array
  train: jax.Array
  eval: jax.Array

  @classmethod
  def from_seed(cls, seed: int) -> "Keys":
    k_init, k_train, k_eval = jax.random.split(jax.random.key(seed), 3)
    return cls(k_init, k_train, k_eval)


@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step; nothing hidden.

  Attributes:
    step: number of completed updates.
    params: model parameters (a dict of groups for multi-optimizer tasks), float32.
    opt_state: optimizer state (a dict of states, one per group, likewise).
    ema_params: exponential moving average of params, or None when ema_decay is 0.
    extra: state that is carried, sharded and checkpointed but not trained by the
      optimizer (batch statistics; a frozen reference or reward model), or None.
    hparams: {name: float32 scalar}, the task's traced hyperparameters (Task.hparams), or
      None; a sweep's members each carry their own values.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None
  extra: Any = None
  hparams: Any = None


def init_opt_state(tx, params):
  """Optimizer state for `params`; one state per group when `tx` is a mapping."""
  if isinstance(tx, Mapping):
    return {name: tx[name].init(params[name]) for name in tx}
  return tx.init(params)


def _as_float32(tree):
  # Parameters (and so optimizer state) are kept in float32 whatever the compute dtype.
  return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def init_params(task: Task, key: jax.Array, batch):
  """The task's parameters as `init` returns them (with any nn.Partitioned boxes), float32."""
  return _as_float32(task.init(key, batch))


def init_state(task: Task, key: jax.Array, batch, ema_decay: float, params=None) -> TrainState:
  """The state at step 0.

  Args:
    task: the model family's plug-in.
    key: the init key; `task.init_extra` gets a key folded from it.
    batch: one (global) batch, for shapes.
    ema_decay: > 0 keeps an EMA of the parameters.
    params: the unboxed parameters, if already made (default: `task.init(key, batch)`).
  """
  if params is None:
    params = nn.unbox(init_params(task, key, batch))
  extra = task.init_extra(jax.random.fold_in(key, 1), batch) if task.init_extra is not None else None
  hparams = {name: jnp.asarray(value, jnp.float32) for name, value in task.hparams.items()} \
      if task.hparams is not None else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=init_opt_state(task.tx, params),
                    ema_params=params if ema_decay > 0 else None, extra=extra, hparams=hparams)


def apply_gradients(tx: optax.GradientTransformation, params, opt_state, grads):
  """One optimizer update, with health metrics.

  Returns:
    (new_params, new_opt_state, {'grad_norm', 'param_norm', 'update_norm'}).
  """
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  health = {"grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
            "update_norm": optax.tree.norm(updates)}
  return params, opt_state, health


def accumulate_gradients(loss_fn, params, batch, key, microbatches: int):
  """Value and gradient of `loss_fn(params, batch, key) -> (scalar, metrics)`, over microbatches.

  The batch is split into `microbatches` equal parts along its leading axis; their losses,
  metrics and gradients are averaged inside a `lax.scan`, so only one microbatch's
  activations are live at a time and the update equals the whole batch's (for a loss that
  is a mean over examples). Microbatch i uses the key `fold_in(key, i)`; with one
  microbatch the key is used as it is.

  Returns:
    ((loss, metrics), grads) as `jax.value_and_grad(..., has_aux=True)` returns them.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    return grad_fn(params, batch, key)
  split = jax.tree.map(lambda x: x.reshape((microbatches, x.shape[0] // microbatches) + x.shape[1:]), batch)

  def body(total, xs):
    micro, i = xs
    out = grad_fn(params, micro, jax.random.fold_in(key, i))
    return jax.tree.map(jnp.add, total, out), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], split), key))
  total, _ = jax.lax.scan(body, zeros, (split, jnp.arange(microbatches)))
  return jax.tree.map(lambda x: x / microbatches, total)


def ema_warmup(decay, step):
  """The EMA's decay at update `step` (0-based): min(decay, (1 + step) / (10 + step)).

  The EMA starts at the initial parameters; a fixed decay d keeps d^T of them after T updates
  (5% for 0.999 over 3000 steps: enough random weights to leave speckle in a diffusion model's
  samples and blobs in a GAN's). Warming the decay up as TensorFlow's ExponentialMovingAverage
  does with `num_updates` leaves prod_t (1 + t)/(10 + t) ~ (10/T)^9 of them, and averages over
  the last part of training until d is reached.
  """
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_train_step(task: Task, ema_decay: float, grad_accum: int = 1):
  """Returns `step(state, batch, key) -> (state, metrics)` for `task`.

  Tasks with a `loss` get the default step: differentiate (over `grad_accum` microbatches),
  update with `task.tx`. Tasks with their own `train_step` use it. Both then update the
  EMA, log the learning rate (when the task says how to read it) and advance `step`.
  """

  def default_step(state: TrainState, batch, key):
    def loss_fn(params, micro, k):
      return task.loss(params, micro, k, True, task.traced(state.hparams))

    (loss, metrics), grads = accumulate_gradients(loss_fn, state.params, batch, key, grad_accum)
    params, opt_state, health = apply_gradients(task.tx, state.params, state.opt_state, grads)
    return state.replace(params=params, opt_state=opt_state), {"loss": loss, **metrics, **health}

  inner = task.train_step if task.train_step is not None else default_step

  def step(state: TrainState, batch, key):
    new_state, metrics = inner(state, batch, key)
    if task.learning_rate is not None:
      metrics = {**metrics, "learning_rate": task.learning_rate(state.opt_state, state.step)}
    if ema_decay > 0:
      # A sweep over the decay carries each member's in hparams (research.train.loop's EMA_DECAY).
      decay = state.hparams.get("ema_decay", ema_decay) if state.hparams is not None else ema_decay
      decay = ema_warmup(decay, state.step)
      ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, new_state.params)
      new_state = new_state.replace(ema_params=ema)
    return new_state.replace(step=state.step + 1), metrics

  return step


def make_multi_step(step, train_key: jax.Array):
  """`multi(state, batches) -> (state, metrics)`: len(batches) steps of `step` as one `lax.scan`.

  `batches` leaves are stacked (steps, batch, ...); step s uses `fold_in(train_key, s)`, as
  in the one-step program, and the metrics come back stacked (steps,).
  """

  def multi(state: TrainState, batches):
    def body(state, batch):
      return step(state, batch, jax.random.fold_in(train_key, state.step))

    return jax.lax.scan(body, state, batches)

  return multi


def eval_params(state: TrainState):
  """The parameters to evaluate and sample with: the EMA when there is one."""
  return state.ema_params if state.ema_params is not None else state.params
