"""The KL-regularised autoencoder of latent diffusion (Rombach et al., "High-Resolution Image Synthesis with
Latent Diffusion Models", 2022), laid out as diffusers' `AutoencoderKL`.

    cfg = autoencoder_kl.AutoencoderKLConfig(block_out_channels=(32, 64, 64), latent_channels=4)
    model = autoencoder_kl.AutoencoderKL(cfg)
    mean, logvar = model.apply({"params": params}, x, method=model.encode)   # x (N, H, W, C) in [-1, 1]
    x_hat = model.apply({"params": params}, z, method=model.decode)         # z (N, H / f, W / f, latent)
    model, params = autoencoder_kl.load_hf("path/to/vae")                     # diffusers' files, no torch

Top-down, NHWC (diffusers computes the same in NCHW):

  encoder      conv_in; one down block per entry of block_out_channels, each `layers_per_block`
               ResNet blocks (GroupNorm, SiLU, 3x3 conv, twice, plus the input through a 1x1 conv
               where the width changes) and, except the last, a stride-2 3x3 conv (the input padded
               by one row and column at the bottom and right, as diffusers pads it); a middle of a
               ResNet block, single-head self-attention over the H x W positions (GroupNorm in
               front, residual) and another ResNet block; GroupNorm, SiLU and a 3x3 conv to
               2 x latent_channels.
  quant_conv   a 1x1 conv on those moments, split into the mean and the log-variance of a diagonal
               Gaussian posterior q(z | x); the log-variance is clamped to [-30, 20] as diffusers does.
  decoder      post_quant_conv (1x1) on z, conv_in, the same middle, up blocks mirroring the down
               blocks with `layers_per_block` + 1 ResNet blocks each and, except the last, a nearest
               2x upsampling and a 3x3 conv; GroupNorm, SiLU and a 3x3 conv to the image's channels.

With n = len(block_out_channels) blocks the latent is f = 2^(n - 1) times smaller than the image
on each side (f in {1, 2, 4, 8} here). The objective (section 3.1, appendix G) is a reconstruction
loss plus a small weight on KL(q(z | x) || N(0, I)), which keeps the latent space from drifting
to arbitrary scales without squeezing out detail; the adversarial and perceptual terms of the
paper's full objective are left out. A latent diffusion model then works on z * scaling_factor,
the factor 1 / std(z) over the training images (section 4.3.2 and appendix D.1), which the
config carries as diffusers' config does.

The attention is research/models/attention.py's MultiHeadAttention with one head as wide as the
block (diffusers' attention_head_dim = channels).
"""

import dataclasses
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import attention as attention_lib
from research.models import hf

# Blocks the downsampling factor f = 2^(blocks - 1) allows.
MAX_BLOCKS = 4
# diffusers' clamp of the posterior's log-variance.
LOGVAR_RANGE = (-30.0, 20.0)
# diffusers' epsilon of every GroupNorm in the autoencoder.
NORM_EPS = 1e-6
DOWN_BLOCK, UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
  """Sizes of the autoencoder under diffusers' AutoencoderKL field names, plus this codebase's options.

  Attributes:
    in_channels, out_channels: channels of the input and of the reconstructed image.
    block_out_channels: channels of each down block (1 to 4 blocks; f = 2^(blocks - 1)); the up
      blocks use them in reverse.
    layers_per_block: ResNet blocks per down block (the up blocks have one more).
    latent_channels: channels of z.
    norm_num_groups: GroupNorm groups; must divide every entry of block_out_channels.
    sample_size: the image size the model is meant for (diffusers' tiling reads it; nothing here does).
    scaling_factor: latents are multiplied by this before a diffusion model sees them: 1 / std(z)
      over the training images (see research.tasks.autoencoder_kl.latent_scaling_factor).
    mid_block_add_attention: self-attention in the middle of the encoder and the decoder.
    use_quant_conv, use_post_quant_conv: the 1x1 convs before the posterior and after z.
    attention: the kernel, one of research.models.attention.IMPLEMENTATIONS.
    dtype: compute dtype; parameters stay float32, outputs are float32.
  """

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int = 32
  scaling_factor: float = 0.18215
  mid_block_add_attention: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  attention: str = "auto"
  dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    blocks = self.block_out_channels
    if not 1 <= len(blocks) <= MAX_BLOCKS:
      raise ValueError(f"block_out_channels needs 1 to {MAX_BLOCKS} blocks (f = 2^(blocks - 1) in 1, 2, 4, 8); "
                       f"got {len(blocks)}")
    for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
                 "sample_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if any(c % self.norm_num_groups for c in blocks):
      raise ValueError(f"block_out_channels {blocks} are not all divisible by norm_num_groups {self.norm_num_groups}")
    if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
      raise ValueError(f"scaling_factor must be a positive number, got {self.scaling_factor}")
    if self.attention not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"unknown attention {self.attention!r}; choose one of: "
                       f"{', '.join(attention_lib.IMPLEMENTATIONS)}")

  @property
  def downsampling_factor(self) -> int:
    """f: how many times smaller than the image the latent is on each side."""
    return 2 ** (len(self.block_out_channels) - 1)

  def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
    """(H / f, W / f, latent_channels) of an H x W image.

    Raises:
      ValueError: when f does not divide H and W.
    """
    f = self.downsampling_factor
    if height % f or width % f:
      raise ValueError(f"the image size {height}x{width} is not divisible by the downsampling factor f = {f} "
                       f"({len(self.block_out_channels)} blocks)")
    return height // f, width // f, self.latent_channels


