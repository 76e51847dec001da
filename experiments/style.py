"""Neural style transfer (Gatys et al.) and DeepDream on scikit-learn's two bundled photographs.

The content image (china.jpg, a temple) is repainted with the style image's (flower.jpg)
textures and colours by optimising its pixels for research/models/style.py's content, style and
total-variation losses, Adam or L-BFGS in one compiled scan. Both photographs are cropped to
their central square and scaled to `image_size`. Writes `stylized.png` (content, style and result
side by side, with the losses), with `mode=dream` or `both` `dream.png` (the content image and
its DeepDream), and results.json with the initial and final losses (content, style, tv, total)
and the loss per step (and DeepDream's objective on the content image and on its dream).

The default feature network is one layer of random filters of five sizes (no weights, runs
offline: under a minute on 2 CPU cores); `network=vgg19` reads VGG-19's ImageNet weights from a
local torchvision file (`vgg19-dcbb9e9d.pth`, torchvision's `vgg19(weights="IMAGENET1K_V1")`
state dict), the network of the paper's figures. With the random filters the default run takes
the flower's palette and a fine grain of its texture onto the temple; the style loss falls from
0.20 to 0.0002 with L-BFGS in 100 steps (Adam reaches 0.0005 in 300 steps, at twice the time).
research/models/style.py says what the random network does and does not carry. The loss weights
are set for the random filters; VGG-19's activations are on another scale, so its balance of
content and style needs its own `style_weight`.

Run:
  python -m experiments.style --workdir=/tmp/style
  python -m experiments.style --workdir=/tmp/style_adam --config.optimizer=adam --config.steps=300
  python -m experiments.style --workdir=/tmp/dream --config.mode=dream
  python -m experiments.style --workdir=/tmp/style_vgg --config.network=vgg19 \
      --config.vgg19_path=/path/to/vgg19-dcbb9e9d.pth
  python -m experiments.style --workdir=/tmp/smoke --config=experiments/style.py:smoke
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from research.models import style  # pylint: disable=wrong-import-position
from research.train import ConfigError, check_choice, check_positive, cli, write_results  # pylint: disable=wrong-import-position

IMAGES = ("china", "flower")  # scikit-learn's sample images, by file name
MODES = ("stylize", "dream", "both")
INITS = ("content", "noise")
# The smallest image side (and DeepDream octave) per network: VGG-19 halves it five times.
MIN_SIDE = {"random": 8, "vgg19": 32}


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Tiny images, few steps and both modes, for tests."""
  config.mode = "both"
  config.image_size = 32
  config.filter_sizes = (3, 5)
  config.filters = 8
  config.steps = 5
  config.dream_octaves = 1
  config.dream_steps = 3
  config.dream_step_size = 0.02


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; preset "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds the random filters, a noise start and DeepDream's jitter
  config.mode = "stylize"  # stylize, dream (DeepDream of the content image) or both
  config.network = "random"  # the feature network: random (multi-scale random filters) or vgg19
  config.vgg19_path = ""  # network=vgg19: torchvision's VGG-19 state dict (.pth) or a safetensors file of it
  config.pool = "max"  # vgg19: max or avg pooling (Gatys et al. use avg)
  config.filter_sizes = (3, 5, 7, 11, 15)  # random: the filters' sizes
  config.filters = 32  # random: filters of each size
  config.content_layer = ""  # the content loss's layer; "": the network's default
  config.style_layers = ""  # the style loss's layers, comma-separated; "": the network's default
  config.content = "china"  # the content image: china or flower
  config.style = "flower"  # the style image: china or flower
  config.image_size = 128  # both images' side after the central square crop, pixels
  config.init = "content"  # the starting image: the content image or uniform noise
  config.optimizer = "lbfgs"  # adam or lbfgs
  config.steps = 100  # optimizer updates
  config.learning_rate = 0.05  # adam's step size on the pixels' logits (lbfgs sets its own by line search)
  config.content_weight = 1.0  # weight of the content loss
  config.style_weight = 100.0  # weight of the style loss
  config.tv_weight = 1.0  # weight of the total-variation regulariser
  config.dream_layer = ""  # DeepDream's layer; "": the network's deepest style layer
  config.dream_objective = "mean"  # mean or l2 of the layer's activations
  config.dream_octaves = 3  # image scales, each octave_scale times the previous
  config.dream_octave_scale = 1.4  # ratio between successive octaves' sides
  config.dream_steps = 20  # gradient-ascent steps per octave
  config.dream_step_size = 0.005  # pixel change per step (gradients are normalised by their mean absolute value)
  config.dream_jitter = 8  # largest random roll of the image before each step, pixels
  return cli.apply_presets(config, preset, PRESETS)


