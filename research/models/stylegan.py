"""StyleGAN2 (Karras et al., 2020) at small resolutions, with StyleGAN1's AdaIN beside it, and DragGAN-style editing.

    gen, disc = Generator(config), Discriminator(config)
    w = gen.apply(params, z, method=Generator.map)                  # (batch, w_dim)
    ws = mix_styles(key, w, w2, config.num_ws, prob)                # (batch, num_ws, w_dim)
    images = gen.apply(params, truncate(ws, w_avg, psi), method=Generator.synthesize)

The loop's plug-in (two optimizers, lazy R1 and path-length regularisation, the tracked mean w)
is research/tasks/stylegan.py.

Generator. A mapping network (pixel norm of z, then `mapping_layers` dense layers whose learning
rate is `mapping_lr_mul` times the rest) turns z into w. The synthesis network starts from a learned
constant 4x4 map; each resolution 4, 8, ..., `resolution` has its convolutions (one at 4x4, two
above: the first after a bilinear 2x upsampling), each reading its own w of `num_ws`, then a toRGB
1x1 convolution; the RGB outputs of all resolutions are upsampled and summed (the "skip" generator).
Each convolution is followed by per-pixel noise times a learned per-layer strength, a bias and
LeakyReLU(0.2) times sqrt(2).

How a style w acts on a convolution (`style_mode`):
  demod  StyleGAN2's weight demodulation: the style's affine s = A(w) scales the kernel's input
         channels, w'_ijk = s_i w_ijk, and each output channel is divided by its norm,
         w''_ijk = w'_ijk / sqrt(sum_{i,k} w'_ijk^2 + eps) (their Eq. 1 and 3; `demodulate`). It is
         computed, equivalently, by scaling the activations by s before a shared convolution and the
         outputs by the demodulation coefficient after it.
  adain  StyleGAN1's adaptive instance normalisation: each input channel is normalised to zero mean
         and unit variance over the image, then scaled by the style's s and shifted by its bias b,
         before an unmodulated convolution.
toRGB layers are modulated but never demodulated, in both modes.

Every weight uses the equalised learning rate (its initialisation is N(0, 1) and its runtime scale
1/sqrt(fan_in)). The discriminator is StyleGAN2's residual one: fromRGB, per resolution two 3x3
convolutions with a 2x average-pool downsampling and a 1x1 skip (the sum divided by sqrt(2)), then
at 4x4 the minibatch standard deviation (one more channel: the standard deviation of every feature
over groups of `mbstd_group` images, averaged), a convolution and two dense layers.

Losses (D the discriminator's logit): the non-saturating logistic losses, D minimises
softplus(-D(x)) + softplus(D(G(z))) and G minimises softplus(-D(G(z))); regularisers:
  R1 on reals, gamma / 2 * E ||grad_x D(x)||^2 (Mescheder et al., 2018), every `r1_every` steps
     and then scaled by `r1_every` (lazy regularisation);
  path length, E (||J_w^T y||_2 - a)^2 with y ~ N(0, I) / sqrt(H W) an image-space direction and a
     the running mean of the lengths (`path_length_penalty`), every `pl_every` steps, scaled by it.
Style mixing: with probability `mixing_prob` a batch's ws switch from one latent's w to another's at
a random layer (`mix_styles`). Truncation: w' = w_avg + psi (w - w_avg), with w_avg the mean w
tracked over training (`truncate`).

Editing (Pan et al., 2023, DragGAN): `drag` optimises the first layers' w so that the generator's
features around a handle point move a small step towards a target (motion supervision), then
finds the handle again as the nearest feature to its original one (point tracking), as a
`lax.scan` of such steps.
"""

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

