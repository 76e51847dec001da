"""Launchers: build the command lines that start an experiment locally, on SLURM or on a Cloud TPU VM.

They only build text (argument lists, a batch script); nothing here submits or runs a job:

    python -m launch local autoencoder --workdir=/tmp/vae -- --config.steps=500
    python -m launch slurm gan --workdir=/scratch/gan --nodes=2 --gpus_per_node=4 > job.sbatch
    python -m launch tpu_vm ppo --workdir=gs://bucket/ppo --tpu=my-tpu --zone=us-central2-b

Multi-process runs need no extra flags: `research.train.distributed.initialize_distributed()`
detects SLURM (one task per GPU) and Cloud TPU (every worker runs the same command).
"""

import shlex
from collections.abc import Sequence

TARGETS = ("local", "slurm", "tpu_vm")


def experiment_args(experiment: str, workdir: str, overrides: Sequence[str] = ()) -> list[str]:
  """`python -m experiments.<experiment> --workdir=... <overrides>` as an argument list.

  Args:
    experiment: a module under experiments/, e.g. "autoencoder" or "tables.gan_modes".
    workdir: the run's directory.
    overrides: extra flags, e.g. ["--config.steps=100"].

  Returns:
    The argument list.

  Raises:
    ValueError: if the experiment name is not a dotted module name or an override is not a flag.
  """
  if not experiment or not all(part.isidentifier() for part in experiment.split(".")):
    raise ValueError(f"bad experiment name {experiment!r}: expected a module under experiments/")
  for flag in overrides:
    if not flag.startswith("--"):
      raise ValueError(f"bad override {flag!r}: expected --config.<field>=<value> or another --flag")
  return ["python", "-m", f"experiments.{experiment}", f"--workdir={workdir}", *overrides]


def local(experiment: str, workdir: str, overrides: Sequence[str] = (), devices: int = 0) -> str:
  """A shell command for this machine; `devices` > 0 simulates that many CPU devices."""
  prefix = f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} " if devices > 0 else ""
  return prefix + shlex.join(experiment_args(experiment, workdir, overrides))


def slurm(experiment: str, workdir: str, overrides: Sequence[str] = (), nodes: int = 1, gpus_per_node: int = 1,
          time: str = "24:00:00", partition: str = "") -> str:
  """An sbatch script: one task per GPU, each a JAX process of one multi-process run."""
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError(f"nodes and gpus_per_node must be >= 1, got {nodes} and {gpus_per_node}")
  lines = ["#!/bin/bash", f"#SBATCH --job-name={experiment.replace('.', '_')}", f"#SBATCH --nodes={nodes}",
           f"#SBATCH --ntasks-per-node={gpus_per_node}", f"#SBATCH --gpus-per-node={gpus_per_node}",
           f"#SBATCH --time={time}", f"#SBATCH --output={workdir}/slurm-%j.out"]
  if partition:
    lines.append(f"#SBATCH --partition={partition}")
  lines += ["", "set -euo pipefail", f"mkdir -p {shlex.quote(workdir)}",
            "srun " + shlex.join(experiment_args(experiment, workdir, overrides)), ""]
  return "\n".join(lines)


def tpu_vm(experiment: str, workdir: str, overrides: Sequence[str] = (), tpu: str = "", zone: str = "",
           repo_dir: str = "~/research") -> str:
  """A gcloud command running the experiment on every worker of a Cloud TPU VM."""
  if not tpu or not zone:
    raise ValueError("tpu_vm needs --tpu and --zone")
  remote = f"cd {repo_dir} && " + shlex.join(experiment_args(experiment, workdir, overrides))
  return shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}", "--worker=all",
                     f"--command={remote}"])
