"""Train state and the update step the loop (and research/sweep.py) compiles."""

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax
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
    params: model parameters (a dict of groups for multi-optimizer tasks).
    opt_state: optimizer state (a dict of states, one per group, likewise).
    ema_params: exponential moving average of params, or None when ema_decay is 0.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None


def init_opt_state(tx, params):
  """Optimizer state for `params`; one state per group when `tx` is a mapping."""
  if isinstance(tx, Mapping):
    return {name: tx[name].init(params[name]) for name in tx}
  return tx.init(params)


def init_state(task: Task, key: jax.Array, batch, ema_decay: float) -> TrainState:
  """The state at step 0."""
  params = task.init(key, batch)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=init_opt_state(task.tx, params),
                    ema_params=params if ema_decay > 0 else None)


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


def make_train_step(task: Task, ema_decay: float):
  """Returns `step(state, batch, key) -> (state, metrics)` for `task`.

  Tasks with a `loss` get the default step: differentiate, update with `task.tx`.
  Tasks with their own `train_step` use it. Both then update the EMA and advance `step`.
  """

  def default_step(state: TrainState, batch, key):
    def loss_fn(params):
      return task.loss(params, batch, key, True)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state, health = apply_gradients(task.tx, state.params, state.opt_state, grads)
    return state.replace(params=params, opt_state=opt_state), {"loss": loss, **metrics, **health}

  inner = task.train_step if task.train_step is not None else default_step

  def step(state: TrainState, batch, key):
    new_state, metrics = inner(state, batch, key)
    if ema_decay > 0:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, new_state.params)
      new_state = new_state.replace(ema_params=ema)
    return new_state.replace(step=state.step + 1), metrics

  return step


def eval_params(state: TrainState):
  """The parameters to evaluate and sample with: the EMA when there is one."""
  return state.ema_params if state.ema_params is not None else state.params
