"""Prints the command (or batch script) that launches an experiment; see launch/__init__.py."""

import argparse
import sys

import launch


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__)
  parser.add_argument("target", choices=launch.TARGETS)
  parser.add_argument("experiment", help="module under experiments/, e.g. autoencoder or tables.gan_modes")
  # One directory under either name: the launcher passes it on as the flag the experiment takes.
  parser.add_argument("--workdir", "--outdir", dest="directory", required=True,
                      help="the run's directory (--outdir for tables and benchmarks)")
  parser.add_argument("--devices", type=int, default=0, help="local: simulated CPU devices")
  parser.add_argument("--nodes", type=int, default=1, help="slurm: nodes")
  parser.add_argument("--gpus_per_node", type=int, default=1, help="slurm: GPUs (tasks) per node")
  parser.add_argument("--time", default="24:00:00", help="slurm: time limit")
  parser.add_argument("--partition", default="", help="slurm: partition")
  parser.add_argument("--tpu", default="", help="tpu_vm: TPU name")
  parser.add_argument("--zone", default="", help="tpu_vm: zone")
  parser.epilog = "Flags after -- are passed to the experiment, e.g. -- --config.steps=100"
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides = argv[argv.index("--") + 1:] if "--" in argv else []
  args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
  args.overrides = overrides
  try:
    if args.target == "local":
      out = launch.local(args.experiment, args.directory, args.overrides, args.devices)
    elif args.target == "slurm":
      out = launch.slurm(args.experiment, args.directory, args.overrides, args.nodes, args.gpus_per_node,
                         args.time, args.partition)
    else:
      out = launch.tpu_vm(args.experiment, args.directory, args.overrides, args.tpu, args.zone)
  except ValueError as e:
    sys.stderr.write(f"error: {e}\n")
    return 2
  print(out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
