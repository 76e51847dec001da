"""Jobs submitted with `python -m launch slurm --submit` and run by a real SLURM (one node: launch/slurm_local.sh).

Every job is the VAE smoke run as two CPU tasks, one JAX process each (gloo collectives), on the
same flags, so any two of them must agree step for step: the uninterrupted job is the reference
for the cancelled-and-resubmitted one and for the checkpoint a killed task leaves behind.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import launch
from conftest import once_per_session, run_python
from research.train.checkpoint import restore_pytree


def _slurm_unavailable() -> str:
  if shutil.which("sbatch") is None:
    return "no SLURM here: sbatch is not on PATH (CI installs slurm-wlm and runs launch/slurm_local.sh start)"
  try:
    done = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30,
                          check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    return f"SLURM does not answer: {e}"
  if done.returncode != 0 or not done.stdout.strip():
    return f"SLURM does not answer (sinfo: {done.stderr.strip()}); start one with launch/slurm_local.sh start"
  return ""


pytestmark = [pytest.mark.skipif(bool(_slurm_unavailable()), reason=_slurm_unavailable() or "SLURM is up"),
              # One node of a few cores: the jobs run one after another, so the tests share one worker.
              pytest.mark.xdist_group("slurm"), pytest.mark.slow]

STEPS = 1000  # a job cancelled or killed at its first checkpoint (FIRST) is mid-run: the rest takes
FIRST = 20  # seconds even on an idle machine, where 60 steps were over before scancel arrived
# The smoke preset, longer, without the sample metrics (they add time to every job and nothing to
# what is checked); a checkpoint every FIRST steps, all kept.
FLAGS = ["--config=experiments/autoencoder.py:smoke", f"--config.steps={STEPS}", f"--config.checkpoint_every={FIRST}",
         f"--config.keep_checkpoints={STEPS // FIRST}", "--config.num_samples=0"]
JOB_TIMEOUT_S = 900  # a shared 2-core machine can be slow; a hang still ends the test
DEAD_TASK_BOUND_S = 60  # a killed task must end its job within this


def _submit(workdir) -> str:
  done = run_python(["-m", "launch", "slurm", "autoencoder", f"--workdir={workdir}", "--tasks_per_node=2",
                     "--cpus_per_task=1", "--submit", "--", *FLAGS], timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert re.fullmatch(r"\d+\n", done.stdout), done.stdout
  return done.stdout.strip()


def _resubmit(workdir) -> str:
  """Resubmits the script the launcher wrote, as a user resuming a run does."""
  done = subprocess.run(["sbatch", "--parsable", str(workdir / launch.SLURM_SCRIPT)], capture_output=True, text=True,
                        timeout=60, check=True)
  return done.stdout.strip().split(";")[0]


def _in_queue(job: str) -> bool:
  done = subprocess.run(["squeue", "--noheader", f"--jobs={job}", "--format=%T"], capture_output=True, text=True,
                        timeout=30, check=False)
  return bool(done.stdout.strip())


def _state(job: str) -> str:
  done = subprocess.run(["scontrol", "show", "job", job, "--oneliner"], capture_output=True, text=True, timeout=30,
                        check=True)
  return re.search(r"JobState=(\S+)", done.stdout).group(1)


def _log(workdir, job: str) -> str:
  path = workdir / f"slurm-{job}.out"
  return path.read_text() if path.exists() else "(no log)"


def _wait_done(job: str, workdir, timeout: float = JOB_TIMEOUT_S) -> str:
  deadline = time.monotonic() + timeout
  while _in_queue(job):
    if time.monotonic() > deadline:
      subprocess.run(["scancel", job], check=False)
      pytest.fail(f"job {job} still queued or running after {timeout} s:\n{_log(workdir, job)[-3000:]}")
    time.sleep(0.5)
  return _state(job)


def _wait_checkpoint(job: str, workdir, step: int) -> None:
  """Waits until the job has committed checkpoint `step` (orbax renames it into place once written)."""
  deadline = time.monotonic() + JOB_TIMEOUT_S
  while not (workdir / "checkpoints" / str(step)).is_dir():
    assert _in_queue(job), f"job {job} ended before checkpoint {step}:\n{_log(workdir, job)[-3000:]}"
    if time.monotonic() > deadline:
      subprocess.run(["scancel", job], check=False)
      pytest.fail(f"no checkpoint {step} after {JOB_TIMEOUT_S} s")
    time.sleep(0.1)


def _state_at(workdir, step: int, like=None):
  """The state saved at `step`; a checkpoint of several processes restores onto `like`'s shapes and device."""
  return restore_pytree(str(workdir / "checkpoints" / str(step) / "state"), like)


