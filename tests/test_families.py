"""Every family in research.models.FAMILIES plugs into the one loop the same way.

Each family's experiment (its smoke preset, cut to two steps) builds the task from
research.tasks.FAMILIES, and the loop initialises it, takes a step, evaluates, samples and
writes results.json. A family added to research.models.FAMILIES without an entry here fails
`test_every_family_is_covered`, so none can join without this check.
"""

import importlib
import json

import numpy as np
import pytest

from research import models, tasks

# Family -> (its experiment module, config overrides, the evaluation's headline metric, the files of its samples).
FAMILIES = {
    "autoencoder": ("experiments.autoencoder", {}, "test_nll_nats", ("samples.png", "reconstructions.png")),
    "gan": ("experiments.gan", {}, "modes_captured", ("samples.png",)),
    "diffusion": ("experiments.diffusion", {}, "fid", ("samples.png",)),
    "dit": ("experiments.diffusion", {"model": "dit"}, "fid", ("samples.png",)),
    "gpt2": ("experiments.gpt2", {}, "val_bits_per_char", ("samples.txt",)),
    "lstm": ("experiments.gpt2", {"model": "lstm"}, "val_bits_per_char", ("samples.txt",)),
    "bert": ("experiments.bert", {}, "mlm_accuracy", ()),  # a masked LM draws no samples
    "classifier": ("experiments.classifier", {}, "test_accuracy", ()),
    "seq2seq": ("experiments.seq2seq", {}, "test_greedy_exact_match", ("samples.txt", "attention.png")),
    "stylegan": ("experiments.stylegan", {}, "ppl", ("samples.png",)),
}
STEPS = 2


def test_every_family_is_covered():
  assert sorted(FAMILIES) == sorted(models.FAMILIES) == sorted(tasks.FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_evaluates_and_samples_on_the_loop(family, tmp_path):
  module_name, overrides, headline, pictures = FAMILIES[family]
  experiment = importlib.import_module(module_name)
  config = experiment.get_config("smoke")
  config.steps = STEPS
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, STEPS)  # a warm-up longer than the run is refused
  for name in ("eval_every", "sample_every", "checkpoint_every", "log_every"):
    if name in config:
      setattr(config, name, STEPS)
  for name, value in overrides.items():
    setattr(config, name, value)
  if hasattr(experiment, "check_config"):
    experiment.check_config(config)
  experiment.run(config, str(tmp_path))

  results = json.loads((tmp_path / "results.json").read_text())
  assert results["step"] == STEPS
  assert np.isfinite(results["train_loss"]), results["train_loss"]
  assert headline in results and np.all(np.isfinite(results[headline])), (headline, sorted(results))
  for key in ("config", "devices", "versions", "wall_time_s", "steps_per_second"):
    assert key in results, key
  assert (tmp_path / "checkpoints" / str(STEPS)).is_dir()
  for name in pictures:
    assert (tmp_path / name).stat().st_size > 0, name
