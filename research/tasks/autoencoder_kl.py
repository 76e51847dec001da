"""The KL autoencoder's plug-in for the loop: init, loss, evaluation, reconstructions and the latent scaling factor.

    task = make_task(config, test["image"])                                  # a research.train.Task
    run = research.train.train(task, config, workdir, train, eval_data(test, train, config))
    run.results["scaling_factor"]                                            # 1 / std of training latents

The model, its posterior and loss terms are research/models/autoencoder_kl.py. Images are
uint8 (N, H, W, C), scaled to [-1, 1] for the model. The task's parameters are the model's
variables, {"params": ...}: `save_hf(model, params["params"], directory)` writes them for
diffusers, with the scaling factor of the run in the model's config
(`dataclasses.replace(model.cfg, scaling_factor=...)`).

Config fields read (besides research.train.base_config's):
  channels          width of the first block; block_out_channels = channels x channel_mult.
  channel_mult      one multiplier per block; f = 2^(len - 1) in {1, 2, 4, 8}.
  layers_per_block  ResNet blocks per down block (the up blocks have one more).
  latent_channels   channels of z.
  norm_groups       GroupNorm groups (divides every block's width).
  mid_attention     self-attention in the middle of the encoder and the decoder.
  attention         the attention kernel (research.models.attention.IMPLEMENTATIONS).
  reconstruction    "l1" (the paper's pixel term) or "l2", summed over pixels.
  kl_weight         weight of KL(q(z | x) || N(0, I)) against the summed reconstruction error (traced).
  eval_batch_size   images encoded at once by the evaluation and the scaling factor.
  scaling_images    training images the scaling factor is measured on (`eval_data`).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from research import optim
from research.checks import ConfigError, check_choice, check_positive
from research.models import attention as attention_lib
from research.models.autoencoder_kl import (RECONSTRUCTIONS, AutoencoderKL, AutoencoderKLConfig, kl_divergence,
                                            reconstruction_error, sample_posterior)
from research.train import Task

# Test images (and their reconstructions) in the pictures of a run.
NUM_RECONSTRUCTIONS = 32
# PSNR of an exact reconstruction is infinite: per-image errors are floored here (PSNR <= 100 dB).
MIN_MSE = 1e-10


def model_config(config, image_shape) -> AutoencoderKLConfig:
  """The model's config from an experiment config's fields and the images' (H, W, C).

  Raises:
    ConfigError: on a bad field, or an image size the downsampling factor does not divide.
  """
  check_choice("reconstruction", config.reconstruction, RECONSTRUCTIONS)
  check_choice("attention", config.attention, attention_lib.IMPLEMENTATIONS)
  check_positive("kl_weight", config.kl_weight, allow_zero=True)
  check_positive("eval_batch_size", config.eval_batch_size)
  check_positive("scaling_images", config.scaling_images, allow_zero=True)
  check_positive("channels", config.channels)
  mult = tuple(config.channel_mult)
  if not mult or any(int(m) <= 0 for m in mult):
    raise ConfigError(f"channel_mult must be a non-empty tuple of positive multipliers, got {mult}")
  height, width, channels = (int(d) for d in image_shape)
  try:
    cfg = AutoencoderKLConfig(in_channels=channels, out_channels=channels,
                              block_out_channels=tuple(config.channels * int(m) for m in mult),
                              layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
                              norm_num_groups=config.norm_groups, sample_size=height,
                              mid_block_add_attention=bool(config.mid_attention), attention=config.attention,
                              dtype=config.dtype)
    cfg.latent_shape(height, width)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return cfg


def to_model_range(images):
  """uint8 images -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_unit_range(x):
  """The model's [-1, 1] -> images in [0, 1], clipped."""
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def map_chunks(fn, images, batch_size: int):
  """fn(i, chunk) over `images` `batch_size` at a time, the last chunk padded, as one lax.map: its
  (batch, ...) outputs (any pytree) concatenated back to len(images) rows."""
  n = images.shape[0]
  chunks = -(-n // batch_size)
  padded = jnp.concatenate([images, jnp.zeros((chunks * batch_size - n,) + images.shape[1:], images.dtype)])
  rows = padded.reshape((chunks, batch_size) + images.shape[1:])  # (chunks, batch, H, W, C)
  out = jax.lax.map(lambda args: fn(*args), (jnp.arange(chunks), rows))
  return jax.tree.map(lambda a: a.reshape((chunks * batch_size,) + a.shape[2:])[:n], out)


def latent_std(model: AutoencoderKL, variables, images, key, batch_size: int):
  """The standard deviation of posterior samples z ~ q(z | x) over all elements of all `images` (uint8).

  Pure: encodes `batch_size` images at a time; the sample of chunk i uses fold_in(key, i).
  """

  def encode(i, x):
    mean, logvar = model.apply(variables, to_model_range(x), method=AutoencoderKL.encode)
    return sample_posterior(jax.random.fold_in(key, i), mean, logvar)  # (batch, h, w, latent)

  return jnp.std(map_chunks(encode, images, batch_size))  # over (N, h, w, latent)


_latent_std = jax.jit(latent_std, static_argnums=(0, 4))  # one compile per model and image count


def latent_scaling_factor(model: AutoencoderKL, variables, images, key, batch_size: int = 256) -> float:
  """1 / std of the latents of `images` (uint8 training images): diffusers' scaling_factor, which makes
  z * scaling_factor unit-variance (Rombach et al., section 4.3.2)."""
  std = _latent_std(model, variables, jnp.asarray(images), key, min(batch_size, len(images)))
  return float(1.0 / std)


def eval_data(test, train, config) -> dict:
  """The evaluation split the loop hands `evaluate`: the test images, and the first
  `config.scaling_images` training images the scaling factor is measured on (none for 0)."""
  out = {"image": np.asarray(test["image"])}
  if config.scaling_images:
    out["scaling_images"] = np.asarray(train["image"][:config.scaling_images])
  return out


def _interleave(x, y, width: int):
  """Two image sets (n, H, W, C) as alternating grid rows of `width` images each."""
  rows = [r.reshape((-1, width) + r.shape[1:]) for r in (x, y)]
  return jnp.stack(rows, axis=1).reshape((-1,) + x.shape[1:])


def _grid_width(n: int) -> int:
  """Images per row of a reconstruction grid of n originals: a divisor of n near sqrt(2n)."""
  width = max(1, int(math.isqrt(2 * n)))
  while n % width:
    width -= 1
  return width


def make_task(config, eval_images: np.ndarray) -> Task:
  """The KL autoencoder as a research.train.Task.

  Args:
    config: an experiment config with the base fields (research.train.base_config) and those
      of the module docstring.
    eval_images: uint8 test images (N, H, W, C): their shape sizes the model, and the first
      NUM_RECONSTRUCTIONS are `sample`'s reconstructions.

  Returns:
    A Task whose `loss` is the per-pixel mean of (reconstruction error + kl_weight x KL) per image,
    with the posterior sampled (reparameterised), and whose pure `evaluate(params, key, data,
    hparams)` reads `data["image"]` (uint8 test images) and reports `test_reconstruction_mse`
    (per pixel, images in [0, 1]), `test_psnr` (dB, the mean over images of 10 log10(1 / MSE)),
    both of the posterior mean's reconstruction clipped to [0, 1], and `test_kl` (nats per
    image); with `data["scaling_images"]` (see `eval_data`) also `latent_std` and
    `scaling_factor` = 1 / latent_std of posterior samples of those images. Its picture is
    `reconstructions`, test images and their reconstructions in alternating rows.

  Raises:
    ConfigError: on a bad field.
  """
  eval_images = np.asarray(eval_images)
  cfg = model_config(config, eval_images.shape[1:])
  model = AutoencoderKL(cfg)
  pixels = math.prod(eval_images.shape[1:])
  batch_size = config.eval_batch_size

  def init(key, batch):
    return model.init(key, to_model_range(batch["image"]))

  def loss(params, batch, key, train, hparams=None):
    del train  # no dropout or batch statistics
    kl_weight = config.kl_weight if not hparams else hparams["kl_weight"]
    x = to_model_range(batch["image"])  # (batch, H, W, C)
    x_hat, mean, logvar = model.apply(params, x, key)
    rec = reconstruction_error(x, x_hat, config.reconstruction)  # (batch,)
    kl = kl_divergence(mean, logvar)  # (batch,)
    # Both terms summed per image, as in the paper, so kl_weight is their ratio; the loss is per pixel.
    value = jnp.mean(rec + kl_weight * kl) / pixels
    return value, {"reconstruction": jnp.mean(rec) / pixels, "kl": jnp.mean(kl)}

  def reconstruct(params, images):
    """Pure: images (uint8) -> (reconstructions of the posterior means in [0, 1], KL per image)."""

    def one(i, x):
      del i
      mean, logvar = model.apply(params, to_model_range(x), method=AutoencoderKL.encode)
      return to_unit_range(model.apply(params, mean, method=AutoencoderKL.decode)), kl_divergence(mean, logvar)

    return map_chunks(one, images, batch_size)

  def evaluate(params, key, data, hparams=None):
    del hparams  # the evaluation reads no hyperparameter
    images = data["image"]
    x_hat, kl = reconstruct(params, images)  # (N, H, W, C) in [0, 1], (N,)
    x = images.astype(jnp.float32) / 255.0
    mse = jnp.mean(jnp.square(x_hat - x), axis=(1, 2, 3))  # (N,)
    psnr = -10.0 * jnp.log10(jnp.maximum(mse, MIN_MSE))  # (N,), the peak being 1
    n = min(NUM_RECONSTRUCTIONS, images.shape[0])
    out = {"test_reconstruction_mse": jnp.mean(mse), "test_psnr": jnp.mean(psnr), "test_kl": jnp.mean(kl),
           "reconstructions": _interleave(x[:n], x_hat[:n], _grid_width(n))}
    if "scaling_images" in data:
      out["latent_std"] = latent_std(model, params, data["scaling_images"], key, batch_size)
    return out

  def summarize(arrays):
    out = {name: float(arrays[name]) for name in ("test_reconstruction_mse", "test_psnr", "test_kl")}
    if "latent_std" in arrays:
      out.update(latent_std=float(arrays["latent_std"]), scaling_factor=float(1.0 / arrays["latent_std"]))
    return out

  shown = eval_images[:NUM_RECONSTRUCTIONS]

  @jax.jit
  def draw(params):
    x_hat, _ = reconstruct(params, jnp.asarray(shown))
    return {"reconstructions": _interleave(shown.astype(np.float32) / 255.0, x_hat, _grid_width(len(shown)))}

  def sample(params, key, hparams=None):
    del key, hparams  # reconstructions of the posterior mean
    return draw(params)

  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate,
              evaluate_pure=True, pictures=("reconstructions",), summarize=summarize, sample=sample,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps),
              hparams={"kl_weight": config.kl_weight})