STYLE_MODES = ("demod", "adain")
LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through LeakyReLU(0.2)
DEMOD_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class StyleGANConfig:
  """The architecture of a generator and discriminator pair.

  Attributes:
    latent_dim: dimension of z.
    w_dim: dimension of w.
    mapping_layers: dense layers of the mapping network.
    channels: feature channels per resolution, from 4x4 up to `resolution` (len = log2(resolution) - 1).
    resolution: image side: 8 (digits) or 32 (shapes); a power of two >= 4.
    num_channels: image channels: 1 (digits) or 3 (shapes).
    style_mode: "demod" (StyleGAN2) or "adain" (StyleGAN1).
    mbstd_group: images per minibatch-standard-deviation group (at most the batch).
    mapping_lr_mul: learning-rate multiplier of the mapping network (StyleGAN: 0.01).
  """

  latent_dim: int = 32
  w_dim: int = 32
  mapping_layers: int = 2
  channels: tuple[int, ...] = (32, 32)
  resolution: int = 8
  num_channels: int = 1
  style_mode: str = "demod"
  mbstd_group: int = 4
  mapping_lr_mul: float = 0.01

  def __post_init__(self):
    if self.style_mode not in STYLE_MODES:
      raise ValueError(f"unknown style_mode {self.style_mode!r}; choose one of: {', '.join(STYLE_MODES)}")
    levels = int(round(math.log2(self.resolution))) - 1 if self.resolution >= 4 else 0
    if self.resolution < 4 or 2 ** (levels + 1) != self.resolution:
      raise ValueError(f"resolution must be a power of two >= 4, got {self.resolution}")
    if len(self.channels) != levels:
      raise ValueError(f"channels must name {levels} widths (4x4 up to {self.resolution}x{self.resolution}), "
                       f"got {len(self.channels)}")

  @property
  def num_ws(self) -> int:
    """How many ws the synthesis reads: one per convolution, and one more for the last toRGB."""
    return 2 * len(self.channels)


# ---------------------------------------------------------------------------------------
# Layers with the equalised learning rate.


def lrelu(x):
  return nn.leaky_relu(x, 0.2) * LRELU_GAIN


def _upsample_axis(x, axis: int):
  """Bilinear 2x along one axis (half-pixel centres, edges clamped): 0.75 of the nearest input plus 0.25 of the next."""
  n = x.shape[axis]
  padded = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis), x,
                            jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)  # (..., n + 2, ...)
  before = 0.75 * x + 0.25 * jax.lax.slice_in_dim(padded, 0, n, axis=axis)  # output pixels 2i
  after = 0.75 * x + 0.25 * jax.lax.slice_in_dim(padded, 2, n + 2, axis=axis)  # output pixels 2i + 1
  stacked = jnp.stack([before, after], axis + 1)  # (..., n, 2, ...)
  return stacked.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def upsample2x(x):
  """Bilinear 2x upsampling of (batch, H, W, C) (as jax.image.resize's "bilinear", in a few slices)."""
  return _upsample_axis(_upsample_axis(x, 1), 2)  # (batch, 2H, 2W, C)


def downsample2x(x):
  """2x2 average pooling of (batch, H, W, C)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))  # (batch, H/2, W/2, C)


def conv2d(x, kernel):
  """SAME-padded stride-1 convolution of (batch, H, W, Cin) with (k, k, Cin, Cout)."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class EqualDense(nn.Module):
  """A dense layer with the equalised learning rate: weights N(0, 1 / lr_mul^2) scaled by lr_mul / sqrt(fan_in)."""

  features: int
  lr_mul: float = 1.0
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0 / self.lr_mul), (fan_in, self.features))
    bias = self.param("bias", nn.initializers.constant(self.bias_init / self.lr_mul), (self.features,))
    return x @ (kernel * (self.lr_mul / math.sqrt(fan_in))) + bias * self.lr_mul  # (batch, features)


class EqualConv(nn.Module):
  """A SAME-padded convolution with the equalised learning rate."""

  features: int
  kernel_size: int = 3
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, cin, self.features))
    y = conv2d(x, kernel / math.sqrt(k * k * cin))  # (batch, H, W, features)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return y


# ---------------------------------------------------------------------------------------
# The generator.


