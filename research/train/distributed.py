"""Joining a multi-process run (several hosts, or several processes on one machine).

When one process of a run dies, the others must not hang. JAX's coordination service notices a
process that stops sending heartbeats and, after `heartbeat_timeout_seconds`, every surviving
process's client aborts itself ("Terminating process because the JAX distributed service detected
fatal errors"), from a background thread: this holds even while Python is blocked inside a
collective or in the shutdown barrier at exit. So the heartbeat timeout bounds how long a survivor
lives on after a peer is killed; the environment variables below set it.
"""

import os

import jax

# Seconds without a heartbeat after which a process counts as dead and the run is torn down.
HEARTBEAT_TIMEOUT_ENV = "RESEARCH_HEARTBEAT_TIMEOUT_S"
# JAX's own default is 100 s; 60 s keeps a dead peer's cost to about a minute while leaving a wide
# margin over the heartbeat interval (heartbeats come from a C++ thread, so long compiles or
# Python pauses do not delay them).
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
# Seconds a finished process waits at exit for the others to finish too. Process 0 may still be
# writing samples and results when the others are done, so this stays generous.
SHUTDOWN_TIMEOUT_ENV = "RESEARCH_SHUTDOWN_TIMEOUT_S"
DEFAULT_SHUTDOWN_TIMEOUT_S = 300


def _seconds(name: str, default: int) -> int:
  value = os.environ.get(name, "")
  if not value:
    return default
  try:
    seconds = int(value)
  except ValueError:
    seconds = 0
  if seconds < 1:
    raise ValueError(f"{name} must be a whole number of seconds >= 1, got {value!r}")
  return seconds


def timeouts() -> dict[str, int]:
  """The failure-detection timeouts passed to `jax.distributed.initialize`, read from the environment.

  Returns:
    `heartbeat_timeout_seconds` (from RESEARCH_HEARTBEAT_TIMEOUT_S, default 60) and
    `shutdown_timeout_seconds` (from RESEARCH_SHUTDOWN_TIMEOUT_S, default 300).

  Raises:
    ValueError: if a variable is set to something other than a positive integer.
  """
  return {"heartbeat_timeout_seconds": _seconds(HEARTBEAT_TIMEOUT_ENV, DEFAULT_HEARTBEAT_TIMEOUT_S),
          "shutdown_timeout_seconds": _seconds(SHUTDOWN_TIMEOUT_ENV, DEFAULT_SHUTDOWN_TIMEOUT_S)}


def initialize_distributed() -> None:
  """Joins a multi-process run when the environment describes one.

  An explicit coordinator is read from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID. Otherwise `jax.distributed.initialize()` auto-detects Cloud TPU
  (TPU_WORKER_HOSTNAMES) and a SLURM step of several tasks started by `srun`
  (SLURM_STEP_NUM_TASKS > 1; it reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS,
  SLURM_PROCID and SLURM_LOCALID). A single process does nothing, including a script run
  directly in a batch job that asked for several tasks: that is one process, not a step of
  several. If a process dies, the others exit with an error about
  `timeouts()["heartbeat_timeout_seconds"]` later instead of hanging.
  """
  if jax.distributed.is_initialized():
    return
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]), **timeouts())
  elif int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
    jax.distributed.initialize(**timeouts())