def _assert_same_bits(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _results(workdir) -> dict:
  return json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def reference(tmp_path_factory):
  """An uninterrupted 2-task job and the same run as one process beside it; their workdirs (run once per
  test session, whichever worker asks first)."""

  def compute():
    root = tmp_path_factory.mktemp("slurm")
    job_dir, one_dir = root / "two tasks", root / "one process"  # a space in the path, as users have
    job = _submit(job_dir)
    one = subprocess.Popen([sys.executable, "-m", "experiments.autoencoder", f"--workdir={one_dir}", *FLAGS],
                           cwd=launch.checkout(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
      _, err = one.communicate(timeout=JOB_TIMEOUT_S)
    finally:
      if one.poll() is None:
        one.kill()
    assert one.returncode == 0, err[-2000:]
    assert _wait_done(job, job_dir) == "COMPLETED", _log(job_dir, job)[-3000:]
    return [str(job_dir), str(one_dir)]

  job_dir, one_dir = once_per_session(tmp_path_factory, "slurm_reference", compute)
  return pathlib.Path(job_dir), pathlib.Path(one_dir)


def test_two_tasks_match_one_process(reference):
  job_dir, one_dir = reference
  two, one = _results(job_dir), _results(one_dir)
  assert two["devices"]["processes"] == 2 and two["devices"]["count"] == 2
  assert one["devices"]["processes"] == 1
  np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-4)
  np.testing.assert_allclose(two["test_nll_nats"], one["test_nll_nats"], rtol=1e-4)
  # The same checkpoint format: the same steps and items, and the 2-task state restores in one
  # process to the same tree of arrays as the single process's.
  steps = sorted(p.name for p in (one_dir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == sorted(p.name for p in (job_dir / "checkpoints").iterdir() if p.name.isdigit())
  final = str(STEPS)
  assert sorted(os.listdir(job_dir / "checkpoints" / final)) == sorted(os.listdir(one_dir / "checkpoints" / final))
  one_state = _state_at(one_dir, STEPS)
  two_state = _state_at(job_dir, STEPS, like=one_state)
  assert jax.tree.structure(two_state) == jax.tree.structure(one_state)
  for x, y in zip(jax.tree.leaves(two_state), jax.tree.leaves(one_state)):
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5)
  item = lambda workdir, name: json.loads((workdir / "checkpoints" / final / name / "metadata").read_text())
  assert item(job_dir, "config") == item(one_dir, "config")
  two_data, one_data = item(job_dir, "data"), item(one_dir, "data")  # the data position and the interval's sums
  assert two_data.pop("step") == one_data.pop("step") == STEPS
  np.testing.assert_allclose(two_data.pop("train_loss"), one_data.pop("train_loss"), rtol=1e-4)
  assert two_data == one_data


def test_scancel_and_resubmit_resumes_to_the_same_state(reference, tmp_path):
  job_dir, one_dir = reference
  workdir = tmp_path / "cancelled"
  job = _submit(workdir)
  _wait_checkpoint(job, workdir, FIRST)
  subprocess.run(["scancel", job], check=True, timeout=60)
  assert _wait_done(job, workdir, timeout=120) == "CANCELLED"
  assert not (workdir / "results.json").exists()

  again = _resubmit(workdir)
  assert _wait_done(again, workdir) == "COMPLETED", _log(workdir, again)[-3000:]
  resumed = re.search(r"resuming from step (\d+)", _log(workdir, again))
  assert resumed and int(resumed.group(1)) < STEPS, _log(workdir, again)[-3000:]
  assert _results(workdir)["train_loss"] == _results(job_dir)["train_loss"]
  assert _results(workdir)["test_nll_nats"] == _results(job_dir)["test_nll_nats"]
  like = _state_at(one_dir, STEPS)
  _assert_same_bits(_state_at(workdir, STEPS, like), _state_at(job_dir, STEPS, like))


def _task_pid(job: str, task: int) -> int:
  """The process id of the job's task `task` (its global rank), as SLURM tracks it."""
  done = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, timeout=30, check=True)
  for line in done.stdout.splitlines()[1:]:
    pid, _, step, _, rank = line.split()
    if step != "batch" and rank == str(task):
      return int(pid)
  raise AssertionError(f"no task {task} in job {job}:\n{done.stdout}")


def test_a_killed_task_fails_the_job_and_keeps_the_checkpoint(reference, tmp_path):
  job_dir, one_dir = reference
  workdir = tmp_path / "killed"
  job = _submit(workdir)
  _wait_checkpoint(job, workdir, FIRST)
  os.kill(_task_pid(job, 1), signal.SIGKILL)
  killed_at = time.monotonic()
  deadline = killed_at + DEAD_TASK_BOUND_S
  while _in_queue(job):
    if time.monotonic() > deadline:
      subprocess.run(["scancel", job], check=False)
      pytest.fail(f"job {job} still running {DEAD_TASK_BOUND_S} s after task 1 was killed")
    time.sleep(0.2)
  print(f"job {job} ended {time.monotonic() - killed_at:.1f} s after task 1 was killed")
  assert _state(job) == "FAILED", _log(workdir, job)[-3000:]
  assert not (workdir / "results.json").exists()
  # The checkpoint written before the kill is intact: the same bits as the uninterrupted job's.
  like = _state_at(one_dir, FIRST)
  _assert_same_bits(_state_at(workdir, FIRST, like), _state_at(job_dir, FIRST, like))