def _conv(features: int, kernel: int, name: str, dtype: str, **kwargs) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), padding=kwargs.pop("padding", "SAME"), name=name, dtype=dtype, **kwargs)


def _norm(groups: int, name: str, dtype: str) -> nn.GroupNorm:
  # Two-pass variance (not E[x^2] - E[x]^2): diffusers' numbers to 1e-6 after a large mean.
  return nn.GroupNorm(groups, epsilon=NORM_EPS, use_fast_variance=False, name=name, dtype=dtype)


class ResnetBlock(nn.Module):
  """GroupNorm-SiLU-conv twice, plus the input (through a 1x1 conv where the width changes).

  diffusers' ResnetBlock2D without a time embedding.
  """

  channels: int
  groups: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    h = _conv(self.channels, 3, "conv1", self.dtype)(nn.silu(_norm(self.groups, "norm1", self.dtype)(x)))
    h = _conv(self.channels, 3, "conv2", self.dtype)(nn.silu(_norm(self.groups, "norm2", self.dtype)(h)))
    if x.shape[-1] != self.channels:
      x = _conv(self.channels, 1, "conv_shortcut", self.dtype)(x)
    return x + h  # (N, H, W, channels)


class AttentionBlock(nn.Module):
  """Residual single-head self-attention over the H x W positions, with a GroupNorm in front."""

  groups: int
  attention: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    n, height, width, ch = x.shape
    h = _norm(self.groups, "group_norm", self.dtype)(x).reshape(n, height * width, ch)  # (N, HW, ch)
    h = attention_lib.MultiHeadAttention(num_heads=1, implementation=self.attention,
                                         kernel_init=nn.linear.default_kernel_init,
                                         out_init=nn.linear.default_kernel_init, dtype=self.dtype,
                                         name="attention")(h)
    return x + h.reshape(n, height, width, ch)


class MidBlock(nn.Module):
  """ResNet block, self-attention (optional), ResNet block at the lowest resolution: diffusers' UNetMidBlock2D."""

  cfg: AutoencoderKLConfig

  @nn.compact
  def __call__(self, x):
    cfg, ch = self.cfg, x.shape[-1]
    x = ResnetBlock(ch, cfg.norm_num_groups, cfg.dtype, name="resnets_0")(x)
    if cfg.mid_block_add_attention:
      x = AttentionBlock(cfg.norm_num_groups, cfg.attention, cfg.dtype, name="attentions_0")(x)
    return ResnetBlock(ch, cfg.norm_num_groups, cfg.dtype, name="resnets_1")(x)


class Encoder(nn.Module):
  """Image (N, H, W, in_channels) -> the posterior's moments (N, H / f, W / f, 2 x latent_channels)."""

  cfg: AutoencoderKLConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    h = _conv(cfg.block_out_channels[0], 3, "conv_in", cfg.dtype)(x.astype(cfg.dtype))
    for i, ch in enumerate(cfg.block_out_channels):
      for j in range(cfg.layers_per_block):
        h = ResnetBlock(ch, cfg.norm_num_groups, cfg.dtype, name=f"down_blocks_{i}_resnets_{j}")(h)
      if i < len(cfg.block_out_channels) - 1:
        # diffusers pads one zero row and column at the bottom and right, then convolves with stride 2.
        h = _conv(ch, 3, f"down_blocks_{i}_downsample", cfg.dtype, strides=(2, 2),
                  padding=((0, 1), (0, 1)))(h)  # (N, H / 2, W / 2, ch)
    h = MidBlock(cfg, name="mid_block")(h)
    h = nn.silu(_norm(cfg.norm_num_groups, "conv_norm_out", cfg.dtype)(h))
    return _conv(2 * cfg.latent_channels, 3, "conv_out", cfg.dtype)(h)


