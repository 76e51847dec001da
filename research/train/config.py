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
  check_positive("optimizer.learning_rate", config.optimizer.learning_rate, allow_zero=True)
  check_positive("checkpoint_every", config.checkpoint_every)
  check_positive("log_every", config.log_every)
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f"ema_decay must be in [0, 1), got {config.ema_decay}")
