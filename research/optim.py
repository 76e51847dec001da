"""Optimizer factory: optax transformations built from `config.optimizer`.

Every optimizer is wrapped in `optax.inject_hyperparams`, so the peak learning rate,
weight decay and momentum live in the optimizer state as arrays: a sweep can vmap them
(see research/sweep.py) without recompiling. The schedule is a multiplier on the peak
learning rate, applied inside the chain, so a swept peak keeps its warmup + cosine shape.

Names:
  adam      Adam (Kingma & Ba).
  adamw     Adam with decoupled weight decay as optax and PyTorch define it: the decay is added
            to the Adam update, not to the gradient, and scaled by the learning rate with it:
            θ -= α η_t (m̂ / (√v̂ + ε) + λ θ).
  adamw_paper  Loshchilov & Hutter's AdamW (Algorithm 2, line 12): the decay is scaled by the
            schedule multiplier η_t only, not by α: θ -= η_t (α m̂ / (√v̂ + ε) + λ θ), so α and λ
            can be tuned independently (MosaicML Composer's DecoupledAdamW).
  adam_l2   Adam with L2 added to the gradient (the coupled form AdamW argues against).
  sgd       SGD with (optionally Nesterov) momentum.
  sgd_l2    SGD with momentum and L2 added to the gradient.
  sgdw      Loshchilov & Hutter's SGDW (Algorithm 1): θ -= η_t (α m + λ θ), the decay decoupled
            from the gradient and from α.
  rmsprop   RMSProp (used by WGAN with weight clipping).

Weight decay (every name with a decay) applies only to kernels (rank >= 2), never to biases
or normalisation scales, and to embeddings only with `decay_embeddings` (see `decay_mask`).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from research.checks import ConfigError, check_choice, check_positive

OPTIMIZERS = ("adam", "adamw", "adamw_paper", "adam_l2", "sgd", "sgd_l2", "sgdw", "rmsprop")
# The decay is scaled by the schedule multiplier only, not by the learning rate (Loshchilov & Hutter's form).
SCHEDULE_SCALED_DECAY = ("adamw_paper", "sgdw")
SCHEDULES = ("constant", "warmup_cosine")


def default_config() -> ml_collections.ConfigDict:
  """The `config.optimizer` block every experiment starts from."""
  config = ml_collections.ConfigDict()
  config.name = "adam"  # one of OPTIMIZERS
  config.learning_rate = 1e-3  # peak learning rate
  config.b1 = 0.9  # Adam beta1 (also the SGD momentum)
  config.b2 = 0.999  # Adam beta2 / RMSProp decay
  config.eps = 1e-8  # Adam / RMSProp epsilon
  config.weight_decay = 0.0  # adamw / adamw_paper / sgdw: decoupled decay; adam_l2 / sgd_l2: L2 coefficient
  config.nesterov = False  # sgd: Nesterov momentum
  config.schedule = "constant"  # one of SCHEDULES
  config.warmup_steps = 0  # warmup_cosine: linear warmup steps
  config.final_lr_fraction = 0.0  # warmup_cosine: final lr as a fraction of the peak
  config.grad_clip_norm = 0.0  # clip gradients to this global norm; 0 disables
  config.decay_embeddings = False  # adamw / adam_l2: also decay embedding tables (rank >= 2 kernels always)
  return config


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on a bad optimizer block."""
  check_choice("optimizer.name", config.name, OPTIMIZERS)
  check_choice("optimizer.schedule", config.schedule, SCHEDULES)
  check_positive("optimizer.learning_rate", config.learning_rate, allow_zero=True)
  check_positive("optimizer.weight_decay", config.weight_decay, allow_zero=True)
  check_positive("optimizer.grad_clip_norm", config.grad_clip_norm, allow_zero=True)
  check_positive("optimizer.warmup_steps", config.warmup_steps, allow_zero=True)
  for name in ("b1", "b2"):
    if not 0.0 <= config[name] < 1.0:
      raise ConfigError(f"optimizer.{name} must be in [0, 1), got {config[name]}")


def schedule(config: ml_collections.ConfigDict, total_steps: int) -> Callable:
  """The learning-rate multiplier as a function of the step (peak = 1)."""
  if config.schedule == "constant":
    return lambda step: jnp.ones_like(step, jnp.float32)
  decay_steps = max(total_steps - config.warmup_steps, 1)
  cosine = optax.cosine_decay_schedule(1.0, decay_steps, alpha=config.final_lr_fraction)
  warmup = optax.linear_schedule(0.0, 1.0, max(config.warmup_steps, 1))
  if config.warmup_steps == 0:
    return cosine
  return optax.join_schedules([warmup, cosine], [config.warmup_steps])