class Decoder(nn.Module):
  """Latent (N, h, w, latent_channels) -> image (N, h f, w f, out_channels)."""

  cfg: AutoencoderKLConfig

  @nn.compact
  def __call__(self, z):
    cfg = self.cfg
    channels = cfg.block_out_channels[::-1]
    h = _conv(channels[0], 3, "conv_in", cfg.dtype)(z.astype(cfg.dtype))
    h = MidBlock(cfg, name="mid_block")(h)
    for i, ch in enumerate(channels):
      for j in range(cfg.layers_per_block + 1):
        h = ResnetBlock(ch, cfg.norm_num_groups, cfg.dtype, name=f"up_blocks_{i}_resnets_{j}")(h)
      if i < len(channels) - 1:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # (N, 2H, 2W, ch): nearest-neighbour upsampling
        h = _conv(ch, 3, f"up_blocks_{i}_upsample", cfg.dtype)(h)
    h = nn.silu(_norm(cfg.norm_num_groups, "conv_norm_out", cfg.dtype)(h))
    return _conv(cfg.out_channels, 3, "conv_out", cfg.dtype)(h)


class AutoencoderKL(nn.Module):
  """`apply(variables, x, key)` -> (reconstruction, mean, logvar); `encode` and `decode` as methods (NHWC).

  Images are in [-1, 1]. `encode` checks that f divides the image size; `decode` takes z as the
  encoder gives it (divide a diffusion model's latents by cfg.scaling_factor first).
  """

  cfg: AutoencoderKLConfig

  def setup(self):
    cfg = self.cfg
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    if cfg.use_quant_conv:
      self.quant_conv = _conv(2 * cfg.latent_channels, 1, None, cfg.dtype)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = _conv(cfg.latent_channels, 1, None, cfg.dtype)

  def encode(self, x):
    """(mean, logvar) of q(z | x), each (N, H / f, W / f, latent_channels) float32, logvar clamped to [-30, 20].

    Raises:
      ValueError: for an input that is not (N, H, W, in_channels) with f dividing H and W.
    """
    cfg = self.cfg
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f"expected images (N, H, W, {cfg.in_channels}), got shape {x.shape}")
    cfg.latent_shape(x.shape[1], x.shape[2])
    moments = self.encoder(x)
    if cfg.use_quant_conv:
      moments = self.quant_conv(moments)
    moments = moments.astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)  # each (N, h, w, latent)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z):
    """The image (N, h f, w f, out_channels) float32 of latents z (N, h, w, latent_channels).

    Raises:
      ValueError: for latents that are not (N, h, w, latent_channels).
    """
    cfg = self.cfg
    if z.ndim != 4 or z.shape[-1] != cfg.latent_channels:
      raise ValueError(f"expected latents (N, h, w, {cfg.latent_channels}), got shape {z.shape}")
    z = z.astype(cfg.dtype)
    if cfg.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x, key=None):
    """(reconstruction, mean, logvar): x decoded from a posterior sample (from its mean when key is None)."""
    mean, logvar = self.encode(x)
    z = mean if key is None else sample_posterior(key, mean, logvar)
    return self.decode(z), mean, logvar


# ---------------------------------------------------------------------------------------
# The posterior and the loss terms.


