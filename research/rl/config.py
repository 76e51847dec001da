"""The hyperparameter convention of the deep RL scans (PPO, A2C, DQN) and their shared config checks.

Each algorithm's `make_train(config)` fixes what shapes the program (sizes, environment,
network, switches) and returns `train(key, hparams=None)`. `hparams` is the algorithm's
`HParams` NamedTuple of float32 arrays, named as config fields: the values a sweep may vary
in one compiled program (`jax.vmap` over hparams as over keys). Left out, they are the
config's own values:

    hparams = default_hparams(PPOHParams, config)    # float32 scalars from config fields
    hp = resolve(PPOHParams, config, hparams)       # inside train: hparams, or the defaults

An experiment exposes `sorted(HParams._fields)` to `python -m experiments.sweep` as its
traced fields (research.train.member_configs).
"""

from typing import NamedTuple, TypeVar

import jax.numpy as jnp
import numpy as np

from research.checks import ConfigError, check_positive

H = TypeVar("H", bound=NamedTuple)


def default_hparams(cls: type[H], config) -> H:
  """The config's values of `cls`'s fields, as float32 scalars."""
  return cls(*(jnp.asarray(config[name], jnp.float32) for name in cls._fields))


def resolve(cls: type[H], config, hparams: H | None) -> H:
  """`hparams` as float32 arrays, or the config's values when None."""
  if hparams is None:
    return default_hparams(cls, config)
  return cls(*(jnp.asarray(h, jnp.float32) for h in hparams))


def check_integers(config, names) -> None:
  """ConfigError unless each named field is a positive integer (not a bool)."""
  for name in names:
    value = getattr(config, name)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise ConfigError(f"{name} must be an integer, got {value!r}")
    check_positive(name, value)


def check_unit_interval(config, names) -> None:
  """ConfigError unless each named field is in [0, 1]."""
  for name in names:
    value = getattr(config, name)
    if not 0.0 <= value <= 1.0:
      raise ConfigError(f"{name} must be in [0, 1], got {value}")


def add_chunk_fields(config, updates_per_chunk: int, checkpoint_every: int, keep_checkpoints: int = 2) -> None:
  """Adds the fields of a run driven a chunk of updates at a time (research/rl/experiment.py)."""
  # Updates per compiled call: a progress line after each, and a stop on SIGINT/SIGTERM at its end; 0: one call.
  config.updates_per_chunk = updates_per_chunk
  # Save the run (to resume it) at the first chunk end on or after every this many updates; 0: never (but on a stop).
  config.checkpoint_every = checkpoint_every
  config.keep_checkpoints = keep_checkpoints  # keep the newest this many checkpoints


def check_chunk_fields(config) -> None:
  """ConfigError unless updates_per_chunk and checkpoint_every are integers >= 0 and keep_checkpoints >= 1."""
  for name in ("updates_per_chunk", "checkpoint_every"):
    value = getattr(config, name)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
      raise ConfigError(f"{name} must be an integer >= 0 (0: {'one chunk' if name == 'updates_per_chunk' else 'never'}),"
                        f" got {value!r}")
  check_integers(config, ("keep_checkpoints",))
