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
            training steps on 2 cores; at GPT-2's 384 width the stacked product is slower on
            CPUs, where the shared attention takes three; see research/models/attention.py).

A transformer's stack of blocks, and what every model file shares:

  blocks    `count` blocks in a Python loop (parameters `<name>_<i>`) or as one `nn.scan`
            (`scan=True`: parameters `<name>` with a leading "layers" axis, one block compiled),
            each optionally under `nn.remat` ("block": keep only its input for the backward
            pass; "dots": keep its matrix products' outputs, `checkpoint_dots`).
  stack_blocks, unstack_blocks   the two parameter layouts into each other.
  unrolled_block_scans   within it, `blocks(scan=True)` traces its scan fully unrolled (the
            same parameters and numbers), so that XLA's cost analysis, which counts a loop's
            body once, counts every block: research.train counts a step's FLOPs under it.
  ACTIVATION_*   logical names of activation axes, for `nn.with_logical_constraint`; the
            rules of research/train/parallel.py map them to mesh axes (a no-op when traced
            outside `nn.logical_axis_rules` and a mesh).
  count_params   parameters of a module from shapes alone.
  on_cpu    whether programs are compiled for CPUs: the one test of a CPU-only workaround.
"""

import contextlib
import contextvars
import math
from collections.abc import Callable, Sequence
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
  are not supported. Parameters, initial values and arithmetic are flax's; the parameters are
  created as `DenseParams` creates them, which also works when traced under `jax.set_mesh`
  (flax's own reshape of a logically partitioned initial value applies the parameter's sharding
  to the flat draw, of another rank, and fails there).
  """

  @nn.compact
  def __call__(self, inputs):
    axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    n = len(axes)
    if self.batch_dims or any(a >= 0 for a in axes) or sorted(axes) != list(range(-n, 0)):
      raise ValueError(f"layers.DenseGeneral contracts the trailing axes, given as negative numbers; got "
                       f"axis={self.axis}, batch_dims={self.batch_dims}")
    lead, contracted = inputs.shape[:inputs.ndim - n], inputs.shape[inputs.ndim - n:]
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    size = int(np.prod(features))
    kernel = self.param("kernel", _reshaped_init(self.kernel_init, (int(np.prod(contracted)), size)),
                        contracted + features, self.param_dtype)
    bias = self.param("bias", _reshaped_init(self.bias_init, (size,)), features,
                      self.param_dtype) if self.use_bias else None
    rows, kernel, bias = nn.dtypes.promote_dtype(inputs.reshape(-1, *contracted), kernel, bias, dtype=self.dtype)
    out = jax.lax.dot_general(rows, kernel, ((tuple(range(1, n + 1)), tuple(range(n))), ((), ())),
                              precision=self.precision)  # (N, *features)
    if bias is not None:
      out = out + jnp.reshape(bias, (1,) + features)
    return out.reshape(*lead, *features)


def _reshaped_init(init, flat_shape):
  """`init` drawn at `flat_shape` and reshaped to the parameter's shape, as nn.DenseGeneral does.

  A boxed (logically partitioned) draw is reshaped inside its box, without the sharding
  constraint that unboxing applies under a mesh: the names are the parameter's, not the draw's.
  """

  def wrapped(key, shape, dtype=jnp.float32):
    value = init(key, flat_shape, dtype)
    if isinstance(value, meta.Partitioned):
      return value.replace_boxed(jnp.reshape(value.unbox(apply_constraint=False), shape))
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


# ---------------------------------------------------------------------------------------
# Stacks of blocks.

REMATS = ("none", "block", "dots")
_REMAT_POLICIES = {"block": None, "dots": jax.checkpoint_policies.checkpoint_dots}
# Logical names of activation axes (research/train/parallel.py maps them to mesh axes).
ACTIVATION_EMBED = ("activation_batch", "activation_length", "activation_embed")  # (B, T, E)
ACTIVATION_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")  # (B, T, H, D)
ACTIVATION_MLP = ("activation_batch", "activation_length", "activation_mlp")  # (B, T, hidden)


def on_cpu() -> bool:
  """Whether programs are compiled for CPUs (jax's default backend): the test of every CPU-only workaround."""
  return jax.default_backend() == "cpu"


def check_stacking(scan_layers, remat) -> None:
  """Raises ValueError unless scan_layers is a bool and remat one of REMATS."""
  if not isinstance(scan_layers, bool):
    raise ValueError(f"scan_layers must be True or False, got {scan_layers!r}")
  if remat not in REMATS:
    raise ValueError(f"unknown remat {remat!r}; choose one of: {', '.join(REMATS)}")


class _Block(nn.Module):
  """One block in this module's own scope (named as the block), with the call's other arguments bound."""

  make: Callable[[], nn.Module]
  kwargs: dict

  @nn.compact
  def __call__(self, x, layer_input):
    block = self.make()
    nn.share_scope(self, block)  # the block's parameters are this module's: <name>/...
    return block(nn.with_logical_constraint(x, ACTIVATION_EMBED), layer_input, **self.kwargs)


_UNROLL_BLOCK_SCANS = contextvars.ContextVar("unroll_block_scans", default=False)


@contextlib.contextmanager
def unrolled_block_scans():
  """Traces `blocks(scan=True)` unrolled within: for counting FLOPs only (the program grows with the blocks)."""
  token = _UNROLL_BLOCK_SCANS.set(True)
  try:
    yield
  finally:
    _UNROLL_BLOCK_SCANS.reset(token)


def blocks(make: Callable[[], nn.Module], count: int, x, per_layer=None, *, name: str, scan: bool = False,
           remat: str = "none", **kwargs):
  """x through `count` blocks `make()`, each called as `block(x, its input, **kwargs) -> (x, its output)`.

  Call inside a compact `__call__`: the blocks are that module's children. Every block's input
  x is constrained to ACTIVATION_EMBED.

  Args:
    make: builds one (unnamed) block module.
    count: the number of blocks.
    x: (B, T, E), carried from block to block.
    per_layer: each block's own input (e.g. its KV cache): a list of `count` (Python loop) or
      a pytree with a leading axis of `count` (scan); None: no input.
    name: the blocks' parameters are `<name>_<i>` (Python loop) or `<name>` (scan).
    scan: one `nn.scan` over the blocks: parameters gain a leading "layers" axis, and the
      program holds one block, compiled once.
    remat: one of REMATS.
    **kwargs: the same for every block (masks, flags, rates).

  Returns:
    (x, the blocks' outputs: a list, or stacked on a leading axis under scan).
  """
  check_stacking(scan, remat)
  block = _Block if remat == "none" else nn.remat(_Block, policy=_REMAT_POLICIES[remat], prevent_cse=not scan)
  if scan:
    stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True}, length=count,
                    metadata_params={nn.PARTITION_NAME: "layers"},
                    unroll=count if _UNROLL_BLOCK_SCANS.get() else 1)
    return stack(make, kwargs, name=name)(x, per_layer)
  outs = []
  for i in range(count):
    x, out = block(make, kwargs, name=f"{name}_{i}")(x, None if per_layer is None else per_layer[i])
    outs.append(out)
  return x, outs


