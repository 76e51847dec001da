"""Input checks shared by the library and the experiments, with the one error type for bad input.

Both research/optim.py and research/train/ import this module (and nothing else of each
other's) for their checks, so neither depends on the other to validate a config.
"""

from collections.abc import Iterable


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
