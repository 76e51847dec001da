"""A finished run reused without training: what `experiments.sample` and `experiments.evaluate` share.

Both read the experiment that wrote `--workdir` from its `.experiment` mark and the run's config
from its results.json, apply the `--config.<field>=...` overrides that the experiment lists in
its SAMPLING_FIELDS (the sampler's and the evaluation's fields: nothing that shapes training),
and call the experiment's own `run` inside `research.train.reusing`: the loop restores the
newest checkpoint, checks it against the config, and instead of training evaluates it and
writes the samples into the output directory (`DIR/samples/` or `DIR/evaluation/` unless
`--outdir` says otherwise). With the run's own config and seed the figures and samples.npz are
the run's.
"""

import json
import os
import sys

from absl import flags
import ml_collections

from research.train import ConfigError, Reuse, cli, reusing
from research.train.usage import flatten

_OUTDIR = flags.DEFINE_string("outdir", None, "Where the files go (default: a folder of --workdir).")
_SEED = flags.DEFINE_integer("seed", None, "The evaluation and sample keys' seed (default: the run's own).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples to draw (the config's num_samples; default: the run's).")


def _argument(argv: list[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def experiment_of(workdir: str):
  """The experiment module that wrote `workdir` (its `.experiment` mark), if it can be reused."""
  try:
    with open(os.path.join(workdir, cli.OWNER_FILE)) as f:
      name = f.read().strip()
  except OSError:
    raise ConfigError(f"{workdir} holds no run of an experiment (no {cli.OWNER_FILE} mark)") from None
  module = sys.modules.get(name)
  if module is None:
    import importlib  # pylint: disable=import-outside-toplevel
    module = importlib.import_module(name)
  if not hasattr(module, "SAMPLING_FIELDS"):
    raise ConfigError(f"{workdir} was written by {name}, whose runs are not reused from a checkpoint "
                      "(only experiments trained by research.train are)")
  return module


def _set(config: ml_collections.ConfigDict, field: str, value) -> None:
  parent, _, leaf = field.rpartition(".")
  node = config
  for part in parent.split(".") if parent else []:
    node = node[part]
  current = node[leaf]
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
  elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  node[leaf] = value


def run_config(module, workdir: str, parsed: ml_collections.ConfigDict, overridden: list[str]):
  """The run's config from its results.json, with the `overridden` fields taken from `parsed`."""
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      stored = json.load(f)["config"]
  except (OSError, ValueError, KeyError, TypeError):
    raise ConfigError(f"{workdir} holds no finished run (no readable results.json with its config): "
                      "rerun its command to finish it first") from None
  free = tuple(module.SAMPLING_FIELDS)
  for field in overridden:
    if field not in free:
      listed = ", ".join(free) if free else "none"
      raise ConfigError(f"--config.{field} shapes training, not sampling or evaluation ({module.__name__}'s "
                        f"sampling fields: {listed}); train a new run in another --workdir to change it")
  config = module.get_config()
  for field, _ in flatten(config):
    node, found = stored, True
    for part in field.split("."):
      if isinstance(node, dict) and part in node:
        node = node[part]
      else:
        found = False
        break
    if found:
      try:
        _set(config, field, node)
      except (TypeError, ValueError, KeyError):
        pass  # a field whose stored form this version no longer takes: the checkpoint check names it
  for field in overridden:
    _set(config, field, _get(parsed, field))
  return config


def _get(config, field: str):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def main(kind: str, doc: str) -> None:
  """The script `experiments.<kind>`: reuses --workdir's finished run (kind: sample or evaluate)."""
  argv = sys.argv[1:]
  if any(arg in cli.HELP_FLAGS for arg in argv):
    sys.stdout.write(doc.strip() + "\n")
    sys.exit(0)
  workdir = _argument(argv, "workdir")
  if not workdir:
    cli.fail("--workdir is required: the directory of a finished run")
  if _argument(argv, "config") is not None:
    cli.fail("--config is read from the run's workdir; override its sampling fields with --config.<field>=...")
  try:
    module = experiment_of(workdir)
  except (ConfigError, ImportError) as e:
    cli.fail(str(e))
  overridden = [arg[len("--config."):].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]

  def run(parsed, directory):
    if _NUM_SAMPLES.value is not None:
      if "num_samples" not in module.SAMPLING_FIELDS:
        raise ConfigError(f"--num_samples: {module.__name__} draws no samples counted by num_samples")
      parsed.num_samples = _NUM_SAMPLES.value
      overridden.append("num_samples")
    config = run_config(module, directory, parsed, overridden)
    outdir = _OUTDIR.value or os.path.join(directory, "samples" if kind == "sample" else "evaluation")
    check = getattr(module, "check_config", None)
    if check is not None:
      check(config)
    with reusing(Reuse(outdir, tuple(module.SAMPLING_FIELDS), _SEED.value)):
      return module.run(config, directory)

  cli.main(module.__file__, run)
