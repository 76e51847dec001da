"""Data parallelism over a device mesh, on one or several processes.

The batch is sharded on the mesh's `data` axis and everything else is replicated; the
same code runs on 1 device, N (real or simulated) devices and several processes.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A 1D mesh over every device of every process, axis `data`."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_batch(batch, sharding: NamedSharding):
  """Assembles a global, sharded batch from this process's rows.

  With one process the numpy arrays are returned as they are: a jitted function whose
  in_shardings name `sharding` transfers and splits them itself, on its C++ fast path.
  """
  if jax.process_count() == 1:
    return batch
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
