"""Joining a multi-process run (several hosts, or several processes on one machine)."""

import os

import jax


def initialize_distributed() -> None:
  """Joins a multi-process run when the environment describes one.

  `jax.distributed.initialize()` auto-detects SLURM and Cloud TPU; an explicit
  coordinator is read from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  A single process (the default) does nothing.
  """
  if jax.distributed.is_initialized():
    return
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
    jax.distributed.initialize()
