"""The device mesh and shardings: data, FSDP and tensor parallelism from logical axis names.

The mesh has three axes, sized by `config.mesh` (-1 = the devices left over):
  data    the batch is split over it; parameters are replicated along it.
  fsdp    the batch is split over it too, and parameters and optimizer state are sharded
          over it (ZeRO-3 / FSDP): each device holds 1/fsdp of every large array.
  tensor  attention heads and MLP hidden units are split over it (Megatron-style).

Modules name their parameters' axes (`nn.with_logical_partitioning(init, ("embed", "mlp"))`)
and RULES map the names to mesh axes, as maxtext and big_vision do: moving from FSDP to
tensor parallelism is a change of mesh sizes, not of any layer. Parameters without names
(the small MLPs and convs) are sharded over `fsdp` along their largest divisible axis.
The same code runs on 1 device, N (real or simulated) devices and several processes.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research.checks import ConfigError

DATA_AXIS, FSDP_AXIS, TENSOR_AXIS = "data", "fsdp", "tensor"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
# The batch axis is split over every axis that does not split the model's features.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Logical axis name -> mesh axis (or None: replicated). The first rule naming a logical axis wins.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", FSDP_AXIS),  # the model width: FSDP shards parameters along it
    ("vocab", TENSOR_AXIS),
    ("heads", TENSOR_AXIS),
    ("kv_heads", TENSOR_AXIS),
    ("mlp", TENSOR_AXIS),
    ("head_dim", None),
    ("length", None),
    ("layers", None),
    # Activations (research/models/layers.py's ACTIVATION_*): the batch split like the data, heads
    # and MLP units like their parameters; the residual stream's width is whole on every device.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", TENSOR_AXIS),
    ("activation_kv", None),
    ("activation_mlp", TENSOR_AXIS),
)
# Unnamed arrays smaller than this stay replicated: sharding them saves nothing worth a collective.
MIN_SHARDED_SIZE = 1024


def mesh_shape(config_mesh, device_count: int | None = None) -> dict[str, int]:
  """Resolves `config.mesh` ({data, fsdp, tensor} sizes, one of them may be -1) for the devices.

  Raises:
    ConfigError: if the sizes do not multiply to the device count.
  """
  n = jax.device_count() if device_count is None else device_count
  sizes = {axis: int(config_mesh[axis]) for axis in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  bad = [a for a, s in sizes.items() if s == 0 or s < -1]
  if bad or len(free) > 1:
    raise ConfigError(f"mesh sizes must be positive, with at most one -1 (the rest); got {sizes}")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if n % fixed:
      raise ConfigError(f"mesh {sizes} does not fit {n} devices: {n} is not divisible by {fixed}")
    sizes[free[0]] = n // fixed
  if math.prod(sizes.values()) != n:
    raise ConfigError(f"mesh {sizes} has {math.prod(sizes.values())} devices but there are {n}")
  return sizes


def make_mesh(config_mesh=None) -> Mesh:
  """The (data, fsdp, tensor) mesh over every device of every process (default: all on data)."""
  sizes = mesh_shape(config_mesh or {DATA_AXIS: -1, FSDP_AXIS: 1, TENSOR_AXIS: 1})
  shape = tuple(sizes[a] for a in MESH_AXES)
  try:
    devices = jax.experimental.mesh_utils.create_device_mesh(shape, jax.devices())
  except Exception:  # pylint: disable=broad-except
    devices = np.asarray(jax.devices()).reshape(shape)  # topologies mesh_utils does not know (CPU)
  return Mesh(devices, MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """The batch axis split over data x fsdp, after `leading_axes` unsplit axes (stacked steps)."""
  return NamedSharding(mesh, P(*([None] * leading_axes), BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _path(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _fsdp_spec(shape: Sequence[int], fsdp: int) -> P:
  """Shards an unnamed array's largest axis divisible by `fsdp` over fsdp (replicated if none)."""
  if fsdp == 1 or math.prod(shape) < MIN_SHARDED_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      return P(*([None] * axis), FSDP_AXIS)
  return P()


def _valid(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes from `spec` where they do not divide the array's dimension."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if names and dim % size == 0 else None)
  return P(*out)


def param_shardings(boxed_abstract, mesh: Mesh, rules: Sequence = RULES):
  """Shardings for a parameter tree as `init` returns it (possibly with nn.Partitioned boxes).

  Named axes follow `rules`; unnamed arrays get the FSDP rule of `_fsdp_spec`.
  """
  logical = nn.get_partition_spec(boxed_abstract)  # P of logical names, or P() where unnamed
  unboxed = nn.unbox(boxed_abstract)
  with nn.logical_axis_rules(rules):
    mesh_specs = nn.logical_to_mesh(logical)

  def one(spec, leaf, logical_spec):
    if not tuple(logical_spec):
      spec = _fsdp_spec(leaf.shape, mesh.shape[FSDP_AXIS])
    return NamedSharding(mesh, _valid(spec, leaf.shape, mesh))

  return jax.tree.map(one, mesh_specs, unboxed, logical, is_leaf=lambda x: isinstance(x, P))


def like_params(tree, params, shardings, mesh: Mesh):
  """Shardings for a tree that holds copies of `params` (optimizer moments, EMA, accumulators).

  A leaf gets the sharding of the parameter whose path is the longest suffix of its own
  path and whose shape matches; any other leaf (counts, injected hyperparameters) is
  replicated. This reads no optimizer's layout: it works for any optax transformation.
  """
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  by_path = {_path(p): (leaf.shape, sh) for (p, leaf), sh in zip(flat_params, flat_shardings)}

  def one(path, leaf):
    names = _path(path)
    for i in range(len(names)):
      match = by_path.get(names[i:])
      if match is not None and tuple(match[0]) == tuple(np.shape(leaf)):
        return match[1]
    return NamedSharding(mesh, _fsdp_spec(np.shape(leaf), 1))

  return jax.tree_util.tree_map_with_path(one, tree)


def put_batch(batch, sharding: NamedSharding):
  """Assembles a global, sharded batch from this process's rows (asynchronously transferred)."""
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def shard_sizes(tree) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """{path: (global shape, the first device's shard shape)} for each array of `tree` (for tests)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array):
      out[".".join(_path(path))] = (tuple(leaf.shape), tuple(leaf.addressable_shards[0].data.shape))
  return out

