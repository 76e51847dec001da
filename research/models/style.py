"""Neural style transfer (Gatys et al. 2016) and DeepDream (Mordvintsev et al. 2015) on a fixed feature network.

    cfg = style.StyleConfig()                                   # random multi-scale filters, offline
    net, params = style.make_network(cfg, jax.random.key(0))    # or cfg.network="vgg19" + load_vgg19(path)
    features = style.make_features(net, params, style.feature_layers(cfg))
    targets = style.make_targets(features, cfg, content, style_image)       # (H, W, 3) images in [0, 1]
    image, trace = style.stylize(features, cfg, targets, init, weights, optimizer="lbfgs", steps=100)
    dream = style.deepdream(style.make_features(net, params, ("relu4_1",)), image, "relu4_1", key)

Nothing here is trained: the image is the variable. Two feature networks:

  random   one layer of random convolution filters of several sizes (3x3 to 15x15 by default),
           each followed by a ReLU: Ustyuzhaninov et al. ("Texture synthesis using shallow
           convolutional networks with random filters", 2016) show that the Gram matrices of such a
           single multi-scale random layer already carry a texture. It needs no weights, so it is
           the default and what runs offline. What works: the style's palette and its fine texture
           are moved onto the content's layout, which the content loss on the 3x3 filters'
           responses keeps (experiments/style.py's default, stylized.png: the temple of china.jpg
           turns the flower's teal and dark green, and the flower's orange takes part of the sky
           with a grain of red dots at the filters' scale; L-BFGS lowers the style loss from 0.20 to
           0.0002 in 100 steps). What does not: the Gram matrices of one layer only count how often
           each colour and local pattern occurs, not where, so the orange lands where the content
           loss costs least (the flat sky) as one patch rather than as petals, and nothing larger
           than the largest filter (15 px) is carried. Its DeepDream only raises contrast and
           saturates colours (dream.png): it has no learnt parts to hallucinate.
  vgg19    VGG-19's convolutional part (Simonyan & Zisserman 2015; `features` of torchvision's
           `vgg19`): five blocks of 2, 2, 4, 4 and 4 3x3 convolutions with ReLUs (64, 128, 256,
           512 and 512 channels), each block ending in a 2x2 max pool (Gatys et al. propose
           average pooling: `pool="avg"`). Its ImageNet weights are read from a local file in
           torchvision's layout (`load_vgg19`): the network of the papers' figures.

Images are NHWC float32 in [0, 1], normalised inside the network with ImageNet's mean and std
as torchvision's weights expect. The losses (Gatys et al., section 2):

  1. content   L_c = 1/2 mean_(i,j) (F_ij - P_ij)^2 over one layer's features F of the image
               and P of the content image (the paper's sum, divided by the number of elements,
               so the weight does not depend on the image size); dL_c/dF = (F - P) / N.
  2. style     G^l = F^l^T F^l / M_l, the Gram matrix of layer l's N_l channels averaged over
               its M_l = H_l W_l positions; E_l = 1/4 mean_(i,j) (G^l_ij - A^l_ij)^2 (eq. 4 with G
               and A divided by M_l and the sum over N_l^2 entries made a mean), L_s = mean_l E_l.
  3. tv        a total-variation regulariser (Mahendran & Vedaldi 2015, beta = 2): mean squared
               difference between vertical neighbours plus the same between horizontal ones.

  total = content_weight L_c + style_weight L_s + tv_weight tv.

The image is parametrised as sigmoid(z), so its pixels stay in (0, 1) for any optimizer, and z is
optimised with optax's Adam or L-BFGS (with its zoom line search) in one `lax.scan`.

DeepDream: gradient ascent on the image to raise one layer's activations (their mean, or half
their mean square), with a random roll of the image before each step (jitter, undone after),
the gradient divided by its mean absolute value (normalised steps), and octaves: the image is
dreamt from the smallest of a pyramid of rescaled copies to the full size, the detail added at
one scale carried up to the next.
"""

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.models import hf
from research.models import layers as layers_lib

