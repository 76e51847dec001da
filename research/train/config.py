"""The fields every gradient-trained experiment shares, and their checks (run before anything is compiled)."""

import json
import os

import jax
import ml_collections

from research import optim
from research.checks import ConfigError, check_choice, check_positive  # re-exported
from research.train import parallel

DTYPES = ("float32", "bfloat16")


def check_common(config: ml_collections.ConfigDict) -> None:
  """Checks the fields every gradient-trained experiment shares (the dataset is the experiment's to check).

  Args:
    config: an experiment config with the fields of `base_config`.

  Raises:
    ConfigError: on the first bad field.
  """
  check_positive("steps", config.steps, allow_zero=True)
  check_positive("batch_size", config.batch_size)
  check_positive("grad_accum", config.grad_accum)
  check_positive("steps_per_call", config.steps_per_call)
  check_choice("dtype", config.dtype, DTYPES)
  sizes = parallel.mesh_shape(config.mesh)
  if config.batch_size % config.grad_accum:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by grad_accum {config.grad_accum}")
  split = sizes[parallel.DATA_AXIS] * sizes[parallel.FSDP_AXIS]
  micro = config.batch_size // config.grad_accum
  if micro % split:
    if config.grad_accum == 1 and split == jax.device_count():
      raise ConfigError(f"batch_size {config.batch_size} is not divisible by the device count {split}")
    raise ConfigError(f"the microbatch of {micro} examples (batch_size / grad_accum) is not divisible by the "
                      f"data x fsdp mesh size {split}")
  optim.check(config.optimizer)
  if config.optimizer.schedule != "constant" and config.optimizer.warmup_steps > config.steps > 0:
    raise ConfigError(f"optimizer.warmup_steps {config.optimizer.warmup_steps} is longer than the run's "
                      f"{config.steps} steps: the learning rate would never reach its peak")
  check_positive("checkpoint_every", config.checkpoint_every)
  check_positive("log_every", config.log_every)
  check_positive("eval_every", config.eval_every, allow_zero=True)
  check_positive("sample_every", config.sample_every, allow_zero=True)
  check_positive("keep_checkpoints", config.keep_checkpoints)
  check_positive("prefetch", config.prefetch, allow_zero=True)
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f"ema_decay must be in [0, 1), got {config.ema_decay}")


def check_workdir(workdir: str) -> None:
  """Raises ConfigError if `workdir` cannot be a run directory (a file, or not writable)."""
  if not workdir:
    raise ConfigError("--workdir is empty")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir {workdir} is a file, not a directory")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    raise ConfigError(f"--workdir {workdir} cannot be created or written ({parent} is not a writable directory)")


# Fields that shape how a run is carried out, not what it trains: a resumed run may change them.
RUN_ONLY_FIELDS = ("checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "sample_every",
                   "steps_per_call", "prefetch", "mesh.data", "mesh.fsdp", "mesh.tensor")


def _flat(tree, prefix: str = "") -> dict:
  out = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{name}."))
    else:
      out[f"{prefix}{name}"] = value
  return out


def changed_fields(stored: dict, config) -> list[tuple[str, object, object]]:
  """(field, stored value, this config's value) of each field a resume may not change.

  `stored` is the config saved with a checkpoint (JSON). Fields of RUN_ONLY_FIELDS may change;
  so may `steps` under a constant learning rate (training longer, or stopping earlier, follows
  the same updates); a field the stored config lacks (written before it existed) is not compared.
  """
  now = _flat(json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config),
                                    default=list)))
  before = _flat(stored)
  free = set(RUN_ONLY_FIELDS)
  if now.get("optimizer.schedule", "constant") == "constant" == before.get("optimizer.schedule", "constant"):
    free.add("steps")
  return [(field, before[field], value) for field, value in now.items()
          if field in before and field not in free and before[field] != value]


def base_config() -> ml_collections.ConfigDict:
  """The fields every gradient-trained experiment shares; experiments add their own."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds parameter init, data order and every per-step key
  config.steps = 1000  # number of optimizer updates
  config.batch_size = 64  # global batch size per update (split over devices and microbatches)
  config.grad_accum = 1  # microbatches per update: gradients accumulated in the step, memory / grad_accum
  config.dataset = "digits"  # a name known to research.data (each experiment checks its own)
  config.optimizer = optim.default_config()  # see research/optim.py
  config.checkpoint_every = 500  # save a checkpoint every this many steps (and at the end)
  config.keep_checkpoints = 3  # keep the newest this many checkpoints
  config.log_every = 100  # write metrics (averaged over the interval) and a progress line every this many steps
  config.eval_every = 0  # evaluate on the evaluation split every this many steps; 0: only at the end
  config.sample_every = 0  # write samples every this many steps; 0: only at the end
  config.ema_decay = 0.0  # decay of the parameter EMA; 0 disables it
  config.steps_per_call = 1  # steps compiled into one call (a lax.scan): fewer dispatches for small models
  config.prefetch = 2  # batches gathered and transferred ahead of the step that uses them
  config.dtype = "float32"  # compute dtype (bfloat16 on GPU/TPU); parameters and optimizer state stay float32
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # devices on the data-parallel axis (-1: the rest)
  config.mesh.fsdp = 1  # devices over which parameters and optimizer state are sharded
  config.mesh.tensor = 1  # devices over which attention heads and MLP units are split
  return config