def sample_posterior(key, mean, logvar):
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): the reparameterised sample of q(z | x)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def kl_divergence(mean, logvar):
  """KL(q(z | x) || N(0, I)) per image, summed over the latent: 0.5 sum(mean^2 + var - 1 - logvar), (N,)."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))


RECONSTRUCTIONS = ("l1", "l2")


def reconstruction_error(x, x_hat, kind: str):
  """Per image, summed over pixels: sum |x - x_hat| ("l1", the paper's pixel term) or sum (x - x_hat)^2 ("l2"), (N,)."""
  if kind not in RECONSTRUCTIONS:
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of: {', '.join(RECONSTRUCTIONS)}")
  diff = x_hat - x
  return jnp.sum(jnp.abs(diff) if kind == "l1" else jnp.square(diff), axis=(1, 2, 3))


# ---------------------------------------------------------------------------------------
# Weights to and from diffusers: one explicit name table.


def _hf_table(cfg: AutoencoderKLConfig) -> list[hf.Tensor]:
  """Every tensor of diffusers' AutoencoderKL and its parameter here.

  torch's Conv2d stores (out, in, kh, kw) and flax's Conv (kh, kw, in, out); Linear stores
  (out, in). The single-head attention's query/key/value kernels (C, C) become (C, 1, C), its
  output kernel (1, C, C).
  """
  conv_w = lambda w: np.transpose(w, (2, 3, 1, 0))
  conv_w_back = lambda w: np.transpose(w, (3, 2, 0, 1))

  def conv(theirs, ours):
    return [hf.Tensor(theirs + ".weight", ours + ("kernel",), conv_w, conv_w_back),
            hf.Tensor(theirs + ".bias", ours + ("bias",))]

  def norm(theirs, ours):
    return [hf.Tensor(theirs + ".weight", ours + ("scale",)), hf.Tensor(theirs + ".bias", ours + ("bias",))]

  def resnet(theirs, ours, shortcut):
    rows = norm(theirs + ".norm1", ours + ("norm1",)) + conv(theirs + ".conv1", ours + ("conv1",))
    rows += norm(theirs + ".norm2", ours + ("norm2",)) + conv(theirs + ".conv2", ours + ("conv2",))
    return rows + (conv(theirs + ".conv_shortcut", ours + ("conv_shortcut",)) if shortcut else [])

  def attention(theirs, ours, c):
    ours_attn = ours + ("attention",)
    rows = norm(theirs + ".group_norm", ours + ("group_norm",))
    for t, o in (("to_q", "query"), ("to_k", "key"), ("to_v", "value")):
      rows += [hf.Tensor(f"{theirs}.{t}.weight", ours_attn + (o, "kernel"), lambda w: w.T.reshape(c, 1, c),
                         lambda w: w.reshape(c, c).T),
               hf.Tensor(f"{theirs}.{t}.bias", ours_attn + (o, "bias"), lambda b: b.reshape(1, c),
                         lambda b: b.reshape(c))]
    return rows + [hf.Tensor(theirs + ".to_out.0.weight", ours_attn + ("out", "kernel"),
                             lambda w: w.T.reshape(1, c, c), lambda w: w.reshape(c, c).T),
                   hf.Tensor(theirs + ".to_out.0.bias", ours_attn + ("out", "bias"))]

  def mid(theirs, ours):
    c = cfg.block_out_channels[-1]
    rows = resnet(theirs + ".resnets.0", ours + ("resnets_0",), False)
    if cfg.mid_block_add_attention:
      rows += attention(theirs + ".attentions.0", ours + ("attentions_0",), c)
    return rows + resnet(theirs + ".resnets.1", ours + ("resnets_1",), False)

  blocks = cfg.block_out_channels
  table = conv("encoder.conv_in", ("encoder", "conv_in"))
  width = blocks[0]
  for i, ch in enumerate(blocks):
    for j in range(cfg.layers_per_block):
      table += resnet(f"encoder.down_blocks.{i}.resnets.{j}", ("encoder", f"down_blocks_{i}_resnets_{j}"),
                      width != ch)
      width = ch
    if i < len(blocks) - 1:
      table += conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", ("encoder", f"down_blocks_{i}_downsample"))
  table += mid("encoder.mid_block", ("encoder", "mid_block"))
  table += norm("encoder.conv_norm_out", ("encoder", "conv_norm_out")) + conv("encoder.conv_out",
                                                                             ("encoder", "conv_out"))
  table += conv("decoder.conv_in", ("decoder", "conv_in")) + mid("decoder.mid_block", ("decoder", "mid_block"))
  for i, ch in enumerate(blocks[::-1]):
    for j in range(cfg.layers_per_block + 1):
      table += resnet(f"decoder.up_blocks.{i}.resnets.{j}", ("decoder", f"up_blocks_{i}_resnets_{j}"), width != ch)
      width = ch
    if i < len(blocks) - 1:
      table += conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", ("decoder", f"up_blocks_{i}_upsample"))
  table += norm("decoder.conv_norm_out", ("decoder", "conv_norm_out")) + conv("decoder.conv_out",
                                                                             ("decoder", "conv_out"))
  if cfg.use_quant_conv:
    table += conv("quant_conv", ("quant_conv",))
  if cfg.use_post_quant_conv:
    table += conv("post_quant_conv", ("post_quant_conv",))
  return table


def config_from_hf(saved: dict, path: str = "config.json") -> AutoencoderKLConfig:
  """Our config of diffusers' AutoencoderKL config.json (a dict).

  Raises:
    ValueError: for another model class, block types, activation, or latent shift/statistics
      this model does not have, and for a field out of range.
  """
  if saved.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
    raise ValueError(f"{path} describes a {saved['_class_name']}, not an AutoencoderKL")
  blocks = tuple(saved.get("block_out_channels", (64,)))
  for field, kind in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
    types = tuple(saved.get(field, (kind,)))
    if types != (kind,) * len(blocks):
      raise ValueError(f"{path}: {field} {list(types)} is not {len(blocks)} x {kind} (one per block_out_channels)")
  if saved.get("act_fn", "silu") != "silu":
    raise ValueError(f"{path}: act_fn {saved['act_fn']!r} is not supported (the autoencoder uses silu)")
  for field in ("shift_factor", "latents_mean", "latents_std"):
    if saved.get(field) is not None:
      raise ValueError(f"{path}: {field} is set; this autoencoder scales latents by scaling_factor alone")
  sample_size = saved.get("sample_size", 32)
  return AutoencoderKLConfig(
      in_channels=saved.get("in_channels", 3), out_channels=saved.get("out_channels", 3), block_out_channels=blocks,
      layers_per_block=saved.get("layers_per_block", 1), latent_channels=saved.get("latent_channels", 4),
      norm_num_groups=saved.get("norm_num_groups", 32),
      sample_size=sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size,
      scaling_factor=float(saved.get("scaling_factor", 0.18215)),
      mid_block_add_attention=bool(saved.get("mid_block_add_attention", True)),
      use_quant_conv=bool(saved.get("use_quant_conv", True)),
      use_post_quant_conv=bool(saved.get("use_post_quant_conv", True)))


def config_to_hf(cfg: AutoencoderKLConfig) -> dict:
  """diffusers' config.json of `cfg`."""
  n = len(cfg.block_out_channels)
  return {"_class_name": "AutoencoderKL", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
          "down_block_types": [DOWN_BLOCK] * n, "up_block_types": [UP_BLOCK] * n,
          "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
          "act_fn": "silu", "latent_channels": cfg.latent_channels, "norm_num_groups": cfg.norm_num_groups,
          "sample_size": cfg.sample_size, "scaling_factor": cfg.scaling_factor, "shift_factor": None,
          "latents_mean": None, "latents_std": None, "force_upcast": True, "use_quant_conv": cfg.use_quant_conv,
          "use_post_quant_conv": cfg.use_post_quant_conv, "mid_block_add_attention": cfg.mid_block_add_attention}


def param_shapes(model: AutoencoderKL):
  """The model's parameter shapes (unboxed), without computing anything."""
  cfg = model.cfg
  x = jnp.zeros((1, cfg.downsampling_factor, cfg.downsampling_factor, cfg.in_channels))
  return nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), x)))["params"]


