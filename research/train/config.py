"""Config checks shared by every experiment, run before anything is compiled or written."""

from collections.abc import Iterable

import jax
import ml_collections


class ConfigError(ValueError):
  """A bad user input: reported as one line on stderr, with a non-zero exit."""


def check_choice(name: str, value, choices: Iterable) -> None:
  """Raises ConfigError unless `value` is one of `choices`."""
  choices = list(choices)
  if value not in choices:
    raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")


def check_positive(name: str, value, allow_zero: bool = False) -> None:
  """Raises ConfigError unless `value` > 0 (or >= 0 with allow_zero)."""
  if value < 0 or (value == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"{name} must be {bound}, got {value}")


def check_common(config: ml_collections.ConfigDict) -> None:
  """Checks the fields every gradient-trained experiment shares.

  Args:
    config: an experiment config with seed, steps, batch_size, optimizer,
      checkpoint_every, log_every and ema_decay.

  Raises:
    ConfigError: on the first bad field.
  """
  check_positive("steps", config.steps, allow_zero=True)
  check_positive("batch_size", config.batch_size)
  n = jax.device_count()
  if config.batch_size % n:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the device count {n}")
  from research import optim  # pylint: disable=import-outside-toplevel
  from research import data  # pylint: disable=import-outside-toplevel
  try:
    data.check_name(config.dataset)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  optim.check(config.optimizer)
  check_positive("checkpoint_every", config.checkpoint_every)
  check_positive("log_every", config.log_every)
  check_positive("keep_checkpoints", config.keep_checkpoints)
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f"ema_decay must be in [0, 1), got {config.ema_decay}")


def base_config() -> ml_collections.ConfigDict:
  """The fields every gradient-trained experiment shares; experiments add their own."""
  from research import optim  # pylint: disable=import-outside-toplevel

  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds parameter init, data order and every per-step key
  config.steps = 1000  # number of optimizer updates
  config.batch_size = 64  # global batch size (split over all devices)
  config.dataset = "digits"  # a name known to research.data
  config.optimizer = optim.default_config()  # see research/optim.py
  config.checkpoint_every = 500  # save a checkpoint every this many steps (and at the end)
  config.keep_checkpoints = 3  # keep the newest this many checkpoints
  config.log_every = 100  # write metrics and a progress line every this many steps
  config.ema_decay = 0.0  # decay of the parameter EMA; 0 disables it
  return config
