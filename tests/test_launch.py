"""Launchers build command lines; the local one actually runs."""

import shlex

import pytest

import launch
from launch.__main__ import main


def test_local_command_runs_the_experiment_module():
  command = launch.local("autoencoder", "/tmp/w d", ["--config.steps=5"], devices=4)
  assert command.startswith("XLA_FLAGS=--xla_force_host_platform_device_count=4 ")
  assert shlex.split(command)[1:] == ["python", "-m", "experiments.autoencoder", "--workdir=/tmp/w d",
                                      "--config.steps=5"]


def test_slurm_script_has_one_task_per_gpu():
  script = launch.slurm("gan", "/scratch/g", ["--config.loss=wgan_gp"], nodes=2, gpus_per_node=4)
  assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script
  assert script.splitlines()[-1] == "srun python -m experiments.gan --workdir=/scratch/g --config.loss=wgan_gp"


def test_tpu_vm_runs_on_every_worker():
  command = shlex.split(launch.tpu_vm("ppo", "/tmp/p", tpu="t1", zone="z"))
  assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t1"] and "--worker=all" in command


@pytest.mark.parametrize("argv,message", [
    (["tpu_vm", "ppo", "--workdir=/w"], "tpu_vm needs --tpu and --zone"),
    (["local", "bad-name", "--workdir=/w"], "bad experiment name"),
    (["slurm", "gan", "--workdir=/w", "--nodes=0"], "nodes and gpus_per_node must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1


def test_command_line_passes_flags_after_double_dash(capsys):
  assert main(["local", "gan", "--workdir=/w", "--", "--config.steps=3"]) == 0
  assert capsys.readouterr().out.strip() == "python -m experiments.gan --workdir=/w --config.steps=3"
