"""The KL autoencoder against diffusers' AutoencoderKL (encode and decode, weights both ways), its bad
input, and its task: a short training run on shapes and the latent scaling factor."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data import shapes
from research.models import autoencoder_kl
from research.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from research.tasks import autoencoder_kl as akl_tasks
from research.train import ConfigError, base_config, train

# Odd widths (multiples of 3 groups), 1 to 3 blocks, 1 or 2 layers per block, 3 latent channels,
# image sides that differ; the last without mid-block attention or quant_conv.
CONFIGS = {
    "f2": (dict(block_out_channels=(6, 9), layers_per_block=2), (8, 12)),
    "f1": (dict(in_channels=2, out_channels=5, block_out_channels=(9,), layers_per_block=1), (5, 7)),
    "f4": (dict(block_out_channels=(6, 9, 15), layers_per_block=1, mid_block_add_attention=False,
                use_quant_conv=False), (12, 8)),
}


def _diffusers():
  pytest.importorskip("torch")
  return pytest.importorskip("diffusers")


def _torch_model(diffusers, fields: dict, seed: int = 0):
  """diffusers' AutoencoderKL with every weight moved off its initial value (norms off 1, biases off 0)."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  n = len(fields["block_out_channels"])
  model = diffusers.AutoencoderKL(down_block_types=(autoencoder_kl.DOWN_BLOCK,) * n,
                                  up_block_types=(autoencoder_kl.UP_BLOCK,) * n, latent_channels=3,
                                  norm_num_groups=3, **fields).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def _torch_outputs(model, x, z):
  """diffusers' (mean, logvar, decoded) for NHWC x and z, returned NHWC."""
  import torch  # pylint: disable=import-outside-toplevel
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))
  nhwc = lambda t: np.transpose(t.numpy(), (0, 2, 3, 1))
  with torch.no_grad():
    posterior = model.encode(nchw(x)).latent_dist
    return nhwc(posterior.mean), nhwc(posterior.logvar), nhwc(model.decode(nchw(z)).sample)


def _assert_close(ours, theirs, what):
  for name, a, b in zip(("mean", "logvar", "decoded"), ours, theirs):
    assert a.shape == b.shape, (what, name)
    err = float(np.max(np.abs(np.asarray(a) - b)))
    assert err <= 1e-5, f"{what}: {name} differs by {err}"
  assert np.std(theirs[2]) > 0.1  # outputs that vary, not near-constants


def _random_params(model, rng):
  """Parameters of `model` drawn in NumPy (no compiled init): kernels at 1 / sqrt(fan-in), norms and biases off 1 and 0."""

  def draw(path, shape):
    noise = rng.normal(size=shape.shape).astype(np.float32)
    name = path[-1].key
    if name == "kernel":
      return noise / np.sqrt(np.prod(shape.shape[:-1]))
    return (1.0 if name == "scale" else 0.0) + 0.1 * noise

  return jax.tree_util.tree_map_with_path(draw, autoencoder_kl.param_shapes(model))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encode_and_decode_equal_diffusers_with_weights_both_ways(name, tmp_path):
  diffusers = _diffusers()
  fields, (height, width) = CONFIGS[name]
  rng = np.random.default_rng(0)
  in_channels = fields.get("in_channels", 3)
  x = rng.uniform(-1, 1, (2, height, width, in_channels)).astype(np.float32)
  f = 2 ** (len(fields["block_out_channels"]) - 1)
  z = rng.normal(size=(2, height // f, width // f, 3)).astype(np.float32)

  # Theirs -> ours.
  reference = _torch_model(diffusers, fields)
  reference.save_pretrained(tmp_path / "theirs")
  model, params = autoencoder_kl.load_hf(str(tmp_path / "theirs"))
  assert model.cfg.downsampling_factor == f
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))
  ours = (*encode(params, x), decode(params, z))
  _assert_close(ours, _torch_outputs(reference, x, z), "diffusers' weights")

  # Ours -> theirs: random weights of our own, written with a scaling factor of its own.
  model = AutoencoderKL(dataclasses.replace(model.cfg, scaling_factor=0.37))
  params = _random_params(model, rng)
  autoencoder_kl.save_hf(model, params, str(tmp_path / "ours"))
  loaded = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "ours")).eval()
  assert loaded.config.scaling_factor == 0.37
  ours = (*encode(params, x), decode(params, z))
  _assert_close(ours, _torch_outputs(loaded, x, z), "our weights")


def test_a_missing_or_misshapen_tensor_is_named(tmp_path):
  diffusers = _diffusers()
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  _torch_model(diffusers, dict(block_out_channels=(6, 9))).save_pretrained(tmp_path)
  weights = tmp_path / autoencoder_kl.WEIGHTS_NAME
  tensors = load_file(weights)
  save_file({k: v for k, v in tensors.items() if k != "decoder.mid_block.attentions.0.to_k.bias"}, weights)
  with pytest.raises(ValueError, match=r"tensor decoder\.mid_block\.attentions\.0\.to_k\.bias is missing"):
    autoencoder_kl.load_hf(str(tmp_path))
  save_file({**tensors, "encoder.conv_out.weight": np.zeros((4, 9, 3, 3), np.float32)}, weights)
  with pytest.raises(ValueError, match=r"tensor encoder\.conv_out\.weight has shape \(4, 9, 3, 3\)"):
    autoencoder_kl.load_hf(str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "down_block_types": ["AttnDownEncoderBlock2D"] * 2}))
  with pytest.raises(ValueError, match="down_block_types"):
    autoencoder_kl.load_hf(str(tmp_path))


