"""Starts an experiment locally, on SLURM or on a Cloud TPU VM; see launch/__init__.py."""

import argparse
import sys

import launch


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__)
  parser.add_argument("target", choices=launch.TARGETS)
  parser.add_argument("experiment", help="module under experiments/, e.g. autoencoder or tables.gan_modes")
  # One directory under either name: the launcher passes it on as the flag the experiment takes.
  parser.add_argument("--workdir", "--outdir", dest="directory", default=None,
                      help="the run's directory (--outdir for tables and benchmarks; not for plan)")
  parser.add_argument("--devices", type=int, default=0,
                      help="local: simulated CPU devices; tpu_vm: the TPU's chips, for checking the flags "
                           "(default: as the config's mesh says)")
  parser.add_argument("--nodes", type=int, default=1, help="slurm: nodes")
  tasks = parser.add_mutually_exclusive_group()
  tasks.add_argument("--gpus_per_node", type=int, default=None, help="slurm: GPUs per node, one task each (default 1)")
  tasks.add_argument("--tasks_per_node", type=int, default=None,
                     help="slurm: tasks (processes) per node on a CPU partition, no GPUs requested")
  parser.add_argument("--cpus_per_task", type=int, default=launch.DEFAULT_CPUS_PER_TASK, help="slurm: CPUs per task")
  parser.add_argument("--time", default="24:00:00", help="slurm: time limit")
  parser.add_argument("--partition", default="", help="slurm: partition (default: the cluster's)")
  parser.add_argument("--submit", action="store_true",
                      help="slurm: submit the script with sbatch and print the job id")
  parser.add_argument("--checkout", default=None,
                      help="slurm, tpu_vm: the checkout the job runs in (default: this one; on a TPU VM the "
                           "same path under the remote home)")
  parser.add_argument("--python", default=None,
                      help="slurm, tpu_vm: the interpreter (default: this one on SLURM, python3 on a TPU VM)")
  parser.add_argument("--setup", default=None,
                      help="slurm, tpu_vm: shell commands run in the checkout first (default: activate this "
                           "interpreter's environment on SLURM; install the package's tpu extra on a TPU VM)")
  parser.add_argument("--accelerator", action="append", default=None,
                      help="plan: price the plan on this accelerator (repeat; default: every known one)")
  parser.add_argument("--mfu", type=float, default=0.4, help="plan: the model FLOPs utilisation assumed")
  parser.add_argument("--json", default=None, help="plan: also write the plan's figures to this JSON file")
  parser.add_argument("--tpu", default="", help="tpu_vm: TPU name")
  parser.add_argument("--zone", default="", help="tpu_vm: zone")
  parser.epilog = "Flags after -- are passed to the experiment, e.g. -- --config.steps=100"
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides = argv[argv.index("--") + 1:] if "--" in argv else []
  args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
  if args.target == "plan":
    from launch import plan  # pylint: disable=import-outside-toplevel
    accelerators = args.accelerator or ["H100", "A100", "TPU v5e", "TPU v5p"]
    return plan.main(args.experiment, args.devices or 1, overrides, accelerators, args.mfu, args.json)
  if args.directory is None:
    parser.error("the following arguments are required: --workdir/--outdir")
  try:
    if args.target == "local":
      print(launch.local(args.experiment, args.directory, overrides, args.devices))
    elif args.target == "slurm":
      print(launch.slurm(args.experiment, args.directory, overrides, args.nodes, args.gpus_per_node,
                         args.tasks_per_node, args.cpus_per_task, args.time, args.partition, args.checkout,
                         args.python, args.setup, submit=args.submit))
    else:
      command = launch.tpu_vm(args.experiment, args.directory, overrides, args.tpu, args.zone, args.checkout,
                              args.python or "python3", args.setup)
      launch.check_flags(args.experiment, args.directory, overrides, devices=args.devices)
      print(command)
  except ValueError as e:
    sys.stderr.write(f"error: {e}\n")
    return 2
  except RuntimeError as e:  # sbatch missing or refusing the job
    sys.stderr.write(f"error: {e}\n")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
