"""`python -m launch plan EXPERIMENT --devices=N -- <experiment flags>`: what a run needs, before renting it.

    python -m launch plan gpt2 --devices=8 -- --config=experiments/gpt2.py:124m
    python -m launch plan gpt2 --devices=8 --accelerator=A100 --mfu=0.3 -- \\
        --config=experiments/gpt2.py:124m --config.mesh.fsdp=8 --config.mesh.data=1

Simulates N CPU devices, builds the experiment's task and one step's batch from its config
alone (the experiment's `plan_inputs(config)`: shapes, no data, no tokenizer files) and hands
them to research.train.plan, which compiles the loop's training step for that mesh without
running it and prints parameters, FLOPs, per-device memory, compile time, and the step time and
total time at a stated MFU on named accelerators, with settings that fit where it does not.
"""

import importlib
import json
import sys

from research.checks import ConfigError


def main(experiment: str, devices: int, argv, accelerators, mfu: float, json_path: str | None = None) -> int:
  """Plans `experiments.<experiment>` with `argv` (its --config flags) on `devices` simulated devices."""
  import jax  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from research.train import plan as plan_lib  # pylint: disable=import-outside-toplevel

  def fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 2

  if devices < 1:
    return fail(f"--devices must be >= 1, got {devices}")
  unknown = [name for name in accelerators if name not in plan_lib.ACCELERATORS]
  if unknown:
    return fail(f"unknown accelerator {unknown[0]!r}; choose from: {', '.join(plan_lib.ACCELERATORS)}")
  if not 0 < mfu <= 1:
    return fail(f"--mfu must be in (0, 1], got {mfu}")
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", devices)
  try:
    module = importlib.import_module(f"experiments.{experiment}")
  except ImportError:
    return fail(f"no experiment experiments.{experiment}")
  if not hasattr(module, "plan_inputs"):
    return fail(f"experiments.{experiment} cannot be planned (it has no plan_inputs)")
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", module.__file__, flag_values=flag_values, lock_config=True)
  try:
    flag_values([f"experiments.{experiment}", *argv])
    config = flag_values.config
    check = getattr(module, "check_config", None)
    if check is not None:
      check(config)
    task, batch = module.plan_inputs(config)
  except (ConfigError, flags.Error, KeyError, ValueError, TypeError, AttributeError) as e:
    return fail(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
  summary = plan_lib.plan(task, config, batch)
  preset = next((arg.split(":", 1)[1] for arg in argv if arg.startswith("--config=") and ":" in arg), "")
  title = f"experiments.{experiment}" + (f" (preset {preset})" if preset else "")
  print(plan_lib.report(summary, accelerators, mfu, title))
  if json_path:
    with open(json_path, "w") as f:
      json.dump(summary, f, indent=1)
  return 0