def demodulate(kernel: jax.Array, styles: jax.Array, eps: float = DEMOD_EPS) -> jax.Array:
  """StyleGAN2's modulated and demodulated kernels, one per example (their Eq. 1 and 3).

  Args:
    kernel: (k, k, Cin, Cout) the shared kernel w.
    styles: (batch, Cin) the styles s = A(w).
    eps: keeps the division finite for an all-zero kernel.

  Returns:
    (batch, k, k, Cin, Cout): w'' = s_i w_ijk / sqrt(sum_{i,k} (s_i w_ijk)^2 + eps), unit norm per
    output channel j (up to eps).
  """
  if kernel.ndim != 4 or styles.ndim != 2 or styles.shape[-1] != kernel.shape[2]:
    raise ValueError(f"demodulate needs a (k, k, Cin, Cout) kernel and (batch, Cin) styles, got {kernel.shape} "
                     f"and {styles.shape}")
  modulated = kernel[None] * styles[:, None, None, :, None]  # (batch, k, k, Cin, Cout)
  norms = jnp.sqrt(jnp.sum(jnp.square(modulated), axis=(1, 2, 3), keepdims=True) + eps)  # (batch, 1, 1, 1, Cout)
  return modulated / norms


class StyledConv(nn.Module):
  """A convolution whose input channels are scaled by a style of w: demodulated (demod) or after AdaIN (adain)."""

  features: int
  kernel_size: int = 3
  style_mode: str = "demod"
  demod: bool = True  # False for toRGB: modulated only

  @nn.compact
  def __call__(self, x, w):
    k, cin = self.kernel_size, x.shape[-1]
    styles = EqualDense(cin, bias_init=1.0, name="affine")(w)  # (batch, Cin)
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, cin, self.features))
    kernel = kernel / math.sqrt(k * k * cin)  # equalised learning rate
    if self.style_mode == "adain" and self.demod:
      shift = EqualDense(cin, name="affine_bias")(w)  # (batch, Cin)
      mean = jnp.mean(x, axis=(1, 2), keepdims=True)  # (batch, 1, 1, Cin)
      x = (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=(1, 2), keepdims=True) + 1e-8)
      return conv2d(x * styles[:, None, None, :] + shift[:, None, None, :], kernel)  # (batch, H, W, Cout)
    # conv(x * s, w) = conv(x, s_i w_ijk) per example: the modulation moves onto the activations.
    y = conv2d(x * styles[:, None, None, :], kernel)  # (batch, H, W, Cout)
    if self.demod:
      coeff = jax.lax.rsqrt(jnp.einsum("hwio,bi->bo", jnp.square(kernel), jnp.square(styles)) + DEMOD_EPS)
      y = y * coeff[:, None, None, :]  # (batch, H, W, Cout)
    return y


class SynthesisLayer(nn.Module):
  """A styled 3x3 convolution (after a 2x upsampling when `up`), noise times a learned strength, bias, LeakyReLU."""

  features: int
  style_mode: str
  up: bool = False

  @nn.compact
  def __call__(self, x, w):
    if self.up:
      x = upsample2x(x)  # (batch, 2H, 2W, C)
    y = StyledConv(self.features, 3, self.style_mode)(x, w)  # (batch, H, W, features)
    strength = self.param("noise_strength", nn.initializers.zeros_init(), ())
    if self.has_rng("noise"):
      y = y + strength * jax.random.normal(self.make_rng("noise"), y.shape[:3] + (1,), y.dtype)
    return lrelu(y + self.param("bias", nn.initializers.zeros_init(), (self.features,)))


class ToRGB(nn.Module):
  """A modulated (never demodulated) 1x1 convolution to image channels, with a bias."""

  num_channels: int

  @nn.compact
  def __call__(self, x, w):
    y = StyledConv(self.num_channels, 1, demod=False)(x, w)  # (batch, H, W, channels)
    return y + self.param("bias", nn.initializers.zeros_init(), (self.num_channels,))


class MappingNetwork(nn.Module):
  """z -> pixel norm -> `layers` dense layers with LeakyReLU -> w."""

  w_dim: int
  layers: int
  lr_mul: float

  @nn.compact
  def __call__(self, z):
    h = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), -1, keepdims=True) + 1e-8)  # pixel norm: (batch, latent)
    for _ in range(self.layers):
      h = lrelu(EqualDense(self.w_dim, self.lr_mul)(h))  # (batch, w_dim)
    return h


