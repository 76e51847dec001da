"""The diffusion benchmark: its smoke mode end to end, and the learned-variance loss both of its sides compute.

No speed is asserted except what the step counts force: DDIM with 20x fewer steps than DDPM
draws more images per second from the same U-Net.
"""

import json
import math
import shlex
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import run_python
from experiments import diffusion as diffusion_experiment
from experiments.bench import diffusion as bench
from research.models import dit
from research.train import ConfigError

# The smoke preset: 4 images per call, T = 40, S = 2; DiT-T/2 on 8x8x4 latents of 10 classes, batch 4, 2 timed
# steps after 1; one repeat at one PyTorch thread.
SMOKE = ["--config=experiments/bench/diffusion.py:smoke"]


def _unet_params(channels, num_classes, in_channels=1):
  """Parameters of research.models.unet.UNet with two levels and one block per level, from the layer shapes."""
  c0, c1 = channels
  width = 4 * c0
  conv = lambda k, a, b: k * k * a * b + b
  dense = lambda a, b: a * b + b
  norm = lambda c: 2 * c

  def block(c_in, c_out):
    shortcut = conv(1, c_in, c_out) if c_in != c_out else 0
    return norm(c_in) + conv(3, c_in, c_out) + dense(width, c_out) + norm(c_out) + conv(3, c_out, c_out) + shortcut

  embed = dense(2 * c0, width) + dense(width, width) + (num_classes + 1) * width
  encoder = conv(3, in_channels, c0) + block(c0, c0) + conv(3, c0, c0) + block(c0, c1)
  middle = 2 * block(c1, c1) + norm(c1) + dense(c1, 3 * c1) + dense(c1, c1)
  decoder = (block(2 * c1, c1) + block(c1 + c0, c1) + conv(3, c1, c1)  # the 4x4 level, then upsampling
             + block(c1 + c0, c0) + block(2 * c0, c0))
  return embed + encoder + middle + decoder + norm(c0) + conv(3, c0, in_channels)


def _smoke(tmp_path, part):
  """Runs the smoke mode of one part (the two parts run as separate tests, in parallel under xdist)."""
  args = ["-m", "experiments.bench.diffusion", f"--outdir={tmp_path}", *SMOKE, f"--config.parts={part}"]
  proc = run_python(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "diffusion.json").read_text())
  markdown = (tmp_path / "diffusion.md").read_text()
  command = shlex.join(["python", *args])
  assert report["command"] == command and f"`{command}`" in markdown
  assert "|---" in markdown
  assert report["versions"]["torch"] == metadata.version("torch")
  assert report["versions"]["diffusers"] == metadata.version("diffusers")
  assert report["parts"] == [part] and report["torch_threads"] == [1]
  assert set(report) & {"sampling", "dit"} == {part}
  return report


@pytest.mark.slow
def test_smoke_sampling(tmp_path):
  s = _smoke(tmp_path, "sampling")["sampling"]
  config = diffusion_experiment.get_config()
  assert (s["sample_batch"], s["num_train_steps"], s["ddim_steps"]) == (4, 40, 2)
  # Ours is the default experiment's U-Net; diffusers' differs only by the time MLP's input
  # (channels[0] sinusoidal features instead of 2 * channels[0]).
  ours = _unet_params(config.unet_channels, 10)
  c0 = config.unet_channels[0]
  assert s["param_count"]["jax"] == ours
  assert s["param_count"]["diffusers"] == ours - c0 * 4 * c0
  assert abs(s["param_count"]["relative_difference"]) <= 0.02
  assert all(s["finite"].values()) and set(s["finite"]) == {"ddim", "ddpm", "torch_1"}
  for name, rate in s["images_per_s"].items():
    assert math.isfinite(rate) and rate > 0, name
  # 20x fewer steps through the same network: more images per second, whatever the load.
  assert s["ddim_vs_ddpm"] > 1.0
  assert s["ddim_vs_ddpm"] == pytest.approx(s["images_per_s"]["ddim"] / s["images_per_s"]["ddpm"])
  assert s["ddim_vs_diffusers"] == pytest.approx(s["images_per_s"]["ddim"] / s["images_per_s"]["torch_1"])


@pytest.mark.slow
def test_smoke_dit(tmp_path):
  d = _smoke(tmp_path, "dit")["dit"]
  cfg = dit.config("DiT-T/2", input_size=8, in_channels=4, num_classes=10, learn_sigma=True)
  # Both sides have exactly the parameters of the paper's model (one shared embedder).
  assert d["param_count"] == {"jax": dit.count_params(cfg), "diffusers": dit.count_params(cfg)}
  assert (d["depth"], d["hidden_size"], d["tokens"], d["batch_size"]) == (4, 64, 16, 4)
  for name, rate in d["steps_per_s"].items():
    assert math.isfinite(rate) and rate > 0, name
  assert d["jax_vs_diffusers"] == pytest.approx(d["steps_per_s"]["jax"] / d["steps_per_s"]["torch_1"])
  for name in ("jax", "torch_1"):
    assert math.isfinite(d["loss_first"][name]) and math.isfinite(d["loss_last"][name]), name