def _one_line_error(fn, match):
  with pytest.raises(ValueError, match=match) as info:
    fn()
  assert "\n" not in str(info.value)


def test_bad_sizes_are_one_line_errors():
  _one_line_error(lambda: AutoencoderKLConfig(block_out_channels=(8,) * 5, norm_num_groups=4), "1 to 4 blocks")
  _one_line_error(lambda: AutoencoderKLConfig(block_out_channels=(8, 10), norm_num_groups=4),
                  "not all divisible by norm_num_groups 4")
  _one_line_error(lambda: AutoencoderKLConfig(layers_per_block=0), "layers_per_block must be >= 1")
  _one_line_error(lambda: AutoencoderKLConfig(latent_channels=0), "latent_channels must be >= 1")
  _one_line_error(lambda: AutoencoderKLConfig(scaling_factor=0.0), "scaling_factor must be a positive")
  model = AutoencoderKL(AutoencoderKLConfig(block_out_channels=(4, 4, 4), norm_num_groups=2, latent_channels=3))
  _one_line_error(lambda: model.init(jax.random.key(0), jnp.zeros((1, 10, 12, 3))),
                  r"image size 10x12 is not divisible by the downsampling factor f = 4")
  _one_line_error(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))), r"expected images \(N, H, W, 3\)")
  with pytest.raises(ConfigError, match="downsampling factor f = 8"):
    akl_tasks.make_task(_config(channel_mult=(1, 1, 1, 1)), np.zeros((4, 12, 12, 3), np.uint8))
  with pytest.raises(ConfigError, match="reconstruction"):
    akl_tasks.make_task(_config(reconstruction="l3"), np.zeros((4, 32, 32, 3), np.uint8))


def test_posterior_clamps_logvar_and_its_kl_is_diffusers():
  cfg = AutoencoderKLConfig(block_out_channels=(3,), norm_num_groups=3, latent_channels=2)
  model = AutoencoderKL(cfg)
  x = jnp.zeros((1, 4, 4, 3))
  params = _random_params(model, np.random.default_rng(0))
  params["quant_conv"]["bias"] = jnp.asarray([0.0, 0.0, 100.0, -100.0])  # logvar channels far out of range
  mean, logvar = jax.jit(lambda p: model.apply({"params": p}, x, method=model.encode))(params)
  assert mean.shape == logvar.shape == (1, 4, 4, 2)
  np.testing.assert_array_equal(logvar[..., 0], 20.0)
  np.testing.assert_array_equal(logvar[..., 1], -30.0)

  _diffusers()
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  mean, logvar = rng.normal(size=(2, 3, 5, 4)).astype(np.float32), rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
  moments = torch.from_numpy(np.concatenate([mean, logvar], -1).transpose(0, 3, 1, 2).copy())
  np.testing.assert_allclose(autoencoder_kl.kl_divergence(mean, logvar),
                             DiagonalGaussianDistribution(moments).kl().numpy(), rtol=1e-5)


# ---------------------------------------------------------------------------------------
# The task: a short training run on shapes.


def _config(**overrides):
  config = base_config()
  config.dataset = "shapes"
  config.steps = 30
  config.batch_size = 8
  config.log_every = 10
  config.checkpoint_every = 1000
  config.optimizer.learning_rate = 2e-3
  config.channels = 8
  config.channel_mult = (1, 2)
  config.layers_per_block = 1
  config.latent_channels = 3
  config.norm_groups = 4
  config.mid_attention = True
  config.attention = "auto"
  config.reconstruction = "l1"
  config.kl_weight = 1e-6
  config.eval_batch_size = 32
  config.scaling_images = 64
  for name, value in overrides.items():
    config[name] = value
  return config


@pytest.mark.slow
def test_short_training_lowers_reconstruction_error_and_scales_latents_to_unit_variance(tmp_path):
  train_split, test_split = shapes.generate("train", 256), shapes.generate("test", 32)
  config = _config()
  task = akl_tasks.make_task(config, test_split["image"])
  data = akl_tasks.eval_data(test_split, train_split, config)
  assert data["scaling_images"].shape == (64, 32, 32, 3)
  # The loop's evaluation of the initial state (a run of no steps), then the run resumed to 30 steps.
  start = train(task, _config(steps=0), str(tmp_path), {"image": train_split["image"]}, data).results
  run = train(task, config, str(tmp_path), {"image": train_split["image"]}, data)
  results = run.results
  assert start["step"] == 0 and results["step"] == 30
  assert results["test_reconstruction_mse"] < 0.3 * start["test_reconstruction_mse"]
  assert results["test_psnr"] > start["test_psnr"] + 5.0
  # The mean of per-image PSNRs is at least the PSNR of the mean error (Jensen).
  assert results["test_psnr"] >= -10 * np.log10(results["test_reconstruction_mse"]) - 1e-4
  assert os.path.exists(tmp_path / "reconstructions.png")

  # 1 / std of training latents makes other images' latents (another posterior draw) unit-variance.
  model = AutoencoderKL(akl_tasks.model_config(config, (32, 32, 3)))
  params = run.state.params
  factor = akl_tasks.latent_scaling_factor(model, params, train_split["image"][:128], jax.random.key(5))
  assert factor == pytest.approx(results["scaling_factor"], rel=0.05)
  held_out = akl_tasks.latent_scaling_factor(model, params, train_split["image"][128:], jax.random.key(6))
  assert factor / held_out == pytest.approx(1.0, abs=0.1)  # std(factor * z) on images the factor never saw
