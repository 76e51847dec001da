"""Dropout whose rate may be a traced scalar, so one compiled program serves every rate of a sweep.

flax's `nn.Dropout` branches in Python on `rate == 0`, so its rate must be a Python float fixed
at trace time. Here the rate may also be a traced float32 scalar (a Task's `hparams`, one value
per member of a vmapped sweep):

  dropout   the function: inverted dropout of an array with a given key.
  Dropout   the linen module: its key from the module's 'dropout' stream, its rate an attribute
            that a call may override (`Dropout(0.1)(x, train, rate=hparams["dropout"])`).

A Python rate of 0 costs nothing; a traced rate goes through `lax.cond(rate > 0, ...)`, so a
single run at rate 0 draws no random bits (under `jax.vmap` with one rate per member the cond
becomes a select and every member's bits are drawn). For a Python rate the bits are those of
`nn.Dropout` under the same module name and key.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def is_static_zero(rate) -> bool:
  """True when `rate` is a Python number equal to 0: dropout is off and nothing is traced for it."""
  return isinstance(rate, (int, float)) and rate == 0


def _drop(x, rate, key):
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(key, keep_prob, x.shape)
  # A Python scale keeps x's dtype as nn.Dropout does; a traced one is cast to it.
  scale = keep_prob if isinstance(keep_prob, float) else jnp.asarray(keep_prob, x.dtype)
  return jax.lax.select(keep, x / scale, jnp.zeros_like(x))


def dropout(x, rate, key):
  """Zeroes each element of x with probability `rate` and scales the rest by 1 / (1 - rate).

  Args:
    x: any array.
    rate: the drop probability in [0, 1): a Python float, or a traced scalar.
    key: the random key of the mask.

  Returns:
    An array like x whose expected value is x.
  """
  if isinstance(rate, (int, float)):
    return x if rate == 0 else _drop(x, float(rate), key)
  return jax.lax.cond(rate > 0, lambda x: _drop(x, rate, key), lambda x: x, x)


class Dropout(nn.Module):
  """Dropout in training, the identity otherwise (needs rngs={'dropout'} when it drops).

  Attributes:
    rate: the rate used unless a call passes its own.
  """

  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool, rate=None):
    """x, with dropout at `rate` (default: the attribute's) when `train`; rate may be traced."""
    rate = self.rate if rate is None else rate
    if not train or is_static_zero(rate):
      return x
    return dropout(x, rate, self.make_rng("dropout"))