class Synthesis(nn.Module):
  """ws -> the learned constant -> styled convolutions per resolution -> the sum of the upsampled toRGB outputs."""

  config: StyleGANConfig

  @nn.compact
  def __call__(self, ws, return_features: bool = False):
    cfg = self.config
    batch = ws.shape[0]
    const = self.param("const", nn.initializers.normal(1.0), (4, 4, cfg.channels[0]))
    x = jnp.broadcast_to(const, (batch, 4, 4, cfg.channels[0]))  # (batch, 4, 4, C0)
    x = SynthesisLayer(cfg.channels[0], cfg.style_mode, name="conv4")(x, ws[:, 0])
    rgb = ToRGB(cfg.num_channels, name="torgb4")(x, ws[:, 1])  # (batch, 4, 4, channels)
    blocks = [x]
    for level, width in enumerate(cfg.channels[1:], start=1):
      size = 4 * 2 ** level
      x = SynthesisLayer(width, cfg.style_mode, up=True, name=f"conv{size}_up")(x, ws[:, 2 * level - 1])
      x = SynthesisLayer(width, cfg.style_mode, name=f"conv{size}")(x, ws[:, 2 * level])  # (batch, size, size, C)
      rgb = upsample2x(rgb) + ToRGB(cfg.num_channels, name=f"torgb{size}")(x, ws[:, 2 * level + 1])
      blocks.append(x)
    if return_features:
      # Each block's output bilinearly resized to the image (as DragGAN resizes its feature map).
      size = cfg.resolution
      feats = [jax.image.resize(block, (batch, size, size, block.shape[-1]), "bilinear") for block in blocks]
      return rgb, jnp.concatenate(feats, -1)  # (batch, R, R, channels), (batch, R, R, sum of channels)
    return rgb  # (batch, R, R, channels)


class Generator(nn.Module):
  """The mapping network and the synthesis network; `__call__` is z -> image without mixing or truncation."""

  config: StyleGANConfig

  def setup(self):
    cfg = self.config
    self.mapping = MappingNetwork(cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_mul)
    self.synthesis = Synthesis(cfg)

  def __call__(self, z):
    return self.synthesize(broadcast_ws(self.map(z), self.config.num_ws))

  def map(self, z):
    """(batch, latent_dim) -> (batch, w_dim)."""
    return self.mapping(z)

  def synthesize(self, ws, return_features: bool = False):
    """(batch, num_ws, w_dim) -> (batch, R, R, channels) images (and every block's features, upsampled to R x R)."""
    return self.synthesis(ws, return_features)


# ---------------------------------------------------------------------------------------
# The discriminator.