def style_config(config) -> style.StyleConfig:
  """The model's config from the experiment's; ConfigError on an unknown network, pool or layer."""
  layers = tuple(name.strip() for name in config.style_layers.split(",") if name.strip())
  try:
    return style.StyleConfig(network=config.network, filter_sizes=tuple(config.filter_sizes), filters=config.filters,
                             pool=config.pool, content_layer=config.content_layer or None, style_layers=layers or None)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def dream_layer(config, cfg: style.StyleConfig) -> str:
  return config.dream_layer or style.style_layers(cfg)[-1]


def check_config(config) -> style.StyleConfig:
  """Raises ConfigError on the first bad field; returns the model's config."""
  check_choice("mode", config.mode, MODES)
  check_choice("optimizer", config.optimizer, style.OPTIMIZERS)
  check_choice("init", config.init, INITS)
  check_choice("content", config.content, IMAGES)
  check_choice("style", config.style, IMAGES)
  check_choice("dream_objective", config.dream_objective, style.OBJECTIVES)
  cfg = style_config(config)
  if config.network == "vgg19" and not config.vgg19_path:
    raise ConfigError("network vgg19 needs --config.vgg19_path: torchvision's VGG-19 weights file")
  if dream_layer(config, cfg) not in style.layer_names(cfg):
    raise ConfigError(f"unknown dream_layer {config.dream_layer!r}; choose from: {', '.join(style.layer_names(cfg))}")
  for name in ("steps", "learning_rate", "dream_octaves", "dream_steps", "dream_step_size"):
    check_positive(name, config[name])
  for name in ("content_weight", "style_weight", "tv_weight", "dream_jitter"):
    check_positive(name, config[name], allow_zero=True)
  min_side = MIN_SIDE[config.network]
  if config.image_size < min_side:
    raise ConfigError(f"image_size must be >= {min_side} for {config.network}, got {config.image_size}")
  if config.dream_octave_scale < 1:
    raise ConfigError(f"dream_octave_scale must be >= 1, got {config.dream_octave_scale}")
  smallest = min(style.octave_shapes(config.image_size, config.image_size, config.dream_octaves,
                                     config.dream_octave_scale)[0])
  if config.mode != "stylize" and smallest < min_side:
    raise ConfigError(f"the smallest of {config.dream_octaves} octaves would be {smallest} pixels, under "
                      f"{min_side}: use fewer dream_octaves or a smaller dream_octave_scale")
  return cfg


def load_image(name: str, size: int) -> np.ndarray:
  """scikit-learn's bundled photograph `name`, its central square scaled to (size, size, 3) float32 in [0, 1]."""
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  bundle = load_sample_images()
  image = next(img for path, img in zip(bundle.filenames, bundle.images) if os.path.basename(path) == f"{name}.jpg")
  h, w, _ = image.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  square = jnp.asarray(image[top:top + side, left:left + side], jnp.float32) / 255.0  # (side, side, 3)
  return np.clip(np.asarray(jax.image.resize(square, (size, size, 3), "linear")), 0.0, 1.0)


def _format(losses: dict) -> str:
  return ", ".join(f"{name} {value:.4g}" for name, value in losses.items())