def load_hf(path: str, **overrides):
  """Reads a directory diffusers' AutoencoderKL.save_pretrained wrote (config.json + safetensors), without torch.

  Args:
    path: the directory.
    **overrides: AutoencoderKLConfig fields to replace (attention, dtype, scaling_factor).

  Returns:
    (model, params): params is the dict to pass as {"params": params}.

  Raises:
    ValueError: without config.json or the weights, for a config this model does not have, or
      when a tensor is missing or has another shape (the message names it).
  """
  saved, weights_path = hf.saved_config(path, "AutoencoderKL", WEIGHTS_NAME)
  cfg = dataclasses.replace(config_from_hf(saved, os.path.join(path, "config.json")), **overrides)
  model = AutoencoderKL(cfg)
  params = hf.read(_hf_table(cfg), hf.load_weights(weights_path), param_shapes(model), weights_path)
  return model, params


def save_hf(model: AutoencoderKL, params, path: str) -> None:
  """Writes config.json + diffusion_pytorch_model.safetensors that diffusers' AutoencoderKL.from_pretrained loads.

  Args:
    model: the module (its config, scaling_factor included, goes into config.json).
    params: its parameters, the dict passed as {"params": params} (boxed or not).
    path: the directory (created if missing).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(path, exist_ok=True)
  save_file(hf.write(_hf_table(model.cfg), nn.unbox(params)), os.path.join(path, WEIGHTS_NAME),
            metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_hf(model.cfg), f, indent=2)
