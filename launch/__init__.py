"""Launchers: build the command lines that start an experiment locally, on SLURM or on a Cloud TPU VM.

They only build text; nothing here submits or runs a job:

    python -m launch local autoencoder --workdir=/tmp/vae -- --config.steps=500
    python -m launch local tables.gan_modes --outdir=/tmp/gan_modes -- --config.steps=200
    python -m launch slurm gan --workdir=/scratch/gan --nodes=2 --gpus_per_node=4 | bash
    python -m launch tpu_vm ppo --workdir=/mnt/shared/ppo --tpu=my-tpu --zone=us-central2-b

Runs (experiments/<name>.py) take `--workdir`; tables and benchmarks (experiments/tables/,
experiments/bench/) take `--outdir`. The launcher picks the right one, so either spelling works on
its own command line.

Multi-process runs need no extra flags: `research.train.distributed.initialize_distributed()`
detects SLURM (one task per GPU) and Cloud TPU (every worker runs the same command).
"""

import importlib.util
import shlex
from collections.abc import Sequence

TARGETS = ("local", "slurm", "tpu_vm")

# Subpackages of experiments/ whose scripts write reports to --outdir rather than train in a --workdir.
OUTDIR_PACKAGES = ("tables", "bench")

# Ends the batch script fed to sbatch on stdin; overrides cannot contain it (they have no newlines).
_HEREDOC_END = "SBATCH_SCRIPT"


def directory_flag(experiment: str) -> str:
  """The name of the directory flag `experiments.<experiment>` takes: "outdir" or "workdir"."""
  return "outdir" if experiment.split(".")[0] in OUTDIR_PACKAGES else "workdir"


def check_experiment(experiment: str) -> None:
  """Checks that `experiments.<experiment>` is a runnable script, without importing it.

  Only the parent packages are imported (they are light); the script itself, which pulls in JAX,
  is located and read as text.

  Args:
    experiment: a module under experiments/, e.g. "autoencoder" or "tables.gan_modes".

  Raises:
    ValueError: if the name is not a dotted module name, no such module exists, or it is a
      package or a module without a `__main__` block.
  """
  if not experiment or not all(part.isidentifier() for part in experiment.split(".")):
    raise ValueError(f"bad experiment name {experiment!r}: expected a module under experiments/")
  module = f"experiments.{experiment}"
  try:
    spec = importlib.util.find_spec(module)
  except ModuleNotFoundError:  # a parent package is missing
    spec = None
  if spec is None or spec.origin is None:
    raise ValueError(f"no experiment {module}: no such module")
  if spec.submodule_search_locations is not None:
    raise ValueError(f"{module} is a package, not an experiment script")
  with open(spec.origin, encoding="utf-8") as f:
    source = f.read()
  if '__name__ == "__main__"' not in source and "__name__ == '__main__'" not in source:
    raise ValueError(f"{module} is not runnable: it has no __main__ block")


def experiment_args(experiment: str, directory: str, overrides: Sequence[str] = ()) -> list[str]:
  """`python -m experiments.<experiment> --workdir=... <overrides>` as an argument list.

  Args:
    experiment: a module under experiments/, e.g. "autoencoder" or "tables.gan_modes".
    directory: the run's directory; passed as --outdir to tables and benchmarks, else --workdir.
    overrides: extra flags, e.g. ["--config.steps=100"].

  Returns:
    The argument list.

  Raises:
    ValueError: if the experiment does not exist (see `check_experiment`) or an override is not a
      one-line flag.
  """
  check_experiment(experiment)
  for flag in overrides:
    if not flag.startswith("--") or "\n" in flag:
      raise ValueError(f"bad override {flag!r}: expected --config.<field>=<value> or another --flag")
  return ["python", "-m", f"experiments.{experiment}", f"--{directory_flag(experiment)}={directory}",
          *overrides]


def local(experiment: str, directory: str, overrides: Sequence[str] = (), devices: int = 0) -> str:
  """A shell command for this machine; `devices` > 0 simulates that many CPU devices."""
  prefix = f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} " if devices > 0 else ""
  return prefix + shlex.join(experiment_args(experiment, directory, overrides))


def slurm_script(experiment: str, directory: str, overrides: Sequence[str] = (), nodes: int = 1,
                 gpus_per_node: int = 1, time: str = "24:00:00", partition: str = "") -> str:
  """An sbatch script: one task per GPU, each a JAX process of one multi-process run.

  Its log goes to `<directory>/slurm-<job id>.out`, which SLURM opens before the job starts:
  that directory must exist when sbatch runs (see `slurm`).
  """
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError(f"nodes and gpus_per_node must be >= 1, got {nodes} and {gpus_per_node}")
  command = experiment_args(experiment, directory, overrides)
  lines = ["#!/bin/bash", f"#SBATCH --job-name={experiment.replace('.', '_')}", f"#SBATCH --nodes={nodes}",
           f"#SBATCH --ntasks-per-node={gpus_per_node}", f"#SBATCH --gpus-per-node={gpus_per_node}",
           f"#SBATCH --time={time}", f"#SBATCH --output={directory}/slurm-%j.out"]
  if partition:
    lines.append(f"#SBATCH --partition={partition}")
  lines += ["", "set -euo pipefail", "srun " + shlex.join(command), ""]
  return "\n".join(lines)


def slurm(experiment: str, directory: str, overrides: Sequence[str] = (), nodes: int = 1, gpus_per_node: int = 1,
          time: str = "24:00:00", partition: str = "") -> str:
  """A shell command that creates the log directory, then submits `slurm_script(...)` on sbatch's stdin.

  SLURM opens the --output file before the job's first line runs, so a `mkdir` inside the job
  would come too late and the job would fail without a log; the command creates it first.
  """
  script = slurm_script(experiment, directory, overrides, nodes, gpus_per_node, time, partition)
  return f"mkdir -p {shlex.quote(directory)} && sbatch <<'{_HEREDOC_END}'\n{script}{_HEREDOC_END}"


def tpu_vm(experiment: str, directory: str, overrides: Sequence[str] = (), tpu: str = "", zone: str = "",
           repo_dir: str = "~/research") -> str:
  """A gcloud command running the experiment on every worker of a Cloud TPU VM."""
  if not tpu or not zone:
    raise ValueError("tpu_vm needs --tpu and --zone")
  remote = f"cd {repo_dir} && " + shlex.join(experiment_args(experiment, directory, overrides))
  return shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}", "--worker=all",
                     f"--command={remote}"])
