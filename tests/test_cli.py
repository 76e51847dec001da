"""Experiments from the command line, as a new user runs them: one-line errors, signals, devices."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import FAST_COMPILE, ROOT, run_python

SMOKE = "--config=experiments/autoencoder.py:smoke"


@pytest.mark.parametrize("args,message", [
    (["--config.stpes=100"], "unknown config field 'stpes'; did you mean 'steps'?"),
    (["--config.optimizer.lr=0.1"], "unknown config field 'optimizer.lr'; did you mean 'optimizer.learning_rate'?"),
    ([SMOKE, "--config.lr=0.1"], "unknown config field 'lr'; did you mean 'optimizer.learning_rate'?"),
    ([SMOKE, "--config.steps=50", "--config.optimizer.schedule=warmup_cosine", "--config.optimizer.warmup_steps=100"],
     "optimizer.warmup_steps 100 is longer than the run's 50 steps"),
    (["--config=experiments/autoencoder.py:smok"], "unknown preset 'smok'; choose from: smoke"),
    ([SMOKE, "--config.dataset=nope"], "unknown dataset 'nope'; available: digits"),
    ([SMOKE, "--config.mesh.fsdp=3"], "does not fit 1 devices"),
    ([SMOKE, "--config.grad_accum=5"], "batch_size 32 is not divisible by grad_accum 5"),
    ([SMOKE, "--config.dataset=mnist"], "dataset 'mnist' is not prepared in"),
    (["--config=experiments/autoencodr.py:smoke"], "--config experiments/autoencodr.py:smoke: no such file"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
  workdir = tmp_path / "w"
  start = time.time()
  proc = run_python(["-m", "experiments.autoencoder", f"--workdir={workdir}", *args],
                    env={"TFDS_DATA_DIR": os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))})
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
  assert "\\n" not in lines[0] and "\\'" not in lines[0]
  assert not workdir.exists()
  assert time.time() - start < 60  # no download retries


def test_the_documented_config_path_works_from_any_directory(tmp_path):
  """`--config=experiments/<name>.py:preset` names the repository's file wherever the command runs."""
  env = dict(os.environ, PYTHONUNBUFFERED="1",
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  proc = subprocess.run([sys.executable, "-m", "experiments.em_gmm", "--config=experiments/em_gmm.py:smoke",
                         "--workdir=run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["max_iter"] == 20  # the smoke preset


def test_workdir_naming_a_file_is_one_line(tmp_path):
  path = tmp_path / "file"
  path.write_text("")
  proc = run_python(["-m", "experiments.autoencoder", f"--workdir={path}", SMOKE])
  assert proc.returncode == 2 and proc.stderr.strip() == f"error: --workdir {path} is a file, not a directory"


def test_non_finite_loss_is_one_line_and_exit_1(tmp_path):
  proc = run_python(["-m", "experiments.autoencoder", f"--workdir={tmp_path}", SMOKE,
                     "--config.optimizer.learning_rate=1e30"])
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: non-finite ") and " at step 1; no checkpoint was saved in" in last
  assert "Traceback" not in proc.stderr and not (tmp_path / "results.json").exists()


def test_smoke_run_prints_its_final_metrics_and_no_tensorflow_banner(tmp_path):
  proc = run_python(["-m", "experiments.autoencoder", f"--workdir={tmp_path}", SMOKE])
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads((tmp_path / "results.json").read_text())
  final = [line for line in proc.stderr.splitlines() if line.startswith("final: ")]
  assert len(final) == 1 and f"test_nll_nats {results['test_nll_nats']:.5g}" in final[0]
  # The workdir is marked with what wrote it, and another experiment refuses it before writing anything.
  assert (tmp_path / ".experiment").read_text() == "experiments.autoencoder\n"
  before = sorted(os.listdir(tmp_path))
  other = run_python(["-m", "experiments.em_gmm", f"--workdir={tmp_path}", "--config=experiments/em_gmm.py:smoke"])
  assert other.returncode == 2 and other.stderr.strip() == (
      f"error: --workdir {tmp_path} was written by experiments.autoencoder, not experiments.em_gmm; "
      "use another --workdir")
  assert sorted(os.listdir(tmp_path)) == before
  # The same command again finds the finished run and says so.
  again = run_python(["-m", "experiments.autoencoder", f"--workdir={tmp_path}", SMOKE])
  assert again.returncode == 0 and "already holds this run, finished at step" in again.stderr, again.stderr
  assert json.loads((tmp_path / "results.json").read_text()) == results
  assert "oneDNN" not in proc.stderr + proc.stdout


def _stored(workdir, step):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


@pytest.mark.slow
def test_signals_save_the_current_step_and_the_same_command_resumes_to_the_same_bits(tmp_path):
  # Seven steps per call, logs and checkpoints every 10: the stop lands between event steps.
  command = [sys.executable, "-m", "experiments.autoencoder", SMOKE, "--config.steps=400",
             "--config.steps_per_call=7", "--config.checkpoint_every=200", "--config.log_every=10"]
  env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS=FAST_COMPILE)
  reference = subprocess.run(command + [f"--workdir={tmp_path / 'reference'}"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600, check=False)
  assert reference.returncode == 0, reference.stderr[-2000:]
  expected = json.loads((tmp_path / "reference" / "results.json").read_text())

  # SIGTERM (a preemption) stops and resumes. SIGINT (Ctrl-C) takes the same saving path; its
  # landings outside the training calls are tests/test_interrupts.py's.
  signum = signal.SIGTERM
  workdir = tmp_path / "stopped"
  proc = subprocess.Popen(command + [f"--workdir={workdir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:  # wait until training is under way
    if line.startswith("step 20/"):
      break
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum, err[-2000:]
  line = err.strip().splitlines()[-1]
  stopped_at = int(line.split(" at step ")[1].split(":")[0])
  assert line == (f"interrupted by SIGTERM at step {stopped_at}: saved a checkpoint in {workdir}/checkpoints; "
                  "run the same command to resume")
  assert 20 <= stopped_at < 400 and (workdir / "checkpoints" / str(stopped_at)).is_dir()
  assert int(np.asarray(_stored(workdir, stopped_at)["step"])) == stopped_at
  assert not (workdir / "results.json").exists()

  resumed = subprocess.run(command + [f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resuming from step {stopped_at} of" in resumed.stderr
  ours, theirs = _stored(workdir, 400), _stored(tmp_path / "reference", 400)
  for a, b in zip(jax_leaves(ours), jax_leaves(theirs)):
    np.testing.assert_array_equal(a, b)
  results = json.loads((workdir / "results.json").read_text())
  assert results["train_loss"] == expected["train_loss"]
  assert results["test_nll_nats"] == expected["test_nll_nats"]


def jax_leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("module,args", [
    ("experiments.autoencoder", ["--config.steps=1100", "--config.eval_k=64"]),
    ("experiments.gan", ["--config.steps=600"]),
])
@pytest.mark.slow
def test_default_commands_run_on_four_simulated_devices(tmp_path, module, args):
  """The default log and checkpoint intervals (1000 / 5000 for the VAE), not a smoke preset's."""
  proc = run_python(["-m", module, f"--workdir={tmp_path}", *args],
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["devices"]["count"] == 4 and results["mesh"]["data"] == 4
  assert np.isfinite(results["train_loss"])


def test_help_lists_fields_with_defaults_comments_and_presets_and_exits_0():
  done = run_python(["-m", "experiments.autoencoder", "--help", "--config=experiments/autoencoder.py:smoke"])
  assert done.returncode == 0, done.stderr
  out = done.stdout
  assert out.startswith("AE, denoising AE or VAE")  # the docstring first
  # Every field of the preset's config, with its value, and the comment of the line that assigns it.
  assert re.search(r"^  optimizer\.learning_rate = [0-9.e-]+ +# peak learning rate$", out, re.M), out
  assert re.search(r"^  seed = 0 +# seeds parameter init", out, re.M)
  assert "Config fields (defaults with preset 'smoke'):" in out
  assert re.search(r"^Presets \(--config=experiments/autoencoder\.py:NAME.*\): .*smoke", out, re.M)


def test_experiments_lists_every_script_with_one_line():
  done = run_python(["-m", "experiments"])
  assert done.returncode == 0, done.stderr
  listed = set(re.findall(r"python -m (experiments\.\S+)", done.stdout))
  assert {"experiments.gan", "experiments.tables.dit", "experiments.bench.gpt2", "experiments.sweep"} <= listed
  assert "experiments.harness" not in listed and "experiments.bench.steps" not in listed  # helpers, not scripts
  for line in done.stdout.splitlines():
    if line.strip().startswith("python -m"):
      assert len(line.split(None, 3)) == 4, line  # a description after every command
