"""Launchers: start an experiment locally, as a SLURM job, or on every worker of a Cloud TPU VM.

    python -m launch local autoencoder --workdir=/tmp/vae -- --config.steps=500
    python -m launch local tables.gan_modes --outdir=/tmp/gan_modes -- --config.steps=200
    python -m launch slurm gan --workdir=/scratch/gan --nodes=2 --gpus_per_node=4 --submit
    python -m launch slurm autoencoder --workdir=/scratch/vae --tasks_per_node=4 --partition=cpu --submit
    python -m launch tpu_vm ppo --workdir=/mnt/shared/ppo --tpu=my-tpu --zone=us-central2-b

`local` and `tpu_vm` print a command. `slurm` writes a batch script into the workdir and prints
the `sbatch` command that submits it, or with `--submit` submits it and prints the job id.
Before a SLURM script is written or a TPU command printed, the experiment's flags are checked
here, as the experiment will check them (`launch/validate.py`, in a subprocess: this package
imports no JAX), so a typo fails at once with the experiment's own one-line error instead of
on the cluster.

Runs (experiments/<name>.py) take `--workdir`; tables and benchmarks (experiments/tables/,
experiments/bench/) take `--outdir`. The launcher picks the right one, so either spelling works on
its own command line.

Multi-process runs need no extra flags: `research.train.distributed.initialize_distributed()`
detects SLURM (one task per process: per GPU, or per CPU process on a CPU partition) and Cloud
TPU (every worker runs the same command).
"""

import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

TARGETS = ("local", "slurm", "tpu_vm", "plan")

# Subpackages of experiments/ whose scripts write reports to --outdir rather than train in a --workdir.
OUTDIR_PACKAGES = ("tables", "bench")

# The batch script's name inside the workdir; resubmitting it resumes the run.
SLURM_SCRIPT = "slurm.sh"

# CPUs per task unless --cpus_per_task says otherwise: data loading and XLA's host threads of one
# GPU, or one CPU process's share of a node.
DEFAULT_CPUS_PER_TASK = 8

# Variables that make a process join a multi-process run (research/train/distributed.py); the
# local flag check must not, even when the launcher runs inside an allocation.
_CLUSTER_ENV_PREFIXES = ("SLURM_", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                         "TPU_WORKER_HOSTNAMES")

# Seconds the local flag check may take (it imports JAX and the experiment).
_CHECK_TIMEOUT_S = 600


