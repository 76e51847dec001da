"""SIGINT / SIGTERM in the phases outside the training calls, and a second signal at once.

The loop's own save-and-stop during training is tests/test_cli.py's signal test; here the first
signal lands while the final evaluation compiles and runs, and two signals land together.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST_COMPILE, ROOT

COMMAND = [sys.executable, "-m", "experiments.autoencoder", "--config=experiments/autoencoder.py:smoke"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS=FAST_COMPILE)


def _run(workdir) -> subprocess.CompletedProcess:
  return subprocess.run(COMMAND + [f"--workdir={workdir}"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=600, check=False)


def _signal_at(workdir, marker: str, signums, delay: float = 0.05) -> tuple[int, str]:
  """Starts the run, sends `signums` once a stderr line contains `marker`; returns (exit code, stderr after)."""
  proc = subprocess.Popen(COMMAND + [f"--workdir={workdir}"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  for line in proc.stderr:
    if marker in line:
      break
  else:
    raise AssertionError(f"the run never printed {marker!r}")
  time.sleep(delay)
  for signum in signums:
    proc.send_signal(signum)
  _, err = proc.communicate(timeout=300)
  return proc.returncode, err


def _checkpoints(workdir) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.mark.slow
def test_ctrl_c_during_the_final_evaluation_keeps_the_final_checkpoint_whole_and_a_rerun_finishes(tmp_path):
  signum = signal.SIGINT  # SIGTERM takes the same path (the second test's second signal is one)
  reference = _run(tmp_path / "reference")
  assert reference.returncode == 0, reference.stderr[-2000:]
  expected = json.loads((tmp_path / "reference" / "results.json").read_text())

  workdir = tmp_path / "stopped"
  code, err = _signal_at(workdir, "evaluating at step 20", [signum])
  assert code == 128 + signum, err[-2000:]
  lines = err.strip().splitlines()
  # A signal that lands in a callback of the evaluation's compiled program is acted on at the next
  # check, which may come after the evaluation's own line.
  assert all(line.startswith("eval at step 20: ") for line in lines[:-1]), err[-2000:]
  assert lines[-1] == (f"interrupted by {signum.name}: kept the newest checkpoint, step 20 in "
                       f"{workdir}/checkpoints; run the same command to resume")
  # The save of step 20 was still in flight when the evaluation began: it landed whole.
  assert _checkpoints(workdir) == ["10", "20"]
  assert not (workdir / "results.json").exists()

  again = _run(workdir)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resuming from step 20 of" in again.stderr and "training steps" not in again.stderr
  results = json.loads((workdir / "results.json").read_text())
  for key in ("train_loss", "test_nll_nats", "step"):
    assert results[key] == expected[key], key


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_the_run_resumes(tmp_path):
  workdir = tmp_path / "run"
  # Two different signals arrive together (one signal number sent twice may be delivered once).
  code, err = _signal_at(workdir, "training steps 0..20", [signal.SIGINT, signal.SIGTERM], delay=0.0)
  assert code == 128 + signal.SIGTERM, err[-2000:]
  assert err.strip().splitlines()[-1] == ("error: interrupted a second time (SIGTERM): stopped at once; "
                                          "the checkpoints saved before are kept")
  assert "Traceback" not in err
  again = _run(workdir)
  assert again.returncode == 0, again.stderr[-2000:]
  assert json.loads((workdir / "results.json").read_text())["step"] == 20


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_first(tmp_path):
  workdir = tmp_path / "run"
  first = subprocess.Popen(COMMAND + [f"--workdir={workdir}", "--config.steps=100000"], cwd=ROOT, env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in first.stderr:
      if "training steps" in line:
        break
    second = _run(workdir)
    assert second.returncode == 2
    assert second.stderr.strip() == (f"error: --workdir {workdir} is in use by a run still going (process "
                                      f"{first.pid}); wait for it to end, or use another --workdir")
  finally:
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=300)
  assert first.returncode == 128 + signal.SIGTERM
  # The lock went with the first run: the same command resumes.
  resumed = subprocess.run(COMMAND + [f"--workdir={workdir}", "--config.steps=30"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600, check=False)
  assert "in use by" not in resumed.stderr


def test_bad_input_on_a_new_workdir_leaves_no_directory(tmp_path):
  workdir = tmp_path / "new"
  done = subprocess.run(COMMAND + [f"--workdir={workdir}", "--config.steps=-1"], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 2 and done.stderr.strip() == "error: steps must be >= 0, got -1"
  assert not workdir.exists()


def test_a_stop_python_swallows_in_a_callback_is_raised_again_at_the_next_check(capsys):
  from research.train import schedule

  class Collected:
    def __del__(self):  # the signal lands while Python runs a finalizer, which cannot raise
      signals._handle(signal.SIGINT, None)  # pylint: disable=protected-access

  with schedule.Signals(raise_stop=True) as signals:
    obj = Collected()
    del obj  # the Stop raised in __del__ is swallowed ("Exception ignored" without the hook)
    with pytest.raises(schedule.Stop) as stopped:
      schedule.raise_pending()
    assert stopped.value.signum == signal.SIGINT
    with schedule.Signals() as inner:  # the loop's handler, entered after: it stops at its first boundary
      assert inner.received == signal.SIGINT
  schedule.raise_pending()  # the run is over: nothing pending
  assert "Exception ignored" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_failed_save_stops_the_run_with_one_line_and_the_rerun_resumes_from_the_last_whole_checkpoint(tmp_path):
  # The disk "fills" mid-run: the running process's file-size limit drops below a checkpoint's
  # size (SIGXFSZ ignored, so a write past it fails with EFBIG, as ENOSPC would).
  import resource  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "run"
  flags = ["--config.steps=1000", "--config.checkpoint_every=20", "--config.log_every=200"]
  proc = subprocess.Popen(COMMAND + [f"--workdir={workdir}", *flags], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
  for line in proc.stderr:
    if line.startswith("step 200/"):
      break
  resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (20_000, 20_000))
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err[-3000:]
  # One line says what failed, and nothing else: no traceback (the failed save's writes still in
  # flight finish after orbax closed their event loop, and would print "Event loop is closed").
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "research/" not in err, err[-3000:]
  assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
  line = lines[0]
  assert line.startswith(f"error: saving the checkpoint of step ") and "File too large" in line, line
  kept = int(line.split("the newest whole checkpoint is step ")[1].split(";")[0])
  failed = int(line.split("the checkpoint of step ")[1].split(" ")[0])
  assert line.endswith("free space and run the same command to resume")
  assert 0 < kept < failed < 1000 and str(kept) in _checkpoints(workdir)
  assert not (workdir / "results.json").exists()

  again = subprocess.run(COMMAND + [f"--workdir={workdir}", *flags], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=600, check=False)
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"resuming from step {kept} of" in again.stderr
  assert json.loads((workdir / "results.json").read_text())["step"] == 1000


# experiments.em_gmm with SIGINT sent to itself once one of XLA's compiles has taken 0.5 s (the fit's, seconds).
_EM_STOPPED_IN_COMPILE = """
import os, signal, sys, threading
from jax._src import compiler
from experiments import em_gmm
from research.train import cli
compile_and_load = compiler.backend_compile_and_load
def stopped(*args, **kwargs):
  timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
  timer.start()
  try:
    return compile_and_load(*args, **kwargs)
  finally:
    timer.cancel()
compiler.backend_compile_and_load = stopped
sys.argv = [em_gmm.__file__] + sys.argv[1:]
cli.main(em_gmm.__file__, em_gmm.run)
"""


def test_ctrl_c_while_xla_compiles_is_one_line_and_exit_130_not_a_crash(tmp_path):
  """A signal stops the run inside the compiler's call, whose thread compiles on: the process must not tear
  down the backend under it (it did: a segmentation fault, exit 139). Under XLA's default flags, whose compile
  takes the seconds a user's does."""
  env = dict(ENV, XLA_FLAGS=ENV["XLA_FLAGS"].replace(FAST_COMPILE, "").strip())
  done = subprocess.run([sys.executable, "-c", _EM_STOPPED_IN_COMPILE, f"--workdir={tmp_path / 'w'}",
                         "--config.n_components=6", "--config.max_iter=300"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 128 + signal.SIGINT, done.stderr[-2000:]
  assert done.stderr.strip().splitlines() == [
      "interrupted by SIGINT: no checkpoint had been saved yet; run the same command to start again"]
  assert not (tmp_path / "w" / "results.json").exists()
