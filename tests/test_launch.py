"""Launchers build command lines; the local one is run here, the SLURM one against a stand-in sbatch."""

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

from conftest import ROOT


def _runnable_experiments() -> list[str]:
  """Every script under experiments/ with a __main__ block, as launch names it ("tables.gan_modes")."""
  names = []
  for path in sorted(pathlib.Path(ROOT, "experiments").rglob("*.py")):
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
  assert documented == {launch.directory_flag(experiment)}


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
  script = launch.slurm_script("gan", "/scratch/g", ["--config.loss=wgan_gp"], nodes=2, gpus_per_node=4)
  assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script
  assert "#SBATCH --output=/scratch/g/slurm-%j.out" in script
  assert script.splitlines()[-1] == "srun python -m experiments.gan --workdir=/scratch/g --config.loss=wgan_gp"


def test_slurm_command_creates_the_log_directory_before_sbatch(tmp_path):
  """A stand-in sbatch fails unless the --output directory already exists, and keeps the script it was fed."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "sbatch"
  fake.write_text('#!/bin/bash\nset -e\nscript=$(cat)\n'
                  'dir=$(dirname "$(sed -n "s/^#SBATCH --output=//p" <<<"$script")")\n'
                  '[ -d "$dir" ] || { echo "no directory $dir" >&2; exit 1; }\n'
                  'printf "%s\\n" "$script" > "$SUBMITTED"\n')
  fake.chmod(0o755)
  workdir = tmp_path / "runs" / "vae"
  command = launch.slurm("autoencoder", str(workdir), ["--config.steps=5"], nodes=2, gpus_per_node=4)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SUBMITTED=str(tmp_path / "submitted"))
  done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60, check=False)
  assert done.returncode == 0, done.stderr
  assert workdir.is_dir()
  assert (tmp_path / "submitted").read_text() == launch.slurm_script(
      "autoencoder", str(workdir), ["--config.steps=5"], nodes=2, gpus_per_node=4)


def test_tpu_vm_runs_on_every_worker():
  command = shlex.split(launch.tpu_vm("ppo", "/tmp/p", tpu="t1", zone="z"))
  assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t1"] and "--worker=all" in command
  assert command[-1] == "--command=cd ~/research && python -m experiments.ppo --workdir=/tmp/p"


@pytest.mark.parametrize("argv,message", [
    (["tpu_vm", "ppo", "--workdir=/w"], "tpu_vm needs --tpu and --zone"),
    (["local", "bad-name", "--workdir=/w"], "bad experiment name"),
    (["slurm", "gan", "--workdir=/w", "--nodes=0"], "nodes and gpus_per_node must be >= 1"),
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
  """The launcher must stay fast and JAX-free: finding the script must not execute it."""
  code = ("import sys, launch; launch.check_experiment('tables.vae_iwae'); launch.check_experiment('gan'); "
          "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('experiments.')))")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
  assert done.stdout.strip() == "['experiments.tables']"


def test_command_line_passes_flags_after_double_dash(capsys):
  assert main(["local", "gan", "--workdir=/w", "--", "--config.steps=3"]) == 0
  assert capsys.readouterr().out.strip() == "python -m experiments.gan --workdir=/w --config.steps=3"