NETWORKS = ("random", "vgg19")
OPTIMIZERS = ("adam", "lbfgs")
POOLS = ("max", "avg")
OBJECTIVES = ("mean", "l2")
# torchvision's ImageNet normalisation, applied inside both networks.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# VGG-19's convolutions per block and their widths.
VGG19_BLOCKS = (2, 2, 4, 4, 4)
VGG19_WIDTHS = (64, 128, 256, 512, 512)
# Gatys et al.'s layers: content on conv4_2's ReLU, style on the first ReLU of every block.
VGG19_CONTENT_LAYER = "relu4_2"
VGG19_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclasses.dataclass(frozen=True)
class StyleConfig:
  """The feature network and the layers the losses read.

  The layers default (None) to the network's own: VGG-19's are Gatys et al.'s; the random
  network's content layer is its smallest filters' response and its style layers are all sizes.
  """

  network: str = "random"  # one of NETWORKS
  filter_sizes: tuple[int, ...] = (3, 5, 7, 11, 15)  # random: the square filters' sizes, one conv each
  filters: int = 32  # random: filters of each size
  pool: str = "max"  # vgg19: max or avg pooling between blocks
  content_layer: str | None = None  # the layer of the content loss; None: the network's default
  style_layers: tuple[str, ...] | None = None  # the layers of the style loss; None: the network's default

  def __post_init__(self):
    if self.network not in NETWORKS:
      raise ValueError(f"unknown network {self.network!r}; choose one of: {', '.join(NETWORKS)}")
    if self.pool not in POOLS:
      raise ValueError(f"unknown pool {self.pool!r}; choose one of: {', '.join(POOLS)}")
    if self.filters <= 0 or not self.filter_sizes or any(k <= 0 for k in self.filter_sizes):
      raise ValueError(f"filters ({self.filters}) and filter_sizes {self.filter_sizes} must be positive")
    names = layer_names(self)
    for layer in (content_layer(self), *style_layers(self)):
      if layer not in names:
        raise ValueError(f"unknown layer {layer!r} of {self.network}; choose from: {', '.join(names)}")


def layer_names(cfg: StyleConfig) -> tuple[str, ...]:
  """The network's layers in the order it computes them."""
  if cfg.network == "random":
    return tuple(f"relu{k}" for k in cfg.filter_sizes)
  names = []
  for block, convs in enumerate(VGG19_BLOCKS, start=1):
    for i in range(1, convs + 1):
      names += [f"conv{block}_{i}", f"relu{block}_{i}"]
    names.append(f"pool{block}")
  return tuple(names)


def content_layer(cfg: StyleConfig) -> str:
  if cfg.content_layer is not None:
    return cfg.content_layer
  return VGG19_CONTENT_LAYER if cfg.network == "vgg19" else f"relu{min(cfg.filter_sizes)}"


def style_layers(cfg: StyleConfig) -> tuple[str, ...]:
  if cfg.style_layers is not None:
    return tuple(cfg.style_layers)
  return VGG19_STYLE_LAYERS if cfg.network == "vgg19" else layer_names(cfg)


def feature_layers(cfg: StyleConfig) -> tuple[str, ...]:
  """The content layer and the style layers, each once, in the network's order."""
  wanted = {content_layer(cfg), *style_layers(cfg)}
  return tuple(name for name in layer_names(cfg) if name in wanted)


def _normalise(images):
  return (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)  # (B, H, W, 3)


def _conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """A stride-1 NHWC convolution whose input gradient is a plain convolution with the flipped kernel.

  XLA:CPU runs the transposed convolution that JAX derives for the input gradient about 8x
  slower inside a loop body than outside one (a 15x15 kernel on a 128x128 image: 1.0 s against
  0.13 s per step, on 2 cores); written as a forward convolution with the kernel flipped and its
  channels swapped it runs as fast in the loop as outside. The kernel's gradient is JAX's own.

  Args:
    x: (B, H, W, C_in) inputs.
    kernel: (kh, kw, C_in, C_out).
    padding: ((top, bottom), (left, right)) zeros around the input.

  Returns:
    (B, H + top + bottom - kh + 1, W + left + right - kw + 1, C_out).
  """
  return _conv(x, kernel, padding)


