"""Dropout whose rate may be a traced scalar, and dense layers that flatten their leading axes.

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

  Dense, DenseGeneral   flax's layers (same parameters, names and values) applied to the
            inputs' leading axes flattened into one. For activations (B, T, E), flax contracts
            the kernel's gradient over two axes, (B, T), and XLA:CPU then copies a transpose of
            the cotangent and runs the product at about half speed (a (16, 256, 384) x (384,
            1536) layer: 58 ms forward and backward against 30 ms flattened, on 2 cores); one
            flattened axis gives a plain matrix product in both directions.
  DenseParams, dense_group   the kernels and biases of several DenseGeneral projections of one
            input (each `DenseParams(features, name=n)` creates exactly the parameters of
            `DenseGeneral(features, name=n)`) applied as one matrix product: the DiT's query,
            key and value projections as one (E, 3, H, D) product, whose backward is one product
            for the input's gradient rather than three and their sum (3% faster DiT-XS/2
            training steps on 2 cores; at GPT-2's 384 width the stacked product is slower, and
            its attention keeps three).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta


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


class Dense(nn.Dense):
  """`nn.Dense` over the last axis with every leading axis flattened into one (see the module doc)."""

  def __call__(self, inputs):
    lead = inputs.shape[:-1]
    out = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return out.reshape(*lead, out.shape[-1])


class DenseGeneral(nn.DenseGeneral):
  """`nn.DenseGeneral` whose contracted axes are the last ones, with the leading axes flattened into one.

  The contracted axes are given as negative numbers (-1, or (-2, -1)); batch axes (`batch_dims`)
  are not supported.
  """

  def __call__(self, inputs):
    axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    n = len(axes)
    if self.batch_dims or any(a >= 0 for a in axes) or sorted(axes) != list(range(-n, 0)):
      raise ValueError(f"layers.DenseGeneral contracts the trailing axes, given as negative numbers; got "
                       f"axis={self.axis}, batch_dims={self.batch_dims}")
    lead = inputs.shape[:inputs.ndim - n]
    out = super().__call__(inputs.reshape(-1, *inputs.shape[inputs.ndim - n:]))
    return out.reshape(*lead, *out.shape[1:])


def _reshaped_init(init, flat_shape):
  """`init` drawn at `flat_shape` and reshaped to the parameter's shape, as nn.DenseGeneral does."""

  def wrapped(key, shape, dtype=jnp.float32):
    value = init(key, flat_shape, dtype)
    if isinstance(value, meta.AxisMetadata):
      return meta.replace_boxed(value, jnp.reshape(value.unbox(), shape))
    return jnp.reshape(value, shape)

  return wrapped


class DenseParams(nn.Module):
  """The kernel (E, *features) and bias (*features) of `DenseGeneral(features)` over the last axis.

  Same parameter names, shapes and initial values as that layer under the same name; called
  with the input width E, it returns (kernel, bias) for `dense_group` instead of applying them.
  """

  features: tuple[int, ...]
  use_bias: bool = True
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, in_features: int):
    size = int(np.prod(self.features))
    kernel = self.param("kernel", _reshaped_init(self.kernel_init, (in_features, size)),
                        (in_features,) + tuple(self.features), self.param_dtype)
    bias = self.param("bias", _reshaped_init(self.bias_init, (size,)), tuple(self.features),
                      self.param_dtype) if self.use_bias else None
    return kernel, bias


def dense_group(x, params, dtype=None) -> list:
  """x (..., E) through each (kernel (E, *f), bias) of `params`: [x K_i + b_i], one product per run of equal shapes.

  Consecutive projections with equal kernel shapes are stacked on a new axis after E, (E, n,
  *f), which keeps any sharding of the feature axes, and contracted with the input's leading
  axes flattened (see `Dense`). Values equal separate `DenseGeneral` layers' up to float
  rounding; dtypes are promoted as flax promotes them (to `dtype` when given).
  """
  lead, width = x.shape[:-1], x.shape[-1]
  rows = x.reshape(-1, width)
  outs, i = [], 0
  while i < len(params):
    j = i + 1
    while j < len(params) and params[j][0].shape == params[i][0].shape and \
        (params[j][1] is None) == (params[i][1] is None):
      j += 1
    group = params[i:j]
    kernel = jnp.stack([k for k, _ in group], axis=1)  # (E, n, *f)
    bias = None if group[0][1] is None else jnp.stack([b for _, b in group])  # (n, *f)
    inputs, kernel, bias = nn.dtypes.promote_dtype(rows, kernel, bias, dtype=dtype)
    y = jax.lax.dot_general(inputs, kernel, (((1,), (0,)), ((), ())))  # (N, n, *f)
    if bias is not None:
      y = y + bias
    outs += [y[:, m].reshape(lead + y.shape[2:]) for m in range(j - i)]
    i = j
  return outs