def minibatch_stddev(x: jax.Array, group: int) -> jax.Array:
  """Appends one channel: the standard deviation of each feature over a group of images, averaged.

  Args:
    x: (batch, H, W, C); batch divisible by min(group, batch).
    group: images per group.

  Returns:
    (batch, H, W, C + 1).
  """
  b, h, w, c = x.shape
  g = min(group, b)
  grouped = x.reshape(g, b // g, h, w, c)  # (group, batch/group, H, W, C): image i is in group i % (batch/group)
  std = jnp.sqrt(jnp.var(grouped, axis=0) + 1e-8)  # (batch/group, H, W, C)
  stat = jnp.mean(std, axis=(1, 2, 3))  # (batch/group,)
  stat = jnp.tile(stat, g)[:, None, None, None]  # (batch, 1, 1, 1)
  return jnp.concatenate([x, jnp.broadcast_to(stat, (b, h, w, 1))], -1)


class Discriminator(nn.Module):
  """StyleGAN2's residual discriminator: image -> one logit per example."""

  config: StyleGANConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = lrelu(EqualConv(cfg.channels[-1], 1, name="fromrgb")(x))  # (batch, R, R, C_last)
    for level in range(len(cfg.channels) - 1, 0, -1):
      size, width, narrower = 4 * 2 ** level, cfg.channels[level], cfg.channels[level - 1]
      skip = EqualConv(narrower, 1, use_bias=False, name=f"skip{size}")(downsample2x(h))  # (batch, R/2, R/2, C')
      h = lrelu(EqualConv(width, 3, name=f"conv{size}")(h))
      h = lrelu(EqualConv(narrower, 3, name=f"conv{size}_down")(downsample2x(h)))  # (batch, R/2, R/2, C')
      h = (h + skip) / math.sqrt(2.0)
    h = minibatch_stddev(h, cfg.mbstd_group)  # (batch, 4, 4, C0 + 1)
    h = lrelu(EqualConv(cfg.channels[0], 3, name="conv4")(h))
    h = lrelu(EqualDense(cfg.channels[0], name="dense")(h.reshape(h.shape[0], -1)))  # (batch, C0)
    return EqualDense(1, name="out")(h)[:, 0]  # (batch,)


# ---------------------------------------------------------------------------------------
# Styles: broadcasting, mixing, truncation.


def broadcast_ws(w: jax.Array, num_ws: int) -> jax.Array:
  """(batch, w_dim) -> (batch, num_ws, w_dim): every layer reads the same w."""
  return jnp.broadcast_to(w[:, None, :], (w.shape[0], num_ws, w.shape[-1]))


def mix_styles(key: jax.Array, w1: jax.Array, w2: jax.Array, num_ws: int, prob) -> jax.Array:
  """Style mixing: per example, with probability `prob`, the layers from a random crossover on read w2.

  Args:
    key: draws whether each example mixes and its crossover layer.
    w1: (batch, w_dim) the first latent's w.
    w2: (batch, w_dim) the second latent's w.
    num_ws: layers of the synthesis.
    prob: the mixing probability (a traced scalar is fine).

  Returns:
    (batch, num_ws, w_dim): layers [0, c) read w1 and [c, num_ws) read w2, with c uniform in
    [1, num_ws) for a mixing example and c = num_ws (w1 everywhere) otherwise.
  """
  k_mix, k_cut = jax.random.split(key)
  batch = w1.shape[0]
  cut = jax.random.randint(k_cut, (batch,), 1, max(num_ws, 2))  # (batch,)
  cut = jnp.where(jax.random.uniform(k_mix, (batch,)) < prob, cut, num_ws)
  first = jnp.arange(num_ws)[None, :] < cut[:, None]  # (batch, num_ws)
  return jnp.where(first[..., None], w1[:, None, :], w2[:, None, :])


def truncate(w: jax.Array, w_avg: jax.Array, psi) -> jax.Array:
  """The truncation trick: w' = w_avg + psi (w - w_avg).

  Args:
    w: (..., w_dim) styles.
    w_avg: (w_dim,) the mean w.
    psi: in [0, 1]: 1 leaves w as it is, 0 gives w_avg for every w (a traced scalar is not checked).

  Returns:
    The truncated styles, shaped as `w`.

  Raises:
    ValueError: for a concrete psi outside [0, 1].
  """
  if not isinstance(psi, jax.core.Tracer) and not 0.0 <= float(psi) <= 1.0:
    raise ValueError(f"truncation psi must be in [0, 1], got {float(psi)}")
  return w_avg + psi * (w - w_avg)


# ---------------------------------------------------------------------------------------
# Losses and regularisers.


def discriminator_loss(d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  """The logistic discriminator loss: E softplus(-D(x)) + E softplus(D(G(z)))."""
  return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))


def generator_loss(d_fake: jax.Array) -> jax.Array:
  """The non-saturating generator loss: E softplus(-D(G(z))) = -E log s(D(G(z)))."""
  return jnp.mean(jax.nn.softplus(-d_fake))


def r1_penalty(disc_fn, real: jax.Array) -> jax.Array:
  """E ||grad_x D(x)||^2 on real images (R1 is gamma / 2 times this).

  Args:
    disc_fn: images (batch, H, W, C) -> logits (batch,).
    real: (batch, H, W, C) real images.

  Returns:
    The scalar mean squared gradient norm.
  """
  grads = jax.grad(lambda x: jnp.sum(disc_fn(x)))(real)  # (batch, H, W, C)
  return jnp.mean(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), -1))


