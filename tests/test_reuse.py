"""experiments.sample and experiments.evaluate: a finished run's checkpoint evaluated and sampled again, untrained."""

import json
import os

import numpy as np
import pytest

from conftest import run_python

SCALARS = ("test_nll_nats", "test_elbo_nats", "fid", "kid", "precision", "recall", "fid_real")


def _train(workdir, module, preset):
  done = run_python(["-m", f"experiments.{module}", f"--workdir={workdir}", f"--config=experiments/{module}.py:{preset}"])
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
def test_evaluate_and_sample_reproduce_the_run_and_refuse_training_fields(tmp_path):
  workdir = tmp_path / "vae"
  results = _train(workdir, "autoencoder", "smoke")

  evaluated = run_python(["-m", "experiments.evaluate", f"--workdir={workdir}"])
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  again = json.loads((workdir / "evaluation" / "results.json").read_text())
  assert again["step"] == results["step"]
  for name in SCALARS:
    assert again[name] == results[name], name
  assert "training steps" not in evaluated.stderr

  sampled = run_python(["-m", "experiments.sample", f"--workdir={workdir}"])
  assert sampled.returncode == 0, sampled.stderr[-2000:]
  np.testing.assert_array_equal(np.load(workdir / "samples" / "samples.npz")["images"],
                                np.load(workdir / "samples.npz")["images"])

  other = run_python(["-m", "experiments.sample", f"--workdir={workdir}", "--seed=5", "--num_samples=8",
                      f"--outdir={tmp_path / 'other'}"])
  assert other.returncode == 0, other.stderr[-2000:]
  drawn = np.load(tmp_path / "other" / "samples.npz")["images"]
  assert drawn.shape == (8, 8, 8, 1)
  assert not np.array_equal(drawn, np.load(workdir / "samples.npz")["images"][:8])
  assert json.loads((tmp_path / "other" / "results.json").read_text())["sample_seed"] == 5

  # A field that shapes training is refused before anything is written; so is a directory with no finished run.
  refused = run_python(["-m", "experiments.sample", f"--workdir={workdir}", "--config.kl_weight=2",
                        f"--outdir={tmp_path / 'refused'}"])
  assert refused.returncode == 2 and refused.stderr.strip() == (
      "error: --config.kl_weight shapes training, not sampling or evaluation (experiments.autoencoder's sampling "
      "fields: num_samples, eval_k); train a new run in another --workdir to change it")
  assert not (tmp_path / "refused").exists()
  os.remove(workdir / "results.json")
  unfinished = run_python(["-m", "experiments.evaluate", f"--workdir={workdir}"])
  assert unfinished.returncode == 2 and "holds no finished run" in unfinished.stderr
  nothing = run_python(["-m", "experiments.sample", f"--workdir={tmp_path / 'none'}"])
  assert nothing.returncode == 2 and nothing.stderr.strip() == (
      f"error: {tmp_path / 'none'} holds no run of an experiment (no .experiment mark)")


@pytest.mark.slow
def test_diffusion_samples_again_with_another_guidance_scale_and_gpt2_continues_a_prompt(tmp_path):
  diffusion = tmp_path / "diffusion"
  _train(diffusion, "diffusion", "smoke")
  # The run was unguided (w = 1: no traced guidance in its checkpoint); w = 3 is this sampling's.
  rerun = run_python(["-m", "experiments.diffusion", f"--workdir={diffusion}", "--config=experiments/diffusion.py:smoke",
                      "--config.guidance_scale=3"])
  assert rerun.returncode == 2 and "python -m experiments.sample (or evaluate)" in rerun.stderr, rerun.stderr
  guided = run_python(["-m", "experiments.sample", f"--workdir={diffusion}", "--config.guidance_scale=3"])
  assert guided.returncode == 0, guided.stderr[-2000:]
  out = json.loads((diffusion / "samples" / "results.json").read_text())
  assert out["config"]["guidance_scale"] == 3.0 and out["config"]["steps"] == 6
  images = np.load(diffusion / "samples" / "samples.npz")["images"]
  assert images.shape == np.load(diffusion / "samples.npz")["images"].shape
  assert not np.array_equal(images, np.load(diffusion / "samples.npz")["images"])

  gpt = tmp_path / "gpt2"
  _train(gpt, "gpt2", "smoke")
  prompted = run_python(["-m", "experiments.sample", f"--workdir={gpt}", "--config.prompt=The cat",
                         "--config.num_prompts=2", "--config.temperature=0"])
  assert prompted.returncode == 0, prompted.stderr[-2000:]
  text = (gpt / "samples" / "samples.txt").read_text()
  assert text.count("The cat ||| ") == 2
