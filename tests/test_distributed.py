"""Multi-process failure handling: when one process dies, the others exit with an error instead of hanging."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from research.train import distributed

# Short enough to keep the test quick, long enough that a loaded CI machine never misses a heartbeat.
HEARTBEAT_S = 10
# A survivor must be gone this long after its peer is killed. JAX's default heartbeat timeout (100 s)
# would miss it, so this fails if the timeout stops reaching jax.distributed.initialize.
BOUND_S = 45


def test_timeouts_come_from_the_environment(monkeypatch):
  monkeypatch.delenv(distributed.HEARTBEAT_TIMEOUT_ENV, raising=False)
  monkeypatch.delenv(distributed.SHUTDOWN_TIMEOUT_ENV, raising=False)
  assert distributed.timeouts() == {"heartbeat_timeout_seconds": distributed.DEFAULT_HEARTBEAT_TIMEOUT_S,
                                    "shutdown_timeout_seconds": distributed.DEFAULT_SHUTDOWN_TIMEOUT_S}
  monkeypatch.setenv(distributed.HEARTBEAT_TIMEOUT_ENV, "7")
  monkeypatch.setenv(distributed.SHUTDOWN_TIMEOUT_ENV, "9")
  assert distributed.timeouts() == {"heartbeat_timeout_seconds": 7, "shutdown_timeout_seconds": 9}


@pytest.mark.parametrize("value", ["0", "-3", "ten", "1.5"])
def test_a_bad_timeout_names_the_variable(monkeypatch, value):
  monkeypatch.setenv(distributed.HEARTBEAT_TIMEOUT_ENV, value)
  with pytest.raises(ValueError, match=distributed.HEARTBEAT_TIMEOUT_ENV):
    distributed.timeouts()


@pytest.mark.parametrize("env", [
    {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
    {"SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8"},
])
def test_initialize_passes_the_timeouts(monkeypatch, env):
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setenv(distributed.HEARTBEAT_TIMEOUT_ENV, "12")
  distributed.initialize_distributed()
  assert len(calls) == 1 and calls[0]["heartbeat_timeout_seconds"] == 12
  assert calls[0]["shutdown_timeout_seconds"] == distributed.DEFAULT_SHUTDOWN_TIMEOUT_S


@pytest.mark.parametrize("env", [
    {},
    # A batch script that asked for several tasks but runs the experiment without srun: one process.
    {"SLURM_NTASKS": "2", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
    {"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"},
])
def test_single_process_does_not_initialize(monkeypatch, env):
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kwargs: pytest.fail("initialized"))
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  distributed.initialize_distributed()


def test_survivor_exits_with_an_error_when_its_peer_is_killed(tmp_path):
  """Two JAX processes train; process 1 is SIGKILLed after the first checkpoint; process 0 must fail fast."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "run"
  procs, logs = [], []
  try:
    for i in range(2):
      env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i), PYTHONUNBUFFERED="1", **{distributed.HEARTBEAT_TIMEOUT_ENV: str(HEARTBEAT_S)})
      logs.append(open(tmp_path / f"process{i}.log", "w+"))  # pylint: disable=consider-using-with
      # Far more steps than the test waits for: training must still be under way when the kill comes.
      procs.append(subprocess.Popen([sys.executable, "tests/tiny_run.py", str(workdir), "5000"], cwd=ROOT, env=env,
                                    stdout=logs[i], stderr=subprocess.STDOUT))
    # checkpoints/10 (orbax renames it from a temporary name once written) means both processes
    # have compiled the step and trained past step 10.
    deadline = time.monotonic() + 300
    while not (workdir / "checkpoints" / "10").is_dir():
      assert all(p.poll() is None for p in procs), "a process exited before its first checkpoint"
      assert time.monotonic() < deadline, "no checkpoint after 300 s"
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    try:
      returncode = procs[0].wait(timeout=BOUND_S)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process 0 still running {BOUND_S} s after process 1 was killed")
    elapsed = time.monotonic() - killed_at
    logs[0].seek(0)
    output = logs[0].read()
    assert returncode != 0, output[-3000:]
    assert "heartbeat" in output.lower(), output[-3000:]  # the error says why the run stopped
    assert not (workdir / "results.json").exists()
    print(f"process 0 exited with {returncode} {elapsed:.1f} s after process 1 was killed")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for log in logs:
      log.close()