class PathLength(NamedTuple):
  """What `path_length_penalty` returns."""

  penalty: jax.Array  # scalar E (||J_w^T y|| - a)^2
  pl_mean: jax.Array  # the updated running mean a
  lengths: jax.Array  # (batch,) ||J_w^T y|| per example


def path_length_penalty(synthesize, ws: jax.Array, key: jax.Array, pl_mean: jax.Array,
                        decay: float = 0.01) -> PathLength:
  """StyleGAN2's path-length regulariser (their Eq. 4), E_{w,y} (||J_w^T y||_2 - a)^2.

  (1) y ~ N(0, I) / sqrt(H W) is a random image-space direction; (2) J_w^T y is the gradient of
  sum(g(w) * y) with respect to the ws; its length is sqrt(mean over layers of the squared norm
  over w_dim); (3) a is the running mean of the lengths, a <- a + decay (mean length - a),
  held fixed (no gradient) in the penalty.

  Args:
    synthesize: ws (batch, num_ws, w_dim) -> images (batch, H, W, C), closing over the
      parameters that the penalty's gradient is taken for.
    ws: (batch, num_ws, w_dim).
    key: draws y.
    pl_mean: the running mean a (scalar).
    decay: the running mean's rate.

  Returns:
    PathLength(penalty, updated pl_mean, lengths).
  """
  images, vjp = jax.vjp(synthesize, ws)  # (batch, H, W, C)
  y = jax.random.normal(key, images.shape) / math.sqrt(images.shape[1] * images.shape[2])
  (grads,) = vjp(y)  # (batch, num_ws, w_dim): J_w^T y
  lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), -1), -1) + 1e-12)  # (batch,)
  pl_mean = jax.lax.stop_gradient(pl_mean + decay * (jnp.mean(lengths) - pl_mean))
  return PathLength(jnp.mean(jnp.square(lengths - pl_mean)), pl_mean, lengths)


# ---------------------------------------------------------------------------------------
# Sampling and perceptual path length.


def sample_ws(gen: Generator, params, w_avg: jax.Array, key: jax.Array, n: int, psi) -> jax.Array:
  """(n, num_ws, w_dim) truncated styles of n latents z ~ N(0, I)."""
  z = jax.random.normal(key, (n, gen.config.latent_dim))  # (n, latent)
  w = gen.apply(params, z, method=Generator.map)  # (n, w_dim)
  return broadcast_ws(truncate(w, w_avg, psi), gen.config.num_ws)


def generate(gen: Generator, params, w_avg: jax.Array, key: jax.Array, n: int, psi=1.0) -> jax.Array:
  """n images (n, R, R, channels), roughly in [-1, 1], truncated by psi, with random noise inputs.

  Args:
    gen: the generator module.
    params: its parameters.
    w_avg: (w_dim,) the tracked mean w.
    key: draws the latents and the noise.
    n: number of images.
    psi: the truncation (1: none).
  """
  k_z, k_noise = jax.random.split(key)
  ws = sample_ws(gen, params, w_avg, k_z, n, psi)
  return gen.apply(params, ws, method=Generator.synthesize, rngs={"noise": k_noise})


def path_length_pairs(gen: Generator, params, w_avg: jax.Array, key: jax.Array, n: int, psi=1.0,
                      eps: float = 1e-4) -> tuple[jax.Array, jax.Array]:
  """The image pairs of the perceptual path length in W (Karras et al., 2019): g(lerp(w1, w2, t)) and at t + eps.

  t ~ U[0, 1]. The noise inputs are off (zero) for both images of a pair, so only the step in W
  separates them. PPL is E[d(a, b)^2] / eps^2 in some feature space d (`perceptual_path_length`).

  Returns:
    Two (n, R, R, channels) batches of images.
  """
  k_a, k_b, k_t = jax.random.split(key, 3)
  w1 = sample_ws(gen, params, w_avg, k_a, n, psi)  # (n, num_ws, w_dim)
  w2 = sample_ws(gen, params, w_avg, k_b, n, psi)
  t = jax.random.uniform(k_t, (n, 1, 1))
  ws = jnp.concatenate([w1 + t * (w2 - w1), w1 + (t + eps) * (w2 - w1)])  # (2n, num_ws, w_dim)
  images = gen.apply(params, ws, method=Generator.synthesize)  # (2n, R, R, channels)
  return images[:n], images[n:]


