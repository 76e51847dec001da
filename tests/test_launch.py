"""Launchers: the local command is run here; the SLURM script and its submission against a stand-in sbatch
(tests/test_slurm.py runs them on a real SLURM); the TPU VM command as text."""

import ast
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

import launch
from launch.__main__ import main

from conftest import ROOT, run_python


def _runnable_experiments() -> list[str]:
  """Every script under experiments/ with a __main__ block, as launch names it ("tables.gan_modes")."""
  names = []
  for path in sorted(pathlib.Path(ROOT, "experiments").rglob("*.py")):
    if path.name.startswith("_"):
      continue  # experiments/__main__.py lists the scripts; it is not one
    if '__name__ == "__main__"' in path.read_text():
      names.append(".".join(path.relative_to(ROOT, "experiments").with_suffix("").parts))
  return names


def test_local_command_runs_the_experiment_module():
  command = launch.local("autoencoder", "/tmp/w d", ["--config.steps=5"], devices=4)
  assert command.startswith("XLA_FLAGS=--xla_force_host_platform_device_count=4 ")
  assert shlex.split(command)[1:] == ["python", "-m", "experiments.autoencoder", "--workdir=/tmp/w d",
                                      "--config.steps=5"]


def test_tables_and_benchmarks_get_outdir(capsys):
  assert launch.experiment_args("tables.gan_modes", "/o")[3] == "--outdir=/o"
  assert launch.experiment_args("bench.em", "/o")[3] == "--outdir=/o"
  assert launch.experiment_args("gan", "/w")[3] == "--workdir=/w"
  # The command line takes either spelling and passes on the one the module defines.
  assert main(["local", "tables.td_vs_mc", "--workdir=/o"]) == 0
  assert main(["local", "autoencoder", "--outdir=/w"]) == 0
  assert capsys.readouterr().out.split() == ["python", "-m", "experiments.tables.td_vs_mc", "--outdir=/o",
                                             "python", "-m", "experiments.autoencoder", "--workdir=/w"]


@pytest.mark.parametrize("experiment", _runnable_experiments())
def test_directory_flag_is_the_one_the_script_documents(experiment):
  """Each script's docstring holds its run command; launch must pass the directory flag shown there."""
  source = pathlib.Path(ROOT, "experiments", *experiment.split(".")).with_suffix(".py").read_text()
  documented = set(re.findall(r"--(workdir|outdir)\b", ast.get_docstring(ast.parse(source)) or ""))
  # experiments.sample / evaluate read a run's --workdir and write into an optional --outdir besides.
  extra = {"outdir"} if experiment in ("sample", "evaluate") else set()
  assert documented == {launch.directory_flag(experiment)} | extra


def test_printed_local_command_runs_a_table(tmp_path):
  outdir = tmp_path / "td"
  command = launch.local("tables.td_vs_mc", str(outdir), ["--config=experiments/tables/td_vs_mc.py:smoke"])
  # The printed command says `python`: the interpreter running the tests, as an activated
  # environment would put it first on PATH.
  path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
  done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        check=False, env=dict(os.environ, PATH=path))
  assert done.returncode == 0, done.stderr[-2000:]
  assert (outdir / "results.json").is_file() and (outdir / "td_vs_mc.md").is_file()


def test_slurm_script_has_one_task_per_gpu():
  script = launch.slurm_script("gan", "/scratch/g", ["--config.loss=wgan_gp"], nodes=2, gpus_per_node=4,
                               checkout_dir="/home/me/research", python="/home/me/env/bin/python", setup="")
  lines = script.splitlines()
  for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
               f"#SBATCH --cpus-per-task={launch.DEFAULT_CPUS_PER_TASK}", '#SBATCH --output="/scratch/g/slurm-%j.out"',
               "cd /home/me/research"]:
    assert line in lines
  assert lines[-1] == (f"srun --kill-on-bad-exit=1 --cpus-per-task={launch.DEFAULT_CPUS_PER_TASK} /home/me/env/bin/python "
                       "-m experiments.gan --workdir=/scratch/g --config.loss=wgan_gp")


def test_slurm_script_on_a_cpu_partition_quotes_every_path():
  script = launch.slurm_script("autoencoder", "/tmp/runs 50%/vae", ["--config.steps=5"], tasks_per_node=2,
                               cpus_per_task=3, partition="cpu", checkout_dir="/src/my research",
                               python="/opt/py env/bin/python")
  lines = script.splitlines()
  assert "#SBATCH --ntasks-per-node=2" in lines and "#SBATCH --cpus-per-task=3" in lines
  assert "#SBATCH --partition=cpu" in lines and not any("gpus" in line for line in lines)
  # sbatch strips the double quotes; a literal % is doubled so that only %j is SLURM's pattern.
  assert '#SBATCH --output="/tmp/runs 50%%/vae/slurm-%j.out"' in lines
  assert "cd '/src/my research'" in lines and "export PATH='/opt/py env/bin':\"$PATH\"" in lines
  assert shlex.split(lines[-1]) == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=3", "/opt/py env/bin/python",
                                    "-m", "experiments.autoencoder", "--workdir=/tmp/runs 50%/vae", "--config.steps=5"]
  done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr


def test_slurm_script_defaults_to_this_checkout_and_interpreter():
  script = launch.slurm_script("autoencoder", "relative/run", tasks_per_node=1)
  lines = script.splitlines()
  assert f"cd {shlex.quote(ROOT)}" in lines
  assert launch.activation(sys.executable) in lines
  command = shlex.split(lines[-1])
  assert command[3] == sys.executable and command[6] == f"--workdir={os.path.abspath('relative/run')}"


def test_a_virtual_environment_is_activated(tmp_path):
  bin_dir = tmp_path / "env" / "bin"
  bin_dir.mkdir(parents=True)
  (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
  (bin_dir / "activate").write_text("")
  assert launch.activation(str(bin_dir / "python")) == f"source {shlex.quote(str(bin_dir / 'activate'))}"
  assert launch.activation("/usr/bin/python3") == 'export PATH=/usr/bin:"$PATH"'


def _fake_sbatch(tmp_path):
  """A stand-in sbatch that fails unless the script's --output directory exists, and records what it was given."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "sbatch"
  fake.write_text('#!/bin/bash\nset -e\nscript="${@: -1}"\n'
                  'out=$(sed -n "s/^#SBATCH --output=\\"\\(.*\\)\\"$/\\1/p" "$script")\n'
                  'dir=$(dirname "$out")\n'
                  '[ -d "$dir" ] || { echo "no directory $dir" >&2; exit 1; }\n'
                  'printf "%s\\n" "$*" > "$SUBMITTED"\necho "4242;cluster"\n')
  fake.chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SUBMITTED": str(tmp_path / "submitted")}


def test_slurm_writes_the_script_into_the_workdir_and_submits_it(tmp_path):
  env = _fake_sbatch(tmp_path)
  workdir = tmp_path / "runs" / "my vae"
  args = ["-m", "launch", "slurm", "autoencoder", f"--workdir={workdir}", "--tasks_per_node=2", "--cpus_per_task=1"]
  flags = ["--", "--config=experiments/autoencoder.py:smoke"]
  printed = run_python([*args, *flags], env=env, timeout=300)
  assert printed.returncode == 0, printed.stderr
  script = workdir / launch.SLURM_SCRIPT
  assert printed.stdout == f"sbatch {shlex.quote(str(script))}\n" and not (tmp_path / "submitted").exists()
  assert script.read_text() == launch.slurm_script("autoencoder", str(workdir), flags[1:], tasks_per_node=2,
                                                   cpus_per_task=1)
  submitted = run_python([*args, "--submit", *flags], env=env, timeout=300)
  assert submitted.returncode == 0, submitted.stderr
  assert submitted.stdout == "4242\n"
  assert (tmp_path / "submitted").read_text() == f"--parsable {script}\n"


@pytest.mark.parametrize("target,flags,message", [
    (["slurm", "--tasks_per_node=2", "--submit"], ["--config.stepz=5"],
     "unknown config field 'stepz'; did you mean 'steps'? (every field: --help)"),
    # Two tasks are two devices: the experiment's own batch check, run for the job's device count.
    (["slurm", "--tasks_per_node=2", "--submit"], ["--config.batch_size=33"],
     "batch_size 33 is not divisible by the device count 2"),
    (["tpu_vm", "--tpu=t", "--zone=z", "--devices=4"], ["--config.mesh.fsdp=3"],
     "mesh {'data': -1, 'fsdp': 3, 'tensor': 1} does not fit 4 devices: 4 is not divisible by 3"),
])
def test_flags_are_checked_before_anything_is_queued(tmp_path, target, flags, message):
  env = _fake_sbatch(tmp_path)
  workdir = tmp_path / "w"
  done = run_python(["-m", "launch", target[0], "autoencoder", f"--workdir={workdir}", *target[1:], "--", *flags],
                    env=env, timeout=300)
  assert done.returncode == 2 and done.stdout == ""
  assert done.stderr == f"error: {message}\n"
  assert not workdir.exists() and not (tmp_path / "submitted").exists()


def test_a_table_flag_is_checked_like_an_experiment_flag():
  with pytest.raises(ValueError, match="^unknown config field 'stepz'; did you mean 'steps'\\?"):
    launch.check_flags("tables.gan_modes", "/tmp/unused", ["--config.stepz=3"])
  with pytest.raises(ValueError, match="Unknown command line flag 'stepz"):
    launch.check_flags("tables.gan_modes", "/tmp/unused", ["--stepz=3"])


def test_sbatch_refusing_a_job_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text("#!/bin/bash\necho 'sbatch: error: Batch job submission failed:' >&2\n"
                                  "echo '  Requested node configuration is not available' >&2\nexit 1\n")
  (bin_dir / "sbatch").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  with pytest.raises(RuntimeError, match="sbatch refused .*: sbatch: error: Batch job submission failed: "
                                         "Requested node configuration is not available$"):
    launch.sbatch(str(tmp_path / "slurm.sh"))
  monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
  with pytest.raises(RuntimeError, match="sbatch not found"):
    launch.sbatch(str(tmp_path / "slurm.sh"))


def test_tpu_vm_runs_on_every_worker():
  command = shlex.split(launch.tpu_vm("ppo", "/tmp/p", tpu="t1", zone="z", checkout_dir="~/src/research"))
  assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t1"] and "--worker=all" in command
  assert command[-1] == ("--command=cd ~/src/research && python3 -m pip install --quiet -e \".[tpu]\" && "
                         "python3 -m experiments.ppo --workdir=/tmp/p")


def test_tpu_vm_takes_the_checkout_interpreter_and_setup():
  command = shlex.split(launch.tpu_vm("gan", "/mnt/w", tpu="t", zone="z", checkout_dir="~/my src",
                                      python="/opt/env/bin/python", setup="source /opt/env/bin/activate"))
  assert command[-1] == ("--command=cd ~/'my src' && source /opt/env/bin/activate && "
                         "/opt/env/bin/python -m experiments.gan --workdir=/mnt/w")
  bare = shlex.split(launch.tpu_vm("gan", "/mnt/w", tpu="t", zone="z", checkout_dir="/srv/research", setup=""))
  assert bare[-1] == "--command=cd /srv/research && python3 -m experiments.gan --workdir=/mnt/w"


def test_tpu_vm_default_checkout_is_this_one_under_the_remote_home(monkeypatch):
  monkeypatch.setenv("HOME", os.path.dirname(ROOT))
  assert launch.remote_checkout() == "~/" + os.path.basename(ROOT)
  monkeypatch.setenv("HOME", "/nonexistent-home")
  assert launch.remote_checkout() == ROOT


@pytest.mark.parametrize("argv,message", [
    (["tpu_vm", "ppo", "--workdir=/w"], "tpu_vm needs --tpu and --zone"),
    (["local", "bad-name", "--workdir=/w"], "bad experiment name"),
    (["slurm", "gan", "--workdir=/w", "--nodes=0"], "nodes and cpus_per_task must be >= 1"),
    (["slurm", "gan", "--workdir=/w", "--gpus_per_node=0"], "on a CPU partition give --tasks_per_node"),
    (["slurm", "gan", "--workdir=/w", "--tasks_per_node=0"], "tasks_per_node must be >= 1"),
    (["local", "autoencodr", "--workdir=/w"], "no experiment experiments.autoencodr"),
    (["slurm", "tables.nope", "--workdir=/w"], "no experiment experiments.tables.nope"),
    (["local", "nope.deeper", "--workdir=/w"], "no experiment experiments.nope.deeper"),
    (["local", "tables", "--outdir=/w"], "is a package"),
    (["local", "bench.ppo_peer", "--outdir=/w"], "has no __main__ block"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
  assert main(argv) == 2
  captured = capsys.readouterr()
  assert message in captured.err and len(captured.err.strip().splitlines()) == 1
  assert captured.out == ""


def test_checking_an_experiment_does_not_import_it():
  """The launcher must stay fast and JAX-free: finding the script must not execute it (flags are checked in a
  subprocess)."""
  code = ("import sys, launch; launch.check_experiment('tables.vae_iwae'); launch.check_experiment('gan'); "
          "launch.slurm_script('gan', '/w', tasks_per_node=2); launch.tpu_vm('gan', '/w', tpu='t', zone='z'); "
          "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('experiments.')))")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
  assert done.stdout.strip() == "['experiments.tables']"


def test_command_line_passes_flags_after_double_dash(capsys):
  assert main(["local", "gan", "--workdir=/w", "--", "--config.steps=3"]) == 0
  assert capsys.readouterr().out.strip() == "python -m experiments.gan --workdir=/w --config.steps=3"