def test_bad_flag_is_one_line_exit_2_before_anything_runs(tmp_path):
  proc = run_python(["-m", "experiments.bench.diffusion", f"--outdir={tmp_path / 'out'}", *SMOKE,
                     "--config.ddim_steps=41"])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and lines == ["error: ddim_steps must be in [1, T = 40], got 41"], proc.stderr[-2000:]
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    ({"parts": ("sampling", "video")}, "unknown parts value 'video'; choose from: sampling, dit"),
    ({"dit_input_size": 9}, "patch size 2 does not divide the input size 9"),
    ({"repeats": 0}, "repeats must be > 0, got 0"),
    ({"torch_threads": (1, 0)}, "torch_threads must be positive integers"),
])
def test_bad_config_is_refused_before_anything_runs(tmp_path, change, message):
  config = bench.get_config("smoke")
  config.update(change)
  with pytest.raises(ConfigError, match=message):
    bench.run(config, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def _loss_inputs(seed=0, n=6, shape=(4, 4, 2)):
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1.0, 1.0, (n,) + shape).astype(np.float32)
  x0[0, 0] = 1.0  # the decoder's open-ended outer bins
  x0[0, 1] = -1.0
  t = np.array([0, 1, 10, 500, 999, 0][:n], np.int64)
  sched = bench.schedule_arrays(1000)
  noise = rng.standard_normal(x0.shape).astype(np.float32)
  scale = lambda name: sched[name][t].reshape(-1, 1, 1, 1)
  x_t = (scale("sqrt_abar") * x0 + scale("sqrt_one_minus_abar") * noise).astype(np.float32)
  return sched, x0, x_t, t, noise


def test_vlb_jax_and_torch_agree():
  sched, x0, x_t, t, noise = _loss_inputs()
  rng = np.random.default_rng(1)
  eps_hat = (noise + 0.3 * rng.standard_normal(noise.shape)).astype(np.float32)
  var_values = rng.uniform(-1.0, 1.0, noise.shape).astype(np.float32)
  ours = np.asarray(bench.vlb_bits_jax(sched, jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t, jnp.int32),
                                       jnp.asarray(eps_hat), jnp.asarray(var_values)))
  to = torch.from_numpy
  theirs = bench.vlb_bits_torch({k: to(v) for k, v in sched.items()}, to(x0), to(x_t), to(t), to(eps_hat),
                                to(var_values)).numpy()
  assert ours.shape == (len(t),) and np.all(np.isfinite(ours))
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
  assert np.all(ours[t > 0] > 0)  # a KL between different Gaussians


def test_vlb_vanishes_at_the_true_posterior():
  sched, x0, x_t, t, noise = _loss_inputs()
  # ε_hat = the true noise gives μ_θ = μ̃; v = -1 gives Σ_θ = β̃ (the lower end of the range): KL = 0.
  vlb = np.asarray(bench.vlb_bits_jax(sched, x0, x_t, jnp.asarray(t, jnp.int32), noise, -np.ones_like(noise)))
  np.testing.assert_allclose(vlb[t > 0], 0.0, atol=1e-5)
  # At t = 0 it is the decoder's NLL: positive bits, more for a wider Gaussian (v = +1: Σ = β_0 > β̃_1).
  wide = np.asarray(bench.vlb_bits_jax(sched, x0, x_t, jnp.asarray(t, jnp.int32), noise, np.ones_like(noise)))
  assert np.all(vlb[t == 0] > 0) and np.all(wide[t == 0] > vlb[t == 0])


def test_diffusers_dit_matches_our_config():
  cfg = dit.config("DiT-T/2", input_size=8, in_channels=4, num_classes=10, learn_sigma=True)
  model = bench.diffusers_dit(cfg)
  assert bench._torch_param_count(model) == dit.count_params(cfg)  # pylint: disable=protected-access
  out = model(torch.zeros(3, 4, 8, 8), torch.tensor([0, 5, 999]), class_labels=torch.tensor([0, 9, 10])).sample
  assert out.shape == (3, 8, 8, 8)  # learn_sigma: 2C channels
  jax_out = dit.DiT(cfg).init_with_output(jax.random.key(0), jnp.zeros((3, 8, 8, 4)), jnp.zeros((3,), jnp.int32),
                                          jnp.zeros((3,), jnp.int32))[0]
  assert jax_out.shape == (3, 8, 8, 8)