def perceptual_path_length(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-4) -> float:
  """Mean of ||f(a) - f(b)||^2 / eps^2 over pairs, within the 1st to 99th percentile (as Karras et al.).

  Args:
    feats_a: (n, F) features of the images at t.
    feats_b: (n, F) features of the images at t + eps.
    eps: the step between them.
  """
  dist = np.sum(np.square(np.asarray(feats_a, np.float64) - np.asarray(feats_b, np.float64)), -1) / eps ** 2
  lo, hi = np.percentile(dist, [1, 99])
  keep = (dist >= lo) & (dist <= hi)
  return float(np.mean(dist[keep]))


# ---------------------------------------------------------------------------------------
# DragGAN-style editing (Pan et al., 2023).


class DragResult(NamedTuple):
  """What `drag` returns."""

  ws: jax.Array  # (1, num_ws, w_dim) the edited styles
  handles: jax.Array  # (steps + 1, 2) the tracked handle (x, y) before each step and at the end
  image: jax.Array  # (1, R, R, channels) the edited image


def sample_features(feats: jax.Array, points: jax.Array) -> jax.Array:
  """Bilinear samples of a feature map at real-valued (x, y) points (x the column), clamped to the map.

  Args:
    feats: (H, W, C).
    points: (K, 2) as (x, y).

  Returns:
    (K, C).
  """
  h, w, _ = feats.shape
  x = jnp.clip(points[:, 0], 0.0, w - 1.0)
  y = jnp.clip(points[:, 1], 0.0, h - 1.0)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]  # (K, 1)
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
  top = feats[y0, x0] * (1 - fx) + feats[y0, x1] * fx  # (K, C)
  bottom = feats[y1, x0] * (1 - fx) + feats[y1, x1] * fx
  return top * (1 - fy) + bottom * fy


def _disc_offsets(radius: int) -> np.ndarray:
  """(K, 2) integer offsets within a disc of `radius` (the motion-supervision patch)."""
  grid = np.stack(np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1), indexing="xy"), -1)
  grid = grid.reshape(-1, 2)
  return grid[np.sum(grid ** 2, -1) <= radius ** 2].astype(np.float32)


def _square_offsets(radius: int) -> np.ndarray:
  """(K, 2) integer offsets within a square of half-side `radius` (the point-tracking search window)."""
  grid = np.stack(np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1), indexing="xy"), -1)
  return grid.reshape(-1, 2).astype(np.float32)