def _names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decay_mask(params, decay_embeddings: bool = False):
  """Which parameters weight decay applies to: arrays of rank >= 2 (kernels).

  Biases, LayerNorm/GroupNorm scales and other vectors are never decayed (as in nanoGPT and
  the BERT/GPT-2 recipes); embedding tables (a path component containing "embed", such as
  flax's `nn.Embed` parameter `embedding`) only when `decay_embeddings`.

  Returns:
    A tree of bools with the structure of `params`.
  """

  def decays(path, leaf):
    if jnp.ndim(leaf) < 2:
      return False
    return decay_embeddings or not any("embed" in name.lower() for name in _names(path))

  return jax.tree_util.tree_map_with_path(decays, params)


def make(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """Builds the optimizer named by `config.name`.

  Args:
    config: an optimizer block (see `default_config`).
    total_steps: the run's length, for the cosine schedule.

  Returns:
    An optax transformation whose state carries `hyperparams` (learning_rate,
    weight_decay, b1) as arrays.
  """
  check(config)
  multiplier = schedule(config, total_steps)
  mask = lambda params: decay_mask(params, config.decay_embeddings)

  def build(learning_rate, weight_decay, b1):
    parts = []
    if config.grad_clip_norm > 0:
      parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.name in ("adam_l2", "sgd_l2"):
      parts.append(optax.add_decayed_weights(weight_decay, mask))  # L2: decay enters the moments
    if config.name in ("adam", "adamw", "adamw_paper", "adam_l2"):
      parts.append(optax.scale_by_adam(b1=b1, b2=config.b2, eps=config.eps))
    elif config.name in ("sgd", "sgd_l2", "sgdw"):
      parts.append(optax.trace(decay=b1, nesterov=config.nesterov))
    elif config.name == "rmsprop":
      parts.append(optax.scale_by_rms(decay=config.b2, eps=config.eps))
    if config.name in SCHEDULE_SCALED_DECAY:
      # η_t (α u + λ θ): the rate scales the update before the decay joins it; the schedule scales both.
      parts += [optax.scale(learning_rate), optax.add_decayed_weights(weight_decay, mask),
                optax.scale_by_schedule(lambda count: -multiplier(count))]
      return optax.chain(*parts)
    if config.name == "adamw":
      parts.append(optax.add_decayed_weights(weight_decay, mask))  # decoupled: after Adam
    parts.append(optax.scale_by_schedule(lambda count: -learning_rate * multiplier(count)))
    return optax.chain(*parts)

  return optax.inject_hyperparams(build)(
      learning_rate=config.learning_rate, weight_decay=config.weight_decay, b1=config.b1)


def hyperparams(opt_state) -> dict:
  """The injected hyperparameters of an optimizer state (the first, for a dict of states)."""
  if isinstance(opt_state, dict):
    opt_state = next(iter(opt_state.values()))
  return opt_state.hyperparams


def learning_rate_fn(config: ml_collections.ConfigDict, total_steps: int) -> Callable:
  """`fn(opt_state, step)`: the learning rate the update at `step` applies, for a state of `make`.

  The peak (possibly swept) is read from the state's injected hyperparameters and scaled by
  the schedule; hand it to the Task as `learning_rate`, so the loop logs it without knowing
  this factory's state layout.
  """
  multiplier = schedule(config, total_steps)
  return lambda opt_state, step: hyperparams(opt_state)["learning_rate"] * multiplier(step)


def with_hyperparams(opt_state, overrides):
  """Returns `opt_state` with injected hyperparameters replaced (e.g. a swept learning rate).

  Args:
    opt_state: a state from `make` (or a dict of them, each updated).
    overrides: {name: value}; names must be injected hyperparameters.
  """
  if not overrides:
    return opt_state
  if isinstance(opt_state, dict):
    return {k: with_hyperparams(v, overrides) for k, v in opt_state.items()}
  unknown = set(overrides) - set(opt_state.hyperparams)
  if unknown:
    raise ValueError(f"cannot sweep {sorted(unknown)}; injected hyperparameters: {sorted(opt_state.hyperparams)}")
  hyper = dict(opt_state.hyperparams)
  for name, value in overrides.items():
    hyper[name] = jnp.asarray(value, jnp.asarray(hyper[name]).dtype)
  return opt_state._replace(hyperparams=hyper)
