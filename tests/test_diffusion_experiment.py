"""The diffusion experiment end to end (smoke preset) and its bad input from the command line."""

import json

import numpy as np
import pytest

from conftest import run_python
from experiments import diffusion as experiment


def test_smoke_run_writes_scored_samples(tmp_path):
  config = experiment.get_config("smoke")
  results = experiment.run(config, str(tmp_path))
  samples = np.load(tmp_path / "samples.npz")["images"]
  assert samples.shape == (config.num_samples, 8, 8, 1) and 0.0 <= samples.min() and samples.max() <= 1.0
  assert results["num_samples"] == config.num_samples and np.isfinite(results["fid"])
  assert 0.0 <= results["precision"] <= 1.0 and len(results["class_shares"]) == 10
  np.testing.assert_allclose(sum(results["class_shares"]), 1.0, atol=1e-3)
  assert json.loads((tmp_path / "results.json").read_text())["fid"] == results["fid"]
  # The written samples are the scored ones: their FID is the reported one.
  from research.tasks import classifier as classifier_tasks  # pylint: disable=import-outside-toplevel
  np.testing.assert_allclose(classifier_tasks.digits_fid(samples), results["fid"], rtol=1e-5)


def test_long_preset_is_the_default_model_trained_longer():
  default, long = experiment.get_config().to_dict(), experiment.get_config("long").to_dict()
  changed = {k for k in default if default[k] != long[k]}
  assert changed == {"steps", "checkpoint_every", "log_every", "ema_decay"} and long["steps"] == 4 * default["steps"]
  # Either EMA leaves the initial weights a negligible share (decay^steps) at the end of its run.
  assert default["ema_decay"] ** default["steps"] < 1e-5 and long["ema_decay"] ** long["steps"] < 1e-5
  with pytest.raises(ValueError, match="unknown preset 'longer'"):
    experiment.get_config("longer")


@pytest.mark.parametrize("flag,message", [
    ("--config.schedule=quadratic", "unknown schedule 'quadratic'"),
    ("--config.sampler=euler", "unknown sampler 'euler'"),
    ("--config.dit=DiT-Q/2", "unknown dit 'DiT-Q/2'"),
    ("--config.sample_steps=0", "sample_steps must be in [1, num_train_steps = 100], got 0"),
    ("--config.unet_channels=abc", "unet_channels must be positive integers, one per resolution"),
    ("--config.unet_groups=3", "unet_groups 3 must divide every entry of unet_channels"),
    ("--config.unet_attention_levels=(0,2)", "unet_attention_levels must be levels of unet_channels (8, 16) (0..1)"),
    ("--config.sample_steps=101", "sample_steps must be in [1, num_train_steps = 100], got 101"),
    ("--config.eta=-0.5", "eta must be >= 0, got -0.5"),
    ("--config.conditional=False --config.guidance_scale=3.0", "guidance_scale 3.0 needs a conditional model"),
    ("--config.dataset=cifar10", "dataset 'cifar10' is for python -m launch plan only"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, flag, message):
  proc = run_python(["-m", "experiments.diffusion", f"--workdir={tmp_path / 'w'}",
                     "--config=experiments/diffusion.py:smoke", *flag.split()])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr
  assert not (tmp_path / "w").exists()


def test_patch_size_that_does_not_divide_the_image_is_refused():
  from research.models import dit  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="patch size 4 does not divide the input size 6"):
    dit.config("DiT-T/4", input_size=6, in_channels=1, num_classes=10)
