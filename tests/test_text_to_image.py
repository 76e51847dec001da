"""experiments/text_to_image.py end to end on its smoke preset: the three stages, the samples, a rerun, --prompt,
and bad input refused before anything is written."""

import json
import os
import re

import numpy as np
import pytest

from experiments import text_to_image
from research.data import captions
from research.tasks import latent_diffusion as ld
from research.tasks import shapes_reader
from research.train import ConfigError
from tests.conftest import run_python

SMOKE = "--config=experiments/text_to_image.py:smoke"
KEYS = {"clip_score", "clip_score_seen", "clip_score_held_out", "autoencoder_psnr", "scaling_factor",
        "diffusion_train_loss", "clip_colour_accuracy", "clip_shape_accuracy", "clip_size_accuracy",
        "clip_position_accuracy"}
# The samples' prompt accuracy (a share) and their sample metrics in the shapes reader's space (>= 0, a share, a count).
SHARES = set(shapes_reader.PROMPT_METRICS) | {"precision", "recall", "precision_real", "recall_real", "confidence",
                                              "confidence_real"}
DISTANCES = {"fid", "fid_real", "fid_ratio", "kid_se", "kid_se_real"}
PROMPT = "a large blue square at the bottom right"


def _cli(workdir, *args):
  return run_python(["-m", "experiments.text_to_image", f"--workdir={workdir}", SMOKE, *args])


@pytest.mark.slow
def test_smoke_trains_every_stage_samples_and_reruns_without_training(tmp_path, capfd):
  # Trained and rerun in this process; the --prompt sampling between them runs the command line.
  workdir = str(tmp_path / "run")
  text_to_image.run(text_to_image.get_config("smoke"), workdir)
  for stage in text_to_image.STAGES:
    with open(os.path.join(workdir, stage, "results.json")) as f:
      assert json.load(f)["step"] > 0, stage
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert KEYS <= set(results)
  assert all(isinstance(results[k], float) and np.isfinite(results[k]) for k in KEYS)
  assert results["scaling_factor"] > 0
  assert all(isinstance(results[k], float) and 0.0 <= results[k] <= 1.0 for k in SHARES), {k: results[k] for k in SHARES}
  assert all(isinstance(results[k], float) and results[k] >= 0.0 for k in DISTANCES)
  assert np.isfinite(results["kid"]) and np.isfinite(results["kid_real"])  # unbiased: may fall below 0
  num = text_to_image.get_config("smoke").latent_diffusion.num_samples
  assert results["num_samples"] == results["num_scored"] == num
  assert 1 <= results["classes_covered"] <= 21 and len(results["class_shares"]) == 21
  assert sum(results["class_shares"]) == pytest.approx(1.0, abs=1e-3)
  samples = np.load(os.path.join(workdir, "samples.npz"))
  prompts, held = ld.eval_prompts(text_to_image.get_config("smoke").latent_diffusion.num_samples)
  assert samples["images"].shape == (len(prompts), 32, 32, 3) and samples["images"].dtype == np.float32
  assert 0.0 <= samples["images"].min() and samples["images"].max() <= 1.0
  assert list(samples["prompts"]) == prompts and held.any() and not held.all()  # seen and held-out pairs
  assert os.path.getsize(os.path.join(workdir, "samples.png")) > 0

  # A rerun restores every stage; --prompt samples the finished workdir without training.
  again = _cli(workdir, f"--prompt={PROMPT}", "--num_samples=3", "--config.guidance_scale=3")
  assert again.returncode == 0, again.stderr[-3000:]
  for stage in text_to_image.STAGES[:2]:
    assert f"stage {stage}: finished" in again.stderr
  assert "training" not in again.stderr
  drawn = np.load(os.path.join(workdir, "prompt_samples.npz"))
  assert drawn["images"].shape == (3, 32, 32, 3) and drawn["images"].dtype == np.float32
  assert list(drawn["prompts"]) == [PROMPT] * 3
  accuracy = re.search(r"^prompt accuracy ([0-9.]+) over 3 samples: the share the shapes attribute reader reads as "
                       r"prompted \(colour ([0-9.]+), shape ([0-9.]+), size ([0-9.]+), position ([0-9.]+)\)$",
                       again.stdout, re.M)
  assert accuracy, again.stdout[-2000:]
  shares = [float(x) for x in accuracy.groups()]
  assert all(abs(share * 3 - round(share * 3)) < 0.02 for share in shares)  # shares of 3 samples, 2 decimals
  assert shares[0] <= min(shares[1:])  # all four right is at most as common as any one right
  assert os.path.exists(os.path.join(workdir, "prompt_samples.png"))
  capfd.readouterr()
  text_to_image.run(text_to_image.get_config("smoke"), workdir)
  rerun = capfd.readouterr().err
  for stage in text_to_image.STAGES:
    assert f"stage {stage}: finished" in rerun
  assert "training" not in rerun


def _finished_workdir(tmp_path, config) -> str:
  """A workdir whose stages report their steps (no checkpoints: enough for the prompt checks)."""
  workdir = str(tmp_path / "done")
  for stage in text_to_image.STAGES:
    os.makedirs(os.path.join(workdir, stage))
    with open(os.path.join(workdir, stage, "results.json"), "w") as f:
      json.dump({"step": config[stage].steps}, f)
  captions.CaptionTokenizer(["a", "red", "circle", "at", "the", "top", "left"]).save(
      os.path.join(workdir, "clip", "tokenizer.json"))
  return workdir


@pytest.mark.parametrize("prompt, message", [
    ("", "--prompt is empty"),
    ("  ", "--prompt is empty"),
    ("a purple circle", "the word 'purple' is not in the captions' vocabulary"),
    ("a red circle at the top left " * 3, "at most 16 fit"),
])
def test_bad_prompt_is_refused_before_anything_is_written(tmp_path, prompt, message):
  config = text_to_image.get_config("smoke")
  workdir = _finished_workdir(tmp_path, config)
  before = sorted(os.listdir(workdir))
  with pytest.raises(ConfigError, match=message):
    text_to_image.run(config, workdir, prompt=prompt, num_samples=2)
  assert sorted(os.listdir(workdir)) == before


def test_prompt_needs_a_finished_run(tmp_path):
  config = text_to_image.get_config("smoke")
  workdir = _finished_workdir(tmp_path, config)
  with open(os.path.join(workdir, "latent_diffusion", "results.json"), "w") as f:
    json.dump({"step": 1}, f)  # killed early
  with pytest.raises(ConfigError, match="no finished text_to_image run"):
    text_to_image.run(config, workdir, prompt="a red circle", num_samples=2)
  assert not os.path.exists(os.path.join(workdir, "prompt_samples.npz"))


@pytest.mark.parametrize("args, message", [
    (["--prompt=a red circle"], "has no finished text_to_image run"),
    (["--config.autoencoder.channel_mult=(1,1,1,1,1)"], "block_out_channels needs 1 to 4 blocks"),
    (["--config.latent_diffusion.unet_channels=(32,32,32,32,32)"], "U-Net levels do not fit"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
  workdir = str(tmp_path / "new")
  out = _cli(workdir, *args)
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last
  assert not os.path.exists(workdir)