def _plot_stylized(path: str, content, style_image, result, initial: dict, final: dict, config) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
  titles = (f"content ({config.content})", f"style ({config.style})",
            f"{config.network} features, {config.optimizer}, {config.steps} steps")
  for ax, image, title in zip(axes, (content, style_image, result), titles):
    ax.imshow(np.clip(np.asarray(image), 0, 1), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")
  fig.suptitle(f"initial: {_format(initial)}\nfinal: {_format(final)}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_dream(path: str, image, dreamt, layer: str, objectives: tuple[float, float], config) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(8, 4.5))
  for ax, picture, title in zip(axes, (image, dreamt), (f"{config.content}", f"DeepDream on {config.network} {layer}")):
    ax.imshow(np.clip(np.asarray(picture), 0, 1), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")
  fig.suptitle(f"{config.dream_objective} activation of {layer}: {objectives[0]:.4g} -> {objectives[1]:.4g} "
               f"({config.dream_octaves} octaves of {config.dream_steps} steps)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _losses(values: style.Losses) -> dict:
  return {name: float(value) for name, value in values._asdict().items()}


def run(config, workdir: str) -> dict:
  """Checks the config, loads the images (and VGG-19's weights), stylizes and/or dreams, writes PNGs and results.json.

  Raises:
    ConfigError: on a bad config or weights file, before anything is compiled or written.
  """
  start = time.perf_counter()
  cfg = check_config(config)
  key = jax.random.key(config.seed)
  k_filters, k_noise, k_dream = jax.random.split(key, 3)
  if cfg.network == "vgg19":
    try:
      net, params = style.VGG19(cfg.pool), style.load_vgg19(config.vgg19_path)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  else:
    net, params = style.make_network(cfg, k_filters)
  content = load_image(config.content, config.image_size)
  style_image = load_image(config.style, config.image_size)
  metrics = {}
  os.makedirs(workdir, exist_ok=True)

  if config.mode in ("stylize", "both"):
    features = style.make_features(net, params, style.feature_layers(cfg))
    weights = style.Weights(config.content_weight, config.style_weight, config.tv_weight)
    targets = style.make_targets(features, cfg, jnp.asarray(content), jnp.asarray(style_image))
    init = (jnp.asarray(content) if config.init == "content"
            else jax.random.uniform(k_noise, content.shape, minval=0.25, maxval=0.75))
    measure = jax.jit(lambda image: style.losses(features, cfg, targets, image, weights))
    optimize = jax.jit(lambda init: style.stylize(features, cfg, targets, init, weights, config.optimizer,
                                                  config.steps, config.learning_rate))
    fit_start = time.perf_counter()
    result, trace = jax.block_until_ready(optimize(init))
    fit_time = time.perf_counter() - fit_start
    initial, final = _losses(measure(init)), _losses(measure(result))
    print(f"{config.network} features, {config.optimizer}, {config.steps} steps: initial {_format(initial)}; "
          f"final {_format(final)}; compile + optimize {fit_time:.1f}s")
    _plot_stylized(os.path.join(workdir, "stylized.png"), content, style_image, result, initial, final, config)
    metrics.update({"initial": initial, "final": final, "loss_per_step": np.asarray(trace),
                    "stylize_time_s": round(fit_time, 3)})

  if config.mode in ("dream", "both"):
    layer = dream_layer(config, cfg)
    dream_start = time.perf_counter()
    dream_features = style.make_features(net, params, (layer,))
    dreamt, traces = style.deepdream(
        dream_features, jnp.asarray(content), layer, k_dream,
        octaves=config.dream_octaves, octave_scale=config.dream_octave_scale, steps=config.dream_steps,
        step_size=config.dream_step_size, jitter=config.dream_jitter, objective=config.dream_objective)
    dreamt = jax.block_until_ready(dreamt)
    dream_time = time.perf_counter() - dream_start
    objective = jax.jit(lambda image: style.dream_objective(dream_features(image[None])[layer], config.dream_objective))
    before, after = float(objective(jnp.asarray(content))), float(objective(dreamt))
    print(f"DeepDream on {layer}: {config.dream_objective} activation {before:.4g} -> {after:.4g} over "
          f"{config.dream_octaves} octaves; {dream_time:.1f}s")
    _plot_dream(os.path.join(workdir, "dream.png"), content, dreamt, layer, (before, after), config)
    metrics["dream"] = {"layer": layer, "initial_objective": before, "final_objective": after,
                        "objective_per_octave": [np.asarray(t) for t in traces], "time_s": round(dream_time, 3)}
  return write_results(workdir, metrics, config=config, wall_time_s=time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run)