def _is_concrete(value) -> bool:
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def drag(gen: Generator, params, ws: jax.Array, handle, target, steps: int = 40, lr: float = 0.05,
         edit_layers: int | None = None, supervision_radius: int = 1, tracking_radius: int = 2,
         stop_distance: float = 1.0) -> DragResult:
  """Drags the content at `handle` towards `target` by optimising w (DragGAN's motion supervision and tracking).

  F is every synthesis block's output bilinearly resized to the image and concatenated
  (`Synthesis(return_features=True)`), sampled bilinearly at real-valued points. Each of `steps`
  steps (a `lax.scan`, one compiled program):
    (1) motion supervision (their Eq. 1, without the mask term): with d = (t - p) / ||t - p||,
        L = sum_{q in disc(p, supervision_radius)} ||F(q + d) - sg(F(q))||_1; the stop-gradient
        on F(q) makes the features one step ahead along d move onto those at q, so the content
        moves towards the target. One Adam step on the first `edit_layers` ws (the coarse
        layers, which place the content; the rest stay as they were);
    (2) point tracking (their Eq. 2): the new handle is the pixel of the square of half-side
        `tracking_radius` around p whose feature in the updated image is nearest (L1) to the
        handle's feature f = F_0(handle) in the initial image.
  Once the handle is within `stop_distance` of the target the steps leave w as it is. The noise
  inputs are off throughout.

  The points may be traced (`jax.vmap` over handles and targets drags many images in one program);
  concrete points are checked.

  Args:
    gen: the generator module.
    params: its parameters.
    ws: (1, num_ws, w_dim) the styles of the image to edit.
    handle: (x, y) pixel coordinates (column, row) of the handle point.
    target: (x, y) of the target point.
    steps: optimisation steps (at most; see stop_distance).
    lr: Adam's learning rate on w.
    edit_layers: how many of the first ws are optimised (half of them by default).
    supervision_radius: radius r1 of the motion-supervision disc, in pixels.
    tracking_radius: half-side r2 of the tracking window, in pixels.
    stop_distance: the steps stop moving once the handle is this close to the target (DragGAN: 1).

  Returns:
    DragResult(edited ws, the handle's path, the edited image).

  Raises:
    ValueError: for a point outside the image, or a ws of another shape.
  """
  cfg = gen.config
  size = cfg.resolution
  if ws.shape != (1, cfg.num_ws, cfg.w_dim):
    raise ValueError(f"drag edits one image's ws of shape (1, {cfg.num_ws}, {cfg.w_dim}), got {ws.shape}")
  for name, point in (("handle", handle), ("target", target)):
    if len(point) != 2 or (_is_concrete(point) and not all(0 <= float(v) <= size - 1 for v in point)):
      raise ValueError(f"{name} point {tuple(np.asarray(point).tolist())} is outside the {size}x{size} image "
                       f"(x and y in 0..{size - 1})")
  import optax  # pylint: disable=import-outside-toplevel  # only editing needs an optimizer here

  edit = max(cfg.num_ws // 2, 1) if edit_layers is None else edit_layers
  if not 1 <= edit <= cfg.num_ws:
    raise ValueError(f"edit_layers must be in 1..{cfg.num_ws}, got {edit}")
  disc, window = jnp.asarray(_disc_offsets(supervision_radius)), jnp.asarray(_square_offsets(tracking_radius))
  target = jnp.asarray(target, jnp.float32)
  optimizer = optax.adam(lr)

  def features(ws_):
    _, feats = gen.apply(params, ws_, True, method=Generator.synthesize)  # (1, R, R, C)
    return feats[0]

  handle0 = jnp.asarray(handle, jnp.float32)
  start_feature = sample_features(features(ws), handle0[None])[0]  # (C,): f, the handle's feature in the initial image
  frozen = ws[:, edit:]

  def motion_loss(edited, p):
    feats = features(jnp.concatenate([edited, frozen], 1))  # (R, R, C)
    d = (target - p) / jnp.maximum(jnp.linalg.norm(target - p), 1e-8)  # (2,)
    q = p + disc  # (K, 2)
    here = jax.lax.stop_gradient(sample_features(feats, q))  # (K, C)
    return jnp.sum(jnp.abs(sample_features(feats, q + d) - here))

  def one_step(carry, _):
    edited, opt_state, p = carry
    grads = jax.grad(motion_loss)(edited, p)
    updates, new_opt_state = optimizer.update(grads, opt_state, edited)
    moving = jnp.linalg.norm(target - p) > stop_distance
    edited = jnp.where(moving, optax.apply_updates(edited, updates), edited)
    opt_state = jax.tree.map(lambda new, old: jnp.where(moving, new, old), new_opt_state, opt_state)
    candidates = jnp.clip(jnp.round(p) + window, 0.0, size - 1.0)  # (K, 2)
    feats = features(jnp.concatenate([edited, frozen], 1))
    costs = jnp.sum(jnp.abs(sample_features(feats, candidates) - start_feature), -1)  # (K,)
    p = jnp.where(moving, candidates[jnp.argmin(costs)], p)
    return (edited, opt_state, p), p

  edited0 = ws[:, :edit]
  (edited, _, _), path = jax.lax.scan(one_step, (edited0, optimizer.init(edited0), handle0), None, length=steps)
  final = jnp.concatenate([edited, frozen], 1)
  image = gen.apply(params, final, method=Generator.synthesize)  # (1, R, R, channels)
  return DragResult(final, jnp.concatenate([handle0[None], path]), image)
