"""Config checks shared by every experiment, run before anything is compiled or written."""

import jax
import ml_collections

from research import optim
from research.checks import ConfigError, check_choice, check_positive  # re-exported


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
