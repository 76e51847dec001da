"""Checks an experiment's flags the way the experiment itself will, without training; run by the launcher.

    python -m launch.validate EXPERIMENT [--devices=N] -- --workdir=DIR <experiment flags>

Runs `experiments.<EXPERIMENT>` as `__main__` with its entry point defused: scripts built on
`research.train.cli.main` parse `--config` and its overrides, then call the script's own
`check_config(config)` (the checks `run` makes before anything is loaded or written) instead
of `run`; other absl scripts only parse their flags. So a typo such as `--config.stepz=5`
fails here with the experiment's own one-line error and exit status, before a job is queued.

Nothing is written and no cluster is joined: the launcher runs this in a subprocess on the
CPU backend, with the job's device count simulated (`--devices`; 0: the config's mesh sizes),
since the mesh and batch checks depend on it.
"""

import argparse
import math
import runpy
import sys

from absl import app


def _mesh_devices(config) -> int:
  """The fewest devices the config's mesh fits: the product of its fixed sizes (a -1 takes any count)."""
  mesh = config.get("mesh") if hasattr(config, "get") else None
  if mesh is None:
    return 1
  return math.prod(int(size) for size in mesh.values() if int(size) > 0)


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  split = argv.index("--") if "--" in argv else len(argv)
  parser = argparse.ArgumentParser(prog="python -m launch.validate", description=__doc__)
  parser.add_argument("experiment")
  parser.add_argument("--devices", type=int, default=0)
  args = parser.parse_args(argv[:split])
  experiment_argv = argv[split + 1:]

  import jax  # pylint: disable=import-outside-toplevel
  from research.train import cli  # pylint: disable=import-outside-toplevel

  def checks_instead_of_training(run):
    check = getattr(run, "__globals__", {}).get("check_config")

    def run_checks(config, directory):
      del directory  # the job's directory may not exist here (a TPU VM's mount); the launcher made SLURM's
      if args.devices == 0:
        jax.config.update("jax_num_cpu_devices", _mesh_devices(config))
      if check is not None:
        check(config)

    return run_checks

  cli_main, app_run = cli.main, app.run
  in_cli = []

  def cli_main_checking(config_file, run, *rest, **kwargs):
    in_cli.append(True)
    cli_main(config_file, checks_instead_of_training(run), *rest, **kwargs)

  def app_run_parsing(main_fn, *rest, **kwargs):
    # cli.main's own function only checks now; any other script's main would train or measure.
    app_run(main_fn if in_cli else (lambda unused_argv: None), *rest, **kwargs)

  cli.main, app.run = cli_main_checking, app_run_parsing
  jax.config.update("jax_platforms", "cpu")
  if args.devices > 0:
    jax.config.update("jax_num_cpu_devices", args.devices)
  module = f"experiments.{args.experiment}"
  sys.argv = [module, *experiment_argv]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