def stack_blocks(params: dict, name: str, count: int) -> dict:
  """Unboxed parameters with blocks `<name>_0` .. `<name>_<count-1>` -> one `<name>` stacked on a leading axis.

  The Python loop's layout into scan's (see `blocks`); the other entries are kept.

  Raises:
    ValueError: when a block is missing.
  """
  names = [f"{name}_{i}" for i in range(count)]
  missing = [n for n in names if n not in params]
  if missing:
    raise ValueError(f"cannot stack {count} blocks: {missing[0]} is missing (have: {', '.join(sorted(params))})")
  out = {k: v for k, v in params.items() if k not in names}
  out[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[n] for n in names])
  return out


def unstack_blocks(params: dict, name: str) -> dict:
  """The inverse of `stack_blocks`: `<name>` stacked on a leading axis -> `<name>_0`, `<name>_1`, ..."""
  if name not in params:
    raise ValueError(f"no stacked blocks {name!r} to unstack (have: {', '.join(sorted(params))})")
  count = jax.tree.leaves(params[name])[0].shape[0]
  out = {k: v for k, v in params.items() if k != name}
  out.update({f"{name}_{i}": jax.tree.map(lambda x, i=i: x[i], params[name]) for i in range(count)})
  return out


def count_params(model: nn.Module, *inputs, skip: Sequence[str] = ()) -> int:
  """Parameters of `model.init(key, *inputs)` from shapes alone (`jax.eval_shape`: nothing is allocated).

  Args:
    model: a linen module.
    *inputs: example inputs (arrays or jax.ShapeDtypeStruct).
    skip: parameter names (the last key of a path, e.g. "embedding") not counted.
  """
  shapes = jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *inputs)
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(shapes))[0]
  return sum(math.prod(leaf.shape) for path, leaf in flat if str(getattr(path[-1], "key", path[-1])) not in skip)