def _conv2d_fwd(x, kernel, padding):
  return _conv(x, kernel, padding), (x, kernel)


def _conv2d_bwd(padding, residuals, grad):
  x, kernel = residuals
  flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))  # (kh, kw, C_out, C_in)
  # Output position o reads inputs o - lo .. o - lo + k - 1, so input i receives from outputs i + lo - k + 1 .. i + lo.
  transposed = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:2], padding))
  _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, padding), kernel)
  return _conv(grad, flipped, transposed), kernel_vjp(grad)[0]


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
  """A stride-1 k x k convolution with "SAME" zero padding and a bias; the parameters of `nn.Conv(features, (k, k))`."""

  features: int
  kernel_size: int

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    padding = (((k - 1) // 2, k // 2),) * 2
    # The flipped-kernel gradient is a workaround for XLA:CPU alone; other platforms keep JAX's own.
    conv = conv2d if layers_lib.on_cpu() else _conv
    return conv(x, kernel, padding) + bias  # (B, H, W, features)


class RandomFilters(nn.Module):
  """One layer of random filters of several sizes, each size's responses through a ReLU (layer "relu<k>")."""

  filter_sizes: tuple[int, ...]
  filters: int

  @nn.compact
  def __call__(self, images, layers: Sequence[str]) -> dict[str, jax.Array]:
    """(B, H, W, 3) images in [0, 1] -> {layer: (B, H, W, filters)} for the requested layers."""
    x = _normalise(images)
    out = {}
    for k in self.filter_sizes:
      if f"relu{k}" in layers:
        # Zero padding: the border reads as the mean colour after the normalisation.
        out[f"relu{k}"] = nn.relu(Conv(self.filters, k, name=f"conv{k}")(x))  # (B, H, W, filters)
    return out


class VGG19(nn.Module):
  """VGG-19's convolutional part, NHWC, computed up to the deepest requested layer."""

  pool: str = "max"

  @nn.compact
  def __call__(self, images, layers: Sequence[str]) -> dict[str, jax.Array]:
    """(B, H, W, 3) images in [0, 1] -> {layer: (B, H / 2^b, W / 2^b, width)} for the requested layers."""
    order = layer_names(StyleConfig(network="vgg19"))
    last = max(order.index(name) for name in layers)
    x = _normalise(images)
    out = {}
    for name in order[:last + 1]:
      if name.startswith("conv"):
        block = int(name[4])
        x = Conv(VGG19_WIDTHS[block - 1], 3, name=name)(x)  # (B, h, w, width)
      elif name.startswith("relu"):
        x = nn.relu(x)
      else:
        pool = nn.max_pool if self.pool == "max" else nn.avg_pool
        x = pool(x, (2, 2), strides=(2, 2))  # (B, h / 2, w / 2, width); odd sizes drop the last row, as torch does
      if name in layers:
        out[name] = x
    return out


def make_network(cfg: StyleConfig, key: jax.Array | None = None) -> tuple[nn.Module, dict]:
  """The feature network and its parameters: the random filters drawn from `key`, or VGG-19's randomly initialised
  (load ImageNet's with `load_vgg19`)."""
  net = (RandomFilters(tuple(cfg.filter_sizes), cfg.filters) if cfg.network == "random" else VGG19(cfg.pool))
  key = jax.random.key(0) if key is None else key
  variables = jax.jit(lambda k: net.init(k, jnp.zeros((1, 32, 32, 3)), layer_names(cfg)))(key)
  return net, variables["params"]


Features = Callable[[jax.Array], dict[str, jax.Array]]


def make_features(net: nn.Module, params, layers: Sequence[str]) -> Features:
  """`features(images) -> {layer: activations}` for (B, H, W, 3) images, the network's parameters closed over."""
  layers = tuple(layers)
  return lambda images: net.apply({"params": params}, images, layers)


# The losses.


class Weights(NamedTuple):
  """The loss weights: Python floats or traced scalars."""

  content: float | jax.Array
  style: float | jax.Array
  tv: float | jax.Array


class Losses(NamedTuple):
  content: jax.Array
  style: jax.Array
  tv: jax.Array
  total: jax.Array


class Targets(NamedTuple):
  """What the content and the style images fix: the content layer's features and the style layers' Gram matrices."""

  content: jax.Array  # (1, h, w, c) features of the content image
  grams: dict[str, jax.Array]  # style layer -> (1, c, c) normalised Gram matrix of the style image


def gram(features: jax.Array) -> jax.Array:
  """(B, H, W, C) features -> (B, C, C) Gram matrices F^T F / (H W)."""
  b, h, w, c = features.shape
  flat = features.reshape(b, h * w, c)  # (B, M, C)
  return jnp.einsum("bmc,bmd->bcd", flat, flat) / (h * w)  # (B, C, C)


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
  """1/2 mean (F - P)^2 over every element: Gatys et al.'s eq. 1 as a mean."""
  return 0.5 * jnp.mean(jnp.square(features - target))


def style_loss(features: Mapping[str, jax.Array], grams: Mapping[str, jax.Array]) -> jax.Array:
  """mean over layers of 1/4 mean_(i,j) (G_ij - A_ij)^2 (Gatys et al.'s eq. 4 and 5, equal layer weights)."""
  return jnp.mean(jnp.stack([0.25 * jnp.mean(jnp.square(gram(features[name]) - grams[name])) for name in grams]))


def total_variation(images: jax.Array) -> jax.Array:
  """Mean squared difference of vertical neighbours plus that of horizontal neighbours, of (B, H, W, C) images."""
  dy = images[:, 1:, :, :] - images[:, :-1, :, :]  # (B, H - 1, W, C)
  dx = images[:, :, 1:, :] - images[:, :, :-1, :]  # (B, H, W - 1, C)
  return jnp.mean(jnp.square(dy)) + jnp.mean(jnp.square(dx))


def make_targets(features: Features, cfg: StyleConfig, content: jax.Array, style_image: jax.Array) -> Targets:
  """The targets from (H, W, 3) content and (H', W', 3) style images in [0, 1] (the two sizes may differ)."""
  content_features = features(content[None])[content_layer(cfg)]
  style_features = features(style_image[None])
  return Targets(content_features, {name: gram(style_features[name]) for name in style_layers(cfg)})


def losses(features: Features, cfg: StyleConfig, targets: Targets, image: jax.Array, weights: Weights) -> Losses:
  """The three losses of an (H, W, 3) image and their weighted sum."""
  feats = features(image[None])
  content = content_loss(feats[content_layer(cfg)], targets.content)
  style = style_loss(feats, targets.grams)
  tv = total_variation(image[None])
  return Losses(content, style, tv, weights.content * content + weights.style * style + weights.tv * tv)


# The optimisation of the image.

# Pixels of the initial image are clipped to this margin inside (0, 1) before the logit.
PIXEL_MARGIN = 1e-3


def to_logits(image: jax.Array) -> jax.Array:
  """The unconstrained variable z with sigmoid(z) = image (pixels clipped into (0, 1) first)."""
  image = jnp.clip(image, PIXEL_MARGIN, 1.0 - PIXEL_MARGIN)
  return jnp.log(image) - jnp.log1p(-image)


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformationExtraArgs:
  """Adam at `learning_rate` on the logits, or L-BFGS with its zoom line search (which sets its own step)."""
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
  return optax.adam(learning_rate) if name == "adam" else optax.lbfgs()


class StylizeCarry(NamedTuple):
  logits: jax.Array  # (H, W, 3): the image is sigmoid(logits)
  opt_state: optax.OptState


def stylize(features: Features, cfg: StyleConfig, targets: Targets, init: jax.Array, weights: Weights,
            optimizer: str = "lbfgs", steps: int = 100, learning_rate: float = 0.05) -> tuple[jax.Array, jax.Array]:
  """Optimises an image for the total loss, `steps` updates in one `lax.scan`; jit it with the first three closed over.

  Args:
    features: the feature network (`make_features`).
    cfg: the layers the losses read.
    targets: from `make_targets`.
    init: (H, W, 3) the starting image in [0, 1] (the content image, or noise).
    weights: the loss weights.
    optimizer: "adam" or "lbfgs".
    steps: optimizer updates (L-BFGS: iterations, each with its line search's evaluations).
    learning_rate: Adam's step size on the logits (L-BFGS ignores it).

  Returns:
    The final (H, W, 3) image in (0, 1) and the (steps,) total loss before each update.
  """
  opt = make_optimizer(optimizer, learning_rate)
  loss_fn = lambda z: losses(features, cfg, targets, jax.nn.sigmoid(z), weights).total
  value_and_grad = optax.value_and_grad_from_state(loss_fn) if optimizer == "lbfgs" else jax.value_and_grad(loss_fn)

  def step(carry: StylizeCarry, _) -> tuple[StylizeCarry, jax.Array]:
    if optimizer == "lbfgs":
      value, grad = value_and_grad(carry.logits, state=carry.opt_state)  # reuses the line search's last evaluation
      updates, opt_state = opt.update(grad, carry.opt_state, carry.logits, value=value, grad=grad, value_fn=loss_fn)
    else:
      value, grad = value_and_grad(carry.logits)
      updates, opt_state = opt.update(grad, carry.opt_state, carry.logits)
    return StylizeCarry(optax.apply_updates(carry.logits, updates), opt_state), value

  logits = to_logits(init)
  final, trace = jax.lax.scan(step, StylizeCarry(logits, opt.init(logits)), length=steps)
  return jax.nn.sigmoid(final.logits), trace


# DeepDream.


def dream_objective(activations: jax.Array, objective: str = "mean") -> jax.Array:
  """What DeepDream raises: the mean of a layer's activations, or half their mean square ("l2")."""
  return jnp.mean(activations) if objective == "mean" else 0.5 * jnp.mean(jnp.square(activations))


def dream_steps(features: Features, layer: str, image: jax.Array, key: jax.Array, steps: int, step_size: float,
                jitter: int, objective: str = "mean") -> tuple[jax.Array, jax.Array]:
  """`steps` normalised gradient-ascent steps on one (H, W, 3) image in a `lax.scan`, each on a randomly rolled copy.

  Returns:
    The (H, W, 3) image, clipped to [0, 1] after every step, and the (steps,) objective before each step.
  """
  value_and_grad = jax.value_and_grad(lambda x: dream_objective(features(x[None])[layer], objective))

  def step(image, key):
    shift = jax.random.randint(key, (2,), -jitter, jitter + 1)  # (dy, dx)
    rolled = jnp.roll(image, (shift[0], shift[1]), axis=(0, 1))
    value, grad = value_and_grad(rolled)
    grad = jnp.roll(grad, (-shift[0], -shift[1]), axis=(0, 1))  # back to the image's frame
    grad = grad / (jnp.mean(jnp.abs(grad)) + 1e-8)  # every step moves pixels by about step_size
    return jnp.clip(image + step_size * grad, 0.0, 1.0), value

  return jax.lax.scan(step, image, jax.random.split(key, steps))


def octave_shapes(height: int, width: int, octaves: int, scale: float) -> list[tuple[int, int]]:
  """The pyramid's (height, width), smallest first, the last the image's own; sides shrink by `scale` per octave."""
  return [(max(1, round(height / scale**i)), max(1, round(width / scale**i))) for i in reversed(range(octaves))]


def deepdream(features: Features, image: jax.Array, layer: str, key: jax.Array, octaves: int = 3,
              octave_scale: float = 1.4, steps: int = 20, step_size: float = 0.01, jitter: int = 8,
              objective: str = "mean") -> tuple[jax.Array, list[jax.Array]]:
  """DeepDream of an (H, W, 3) image in [0, 1] on `layer`, from the smallest octave to the full size.

  At each octave the image rescaled to that size plus the detail dreamt so far (rescaled too) is
  dreamt for `steps` steps; the detail is what the steps added. One compiled scan per octave size.

  Returns:
    The dreamt (H, W, 3) image in [0, 1] and, per octave, the (steps,) objective before each step.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
  run = jax.jit(lambda x, k: dream_steps(features, layer, x, k, steps, step_size, jitter, objective))
  height, width, channels = image.shape
  detail = None
  traces = []
  for i, (h, w) in enumerate(octave_shapes(height, width, octaves, octave_scale)):
    base = jax.image.resize(image, (h, w, channels), "linear")  # (h, w, 3)
    detail = jnp.zeros_like(base) if detail is None else jax.image.resize(detail, (h, w, channels), "linear")
    dreamt, trace = run(jnp.clip(base + detail, 0.0, 1.0), jax.random.fold_in(key, i))
    detail = dreamt - base
    traces.append(trace)
  return dreamt, traces


# VGG-19's weights in torchvision's layout: `features.<index>.weight` (out, in, 3, 3) and `.bias`, where the
# index counts every module of torchvision's `features` Sequential (each conv, ReLU and pool).


def _hwio(kernel):
  return np.transpose(kernel, (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)


def _oihw(kernel):
  return np.transpose(kernel, (3, 2, 0, 1))


def vgg19_table() -> list[hf.Tensor]:
  """The rows mapping torchvision's `features.N.weight/bias` to our `convB_I` kernels and biases."""
  rows = []
  for index, name in enumerate(layer_names(StyleConfig(network="vgg19"))):
    if name.startswith("conv"):
      # torchvision's index: our layer names hold every conv and ReLU once, and a pool per block, as its Sequential.
      rows += [hf.Tensor(f"features.{index}.weight", (name, "kernel"), _hwio, _oihw),
               hf.Tensor(f"features.{index}.bias", (name, "bias"))]
  return rows


def load_vgg19(path: str) -> dict:
  """VGG-19's parameters from a local torchvision state dict (`torch.save`, e.g. `vgg19-dcbb9e9d.pth`) or a
  safetensors file with the same names; the classifier's tensors, if any, are ignored.

  Raises:
    ValueError: one line: a missing or unreadable file, or the first tensor that is missing or has another shape.
  """
  if not os.path.isfile(path):
    raise ValueError(f"VGG-19 weights file {path} does not exist")
  try:
    if path.endswith(".safetensors"):
      tensors = hf.load_weights(path)
    else:
      import torch  # pylint: disable=import-outside-toplevel
      state = torch.load(path, map_location="cpu", weights_only=True)
      if not isinstance(state, Mapping):
        raise ValueError(f"it holds a {type(state).__name__}, not a state dict")
      tensors = {name: value.float().numpy() for name, value in state.items() if hasattr(value, "numpy")}
  except Exception as e:  # pylint: disable=broad-except  # torch's and safetensors' errors have many types
    raise ValueError(f"cannot read VGG-19 weights from {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                     ) from None
  net = VGG19()
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                           layer_names(StyleConfig(network="vgg19"))))["params"]
  return hf.read(vgg19_table(), tensors, shapes, path)


def save_vgg19(params, path: str) -> str:
  """Writes VGG-19's parameters as torchvision's `features` state dict (`torch.save`); returns the path."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.save({name: torch.from_numpy(np.array(array)) for name, array in hf.write(vgg19_table(), params).items()}, path)
  return path