def checkout() -> str:
  """The checkout this launcher runs from: the directory holding launch/ and experiments/."""
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def experiment_args(experiment: str, directory: str, overrides: Sequence[str] = (),
                    python: str = "python") -> list[str]:
  """`python -m experiments.<experiment> --workdir=... <overrides>` as an argument list.

  Args:
    experiment: a module under experiments/, e.g. "autoencoder" or "tables.gan_modes".
    directory: the run's directory; passed as --outdir to tables and benchmarks, else --workdir.
    overrides: extra flags, e.g. ["--config.steps=100"].
    python: the interpreter.

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
  return [python, "-m", f"experiments.{experiment}", f"--{directory_flag(experiment)}={directory}", *overrides]


def check_flags(experiment: str, directory: str, overrides: Sequence[str] = (), devices: int = 0) -> None:
  """Checks the experiment's flags as the experiment will, without training (`launch/validate.py`).

  Runs in a subprocess of this interpreter, on the CPU backend with `devices` simulated devices,
  outside any cluster; nothing is written.

  Args:
    experiment: a module under experiments/.
    directory: the run's directory, passed on as the experiment's directory flag.
    overrides: the experiment's flags.
    devices: the job's device count (the mesh and batch checks depend on it); 0: the fewest the
      config's mesh fits.

  Raises:
    ValueError: with the experiment's own one-line error, if it refuses the flags.
  """
  args = experiment_args(experiment, directory, overrides, python=sys.executable)
  env = {name: value for name, value in os.environ.items() if not name.startswith(_CLUSTER_ENV_PREFIXES)}
  env["JAX_PLATFORMS"] = "cpu"
  # A simulated device count in XLA_FLAGS would contradict --devices.
  env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                              if not flag.startswith("--xla_force_host_platform_device_count"))
  command = [sys.executable, "-m", "launch.validate", experiment, f"--devices={devices}", "--", *args[3:]]
  try:
    done = subprocess.run(command, cwd=checkout(), env=env, capture_output=True, text=True,
                          timeout=_CHECK_TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired as e:
    raise ValueError(f"checking the flags of experiments.{experiment} took over {_CHECK_TIMEOUT_S} s") from e
  if done.returncode != 0:
    raise ValueError(_error_line(done.stderr) or f"experiments.{experiment} exited with {done.returncode}")


def _error_line(stderr: str) -> str:
  """The reason in a refused experiment's stderr: its `error: ...` line, absl's flag error, or the last line."""
  lines = [line.strip() for line in stderr.splitlines() if line.strip()]
  for line in reversed(lines):
    if line.startswith("error: "):
      return line[len("error: "):]
  for line in lines:
    if line.startswith("FATAL "):  # absl's own flag parser: "FATAL Flags parsing error: ..."
      return line[len("FATAL "):]
  return lines[-1] if lines else ""


def local(experiment: str, directory: str, overrides: Sequence[str] = (), devices: int = 0) -> str:
  """A shell command for this machine; `devices` > 0 simulates that many CPU devices."""
  prefix = f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} " if devices > 0 else ""
  return prefix + shlex.join(experiment_args(experiment, directory, overrides))


def activation(python: str) -> str:
  """The shell line that makes `python`'s environment the job's, as activating it would.

  A virtual environment is sourced (`bin/activate`); any other interpreter (a conda env, pyenv, the
  system's) has its directory put first on PATH.
  """
  bin_dir = os.path.dirname(python)
  activate = os.path.join(bin_dir, "activate")
  if os.path.isfile(os.path.join(os.path.dirname(bin_dir), "pyvenv.cfg")) and os.path.isfile(activate):
    return f"source {shlex.quote(activate)}"
  return f'export PATH={shlex.quote(bin_dir)}:"$PATH"'


def _sbatch_path(directory: str, pattern: str) -> str:
  """`directory/pattern` for an #SBATCH line: double-quoted (sbatch strips the quotes), with a `%` in
  the directory doubled so that SLURM reads it as itself and only the pattern's `%j` as the job id."""
  if '"' in directory or "\n" in directory:
    raise ValueError(f"a SLURM path cannot contain a double quote or a newline: {directory!r}")
  return '"' + os.path.join(directory.replace("%", "%%"), pattern) + '"'


def _slurm_tasks(gpus_per_node: int | None, tasks_per_node: int | None) -> tuple[int, int]:
  """(tasks per node, GPUs per node) from the two exclusive ways of asking; neither: one GPU."""
  if gpus_per_node is not None and tasks_per_node is not None:
    raise ValueError("give --gpus_per_node (one task per GPU) or --tasks_per_node (a CPU partition), not both")
  if tasks_per_node is not None:
    if tasks_per_node < 1:
      raise ValueError(f"tasks_per_node must be >= 1, got {tasks_per_node}")
    return tasks_per_node, 0
  gpus = 1 if gpus_per_node is None else gpus_per_node
  if gpus < 1:
    raise ValueError(f"gpus_per_node must be >= 1, got {gpus}; on a CPU partition give --tasks_per_node")
  return gpus, gpus


def slurm_script(experiment: str, directory: str, overrides: Sequence[str] = (), nodes: int = 1,
                 gpus_per_node: int | None = None, tasks_per_node: int | None = None,
                 cpus_per_task: int = DEFAULT_CPUS_PER_TASK, time: str = "24:00:00", partition: str = "",
                 checkout_dir: str | None = None, python: str | None = None, setup: str | None = None) -> str:
  """An sbatch script running the experiment as one task per process of one multi-process run.

  The job changes to the checkout, activates the environment and runs `srun` with
  `--kill-on-bad-exit`, so one task's death ends the step (and the job) instead of leaving the
  others waiting in a collective. Its log goes to `<directory>/slurm-<job id>.out`, which SLURM
  opens before the job starts: that directory must exist when sbatch runs (see `write_slurm_script`).

  Args:
    experiment: a module under experiments/.
    directory: the run's directory, made absolute (the job runs in the checkout).
    overrides: the experiment's flags.
    nodes: nodes.
    gpus_per_node: GPUs per node, one task each (the default: 1).
    tasks_per_node: tasks per node on a CPU partition (no GPUs requested); exclusive with gpus_per_node.
    cpus_per_task: CPUs of each task.
    time: the time limit.
    partition: the partition; empty: the cluster's default.
    checkout_dir: the checkout the job runs in; default: this one.
    python: the interpreter; default: the one running the launcher.
    setup: shell lines run before the experiment (module loads, activation); default: activate
      the environment of `python`.

  Returns:
    The script's text.

  Raises:
    ValueError: on bad sizes, a path SLURM cannot take, or a bad experiment or override.
  """
  tasks, gpus = _slurm_tasks(gpus_per_node, tasks_per_node)
  if nodes < 1 or cpus_per_task < 1:
    raise ValueError(f"nodes and cpus_per_task must be >= 1, got {nodes} and {cpus_per_task}")
  directory = os.path.abspath(directory)
  python = python or sys.executable
  setup = activation(python) if setup is None else setup
  command = experiment_args(experiment, directory, overrides, python=python)
  lines = ["#!/bin/bash", f"#SBATCH --job-name={experiment.replace('.', '_')}", f"#SBATCH --nodes={nodes}",
           f"#SBATCH --ntasks-per-node={tasks}", f"#SBATCH --cpus-per-task={cpus_per_task}"]
  if gpus:
    lines.append(f"#SBATCH --gpus-per-node={gpus}")
  lines += [f"#SBATCH --time={time}", f"#SBATCH --output={_sbatch_path(directory, 'slurm-%j.out')}"]
  if partition:
    lines.append(f"#SBATCH --partition={partition}")
  lines += ["", "# Written by `python -m launch slurm`. Submitting it again resumes the run from its last checkpoint.",
            "set -eo pipefail", f"cd {shlex.quote(checkout_dir or checkout())}"]
  if setup:
    lines.append(setup)
  lines += ["export PYTHONUNBUFFERED=1",
            # srun does not take --cpus-per-task from sbatch's (SLURM 22.05 and later): say it again.
            f"srun --kill-on-bad-exit=1 --cpus-per-task={cpus_per_task} " + shlex.join(command), ""]
  return "\n".join(lines)


def write_slurm_script(script: str, directory: str) -> str:
  """Creates `directory` (SLURM opens the log there before the job starts) and writes the script into it.

  Returns:
    The script's path.
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, SLURM_SCRIPT)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(script)
  os.replace(path + ".tmp", path)
  return path


def sbatch(path: str) -> str:
  """Submits a batch script with sbatch and returns the job id.

  Raises:
    RuntimeError: if sbatch is missing or refuses the job (with its message).
  """
  try:
    done = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True, timeout=120, check=False)
  except FileNotFoundError as e:
    raise RuntimeError("sbatch not found: submit from a machine of the SLURM cluster") from e
  if done.returncode != 0:
    message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
    raise RuntimeError(f"sbatch refused {path}: {message}")
  return done.stdout.strip().split(";")[0]  # --parsable: "<job id>[;<cluster>]"


def slurm(experiment: str, directory: str, overrides: Sequence[str] = (), nodes: int = 1,
          gpus_per_node: int | None = None, tasks_per_node: int | None = None,
          cpus_per_task: int = DEFAULT_CPUS_PER_TASK, time: str = "24:00:00", partition: str = "",
          checkout_dir: str | None = None, python: str | None = None, setup: str | None = None,
          submit: bool = False) -> str:
  """Checks the experiment's flags, writes `slurm_script(...)` into the workdir and, if asked, submits it.

  The flags are checked for the job's device count (one device per task) before anything is
  written. Arguments are `slurm_script`'s, plus `submit`.

  Returns:
    The job id if `submit`, else the command that submits the script (`sbatch <workdir>/slurm.sh`).

  Raises:
    ValueError: on bad sizes or paths, or flags the experiment refuses (its own message).
    RuntimeError: if sbatch is missing or refuses the job.
  """
  script = slurm_script(experiment, directory, overrides, nodes, gpus_per_node, tasks_per_node, cpus_per_task,
                        time, partition, checkout_dir, python, setup)
  tasks, _ = _slurm_tasks(gpus_per_node, tasks_per_node)
  check_flags(experiment, os.path.abspath(directory), overrides, devices=nodes * tasks)
  path = write_slurm_script(script, directory)
  return sbatch(path) if submit else f"sbatch {shlex.quote(path)}"


def remote_checkout() -> str:
  """This checkout's path for another machine: under `~` when it is under this home directory."""
  home = os.path.expanduser("~")
  path = checkout()
  return "~/" + os.path.relpath(path, home) if path.startswith(home + os.sep) else path


def _cd(path: str) -> str:
  """`cd path`, quoted, with a leading `~/` left for the remote shell to expand."""
  if path == "~" or path.startswith("~/"):
    rest = path[2:]
    return "cd ~" + (f"/{shlex.quote(rest)}" if rest else "")
  return f"cd {shlex.quote(path)}"


def tpu_vm(experiment: str, directory: str, overrides: Sequence[str] = (), tpu: str = "", zone: str = "",
           checkout_dir: str | None = None, python: str = "python3", setup: str | None = None) -> str:
  """A gcloud command running the experiment on every worker of a Cloud TPU VM.

  Args:
    experiment: a module under experiments/.
    directory: the run's directory on the workers (a directory they all share).
    overrides: the experiment's flags.
    tpu: the TPU's name.
    zone: its zone.
    checkout_dir: where the checkout is on every worker; default: this checkout's path, under
      the remote home directory when it is under the local one.
    python: the workers' interpreter.
    setup: shell commands run in the checkout first; default: install the package with its `tpu`
      extra into `python` (a no-op where it is installed).

  Returns:
    The command.
  """
  if not tpu or not zone:
    raise ValueError("tpu_vm needs --tpu and --zone")
  setup = f'{python} -m pip install --quiet -e ".[tpu]"' if setup is None else setup
  steps = [_cd(checkout_dir or remote_checkout()), setup,
           shlex.join(experiment_args(experiment, directory, overrides, python=python))]
  remote = " && ".join(step for step in steps if step)
  return shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}", "--worker=all",
                     f"--command={remote}"])
