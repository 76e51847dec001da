"""Style transfer and DeepDream: the losses in closed form, the optimisation, VGG-19 against PyTorch, the experiment."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from experiments import style as experiment
from research.models import style
from research.train import ConfigError

SMALL = style.StyleConfig(filter_sizes=(3, 5), filters=6)


def _small_features(cfg=SMALL, layers=None):
  net, params = style.make_network(cfg, jax.random.key(0))
  return style.make_features(net, params, layers or style.feature_layers(cfg))


def _images(size=16):
  """A smooth content image (colour ramps) and a noise style image of another height."""
  ramp = jnp.linspace(0.1, 0.9, size)
  content = jnp.stack([jnp.outer(ramp, jnp.ones(size)), jnp.outer(jnp.ones(size), ramp),
                       jnp.outer(ramp, ramp)], axis=-1)  # (size, size, 3)
  return content, jax.random.uniform(jax.random.key(1), (size + 4, size, 3))


def test_gram_of_known_features():
  features = jnp.arange(12, dtype=jnp.float32).reshape(1, 2, 3, 2)  # positions m = 0..5, channels (2m, 2m + 1)
  m = np.arange(6.0)
  expected = np.array([[np.sum(4 * m * m), np.sum(2 * m * (2 * m + 1))],
                       [np.sum(2 * m * (2 * m + 1)), np.sum((2 * m + 1) ** 2)]]) / 6
  np.testing.assert_allclose(style.gram(features)[0], expected, rtol=1e-6)
  assert style.gram(jnp.ones((3, 4, 5, 7))).shape == (3, 7, 7)


def test_style_loss_is_zero_for_the_style_image_and_positive_otherwise():
  features = _small_features()
  content, style_image = _images()
  targets = style.make_targets(features, SMALL, content, style_image)
  same = style.style_loss(features(style_image[None]), targets.grams)
  other = style.style_loss(features(content[None]), targets.grams)
  assert float(same) == pytest.approx(0.0, abs=1e-10) and float(other) > 1e-4
  # By hand: a quarter of the mean squared difference of the normalised Gram matrices, averaged over the layers.
  feats = features(content[None])
  by_hand = np.mean([0.25 * np.mean((np.asarray(style.gram(feats[n])) - np.asarray(targets.grams[n])) ** 2)
                     for n in style.style_layers(SMALL)])
  assert float(other) == pytest.approx(by_hand, rel=1e-5)


def test_total_variation_of_a_constant_and_a_checkerboard():
  assert float(style.total_variation(jnp.full((2, 5, 7, 3), 0.3))) == 0.0
  board = (np.add.outer(np.arange(4), np.arange(6)) % 2).astype(np.float32)  # (4, 6) of 0 and 1
  images = jnp.asarray(np.repeat(board[None, :, :, None], 3, axis=-1))  # (1, 4, 6, 3)
  assert float(style.total_variation(images)) == pytest.approx(2.0)  # every neighbour differs by 1, both ways
  assert float(style.total_variation(0.5 * images)) == pytest.approx(0.5)


def test_content_loss_and_its_gradient():
  k_f, k_p = jax.random.split(jax.random.key(2))
  features, target = jax.random.normal(k_f, (1, 3, 4, 5)), jax.random.normal(k_p, (1, 3, 4, 5))
  value, grad = jax.value_and_grad(style.content_loss)(features, target)
  assert float(value) == pytest.approx(0.5 * float(np.mean((np.asarray(features) - np.asarray(target)) ** 2)), rel=1e-6)
  np.testing.assert_allclose(grad, (features - target) / features.size, rtol=1e-5, atol=1e-8)


def test_the_flipped_kernel_convolution_has_jax_gradients():
  k_x, k_w = jax.random.split(jax.random.key(3))
  x = jax.random.normal(k_x, (2, 9, 11, 3))
  for k in (2, 3, 4):  # even kernels pad unevenly
    kernel = jax.random.normal(k_w, (k, k, 3, 5))
    padding = (((k - 1) // 2, k // 2),) * 2
    loss = lambda conv, x, w: jnp.sum(jnp.sin(conv(x, w, padding)))
    ours = jax.grad(lambda x, w: loss(style.conv2d, x, w), argnums=(0, 1))(x, kernel)
    theirs = jax.grad(lambda x, w: loss(style._conv, x, w), argnums=(0, 1))(x, kernel)  # pylint: disable=protected-access
    for a, b in zip(ours, theirs):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("optimizer", style.OPTIMIZERS)
def test_optimisation_lowers_the_total_loss_and_keeps_pixels_in_range(optimizer):
  features = _small_features()
  content, style_image = _images()
  weights = style.Weights(1.0, 10.0, 0.1)
  targets = style.make_targets(features, SMALL, content, style_image)
  image, trace = jax.jit(lambda init: style.stylize(features, SMALL, targets, init, weights, optimizer, 8, 0.1))(content)
  before = style.losses(features, SMALL, targets, content, weights)
  after = style.losses(features, SMALL, targets, image, weights)
  assert trace.shape == (8,) and float(trace[0]) == pytest.approx(float(before.total), rel=1e-3)
  assert float(after.total) < 0.7 * float(before.total)
  assert float(after.style) < float(before.style) and float(after.content) > 0.0  # traded content for style
  assert image.shape == content.shape and float(image.min()) > 0.0 and float(image.max()) < 1.0


def test_deepdream_raises_the_layer_activation():
  layer = "relu5"
  features = _small_features(layers=(layer,))
  image, _ = _images(24)
  for objective, octaves in zip(style.OBJECTIVES, (2, 1)):
    dreamt, traces = style.deepdream(features, image, layer, jax.random.key(4), octaves=octaves, octave_scale=1.5,
                                     steps=4, step_size=0.02, jitter=2, objective=objective)
    assert dreamt.shape == image.shape and float(dreamt.min()) >= 0.0 and float(dreamt.max()) <= 1.0
    assert [t.shape for t in traces] == [(4,)] * octaves
    value = lambda x: float(style.dream_objective(features(x[None])[layer], objective))
    assert value(dreamt) > value(image) * 1.05, objective
  assert style.octave_shapes(24, 30, 3, 2.0) == [(6, 8), (12, 15), (24, 30)]


def test_config_errors_are_one_line():
  with pytest.raises(ValueError, match="unknown network 'resnet'; choose one of: random, vgg19"):
    style.StyleConfig(network="resnet")
  with pytest.raises(ValueError, match="unknown layer 'relu9' of random"):
    style.StyleConfig(style_layers=("relu9",))
  with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
    style.make_optimizer("sgd", 0.1)


# VGG-19 against PyTorch: the same layout in torch's modules, randomly initialised (no download).


def _torch_vgg19_features():
  torch = pytest.importorskip("torch")
  layers = []
  in_channels = 3
  for convs, width in zip(style.VGG19_BLOCKS, style.VGG19_WIDTHS):
    for _ in range(convs):
      layers += [torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.ReLU()]
      in_channels = width
    layers.append(torch.nn.MaxPool2d(2, 2))
  model = torch.nn.Module()
  model.features = torch.nn.Sequential(*layers)  # named as torchvision's vgg19: features.<index>
  return model.eval()


def _torch_outputs(features, images: np.ndarray, names):
  """{layer: NHWC output} of a torch `features` Sequential, its modules named as our layers in order."""
  torch = pytest.importorskip("torch")
  order = style.layer_names(style.StyleConfig(network="vgg19"))
  x = torch.from_numpy(np.transpose(images, (0, 3, 1, 2)))
  mean = torch.tensor(style.IMAGENET_MEAN).reshape(1, 3, 1, 1)
  std = torch.tensor(style.IMAGENET_STD).reshape(1, 3, 1, 1)
  x = (x - mean) / std
  out = {}
  with torch.no_grad():
    for name, module in zip(order, features):
      x = module(x)
      if name in names:
        out[name] = np.transpose(x.numpy(), (0, 2, 3, 1))
  return out


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  model = _torch_vgg19_features()
  path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
  torch.save(model.state_dict(), path)
  return model, str(path)


LAYERS = ("relu1_1", "pool2", "relu3_3", "relu4_2", "relu5_1", "pool5")


def _ours(params, images):
  apply = jax.jit(lambda params, x: style.VGG19().apply({"params": params}, x, LAYERS))
  return {name: np.asarray(value) for name, value in apply(params, images).items()}


def _assert_close(ours, theirs):
  for name in LAYERS:
    scale = np.abs(theirs[name]).max()
    np.testing.assert_allclose(ours[name] / scale, theirs[name] / scale, atol=2e-5, err_msg=name)


def test_vgg19_weights_both_ways_give_torchs_features(vgg_file, tmp_path):
  torch = pytest.importorskip("torch")
  model, path = vgg_file
  # 37 x 45: the odd sides are floored by every pool, as torch's MaxPool2d floors them.
  images = np.random.default_rng(0).uniform(size=(1, 37, 45, 3)).astype(np.float32)
  _assert_close(_ours(style.load_vgg19(path), images), _torch_outputs(model.features, images, LAYERS))
  # Ours -> theirs: random parameters of our own, saved and loaded into the torch module.
  rng = np.random.default_rng(5)
  shapes = jax.eval_shape(lambda: style.VGG19().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), LAYERS))["params"]
  params = jax.tree.map(lambda s: (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32),
                        shapes)
  saved = style.save_vgg19(params, str(tmp_path / "ours.pth"))
  other = _torch_vgg19_features()
  other.load_state_dict(torch.load(saved, weights_only=True))
  _assert_close(_ours(params, images), _torch_outputs(other.features, images, LAYERS))


def test_vgg19_against_torchvision(tmp_path):
  torchvision = pytest.importorskip("torchvision")
  torch = pytest.importorskip("torch")
  torch.manual_seed(1)
  model = torchvision.models.vgg19(weights=None).eval()
  path = tmp_path / "vgg19.pth"
  torch.save(model.state_dict(), path)  # the whole state dict: the classifier's tensors are ignored
  images = np.random.default_rng(1).uniform(size=(1, 40, 33, 3)).astype(np.float32)
  _assert_close(_ours(style.load_vgg19(str(path)), images), _torch_outputs(model.features, images, LAYERS))


def test_vgg19_file_errors_name_the_file_or_the_tensor(vgg_file, tmp_path):
  torch = pytest.importorskip("torch")
  _, path = vgg_file
  with pytest.raises(ValueError, match="VGG-19 weights file .*nope.pth does not exist"):
    style.load_vgg19(str(tmp_path / "nope.pth"))
  state = torch.load(path, weights_only=True)
  state["features.2.weight"] = torch.zeros(64, 64, 5, 5)
  torch.save(state, tmp_path / "bad.pth")
  with pytest.raises(ValueError, match=r"tensor features.2.weight has shape .*\(64, 64, 5, 5\).*conv1_2/kernel"):
    style.load_vgg19(str(tmp_path / "bad.pth"))
  state["features.2.weight"] = torch.zeros(64, 64, 3, 3)
  del state["features.34.bias"]
  torch.save(state, tmp_path / "short.pth")
  with pytest.raises(ValueError, match="tensor features.34.bias is missing from"):
    style.load_vgg19(str(tmp_path / "short.pth"))
  (tmp_path / "junk.pth").write_text("not a checkpoint")
  with pytest.raises(ValueError, match="cannot read VGG-19 weights from .*junk.pth") as error:
    style.load_vgg19(str(tmp_path / "junk.pth"))
  assert "\n" not in str(error.value)


# The experiment.


def test_smoke_run_writes_both_figures_and_the_losses(tmp_path):
  results = experiment.run(experiment.get_config("smoke"), str(tmp_path))
  assert (tmp_path / "stylized.png").stat().st_size > 0 and (tmp_path / "dream.png").stat().st_size > 0
  written = json.loads((tmp_path / "results.json").read_text())
  assert written["final"] == results["final"]
  for name in ("content", "style", "tv", "total"):
    assert np.isfinite(written["initial"][name]) and np.isfinite(written["final"][name])
  assert written["final"]["total"] < written["initial"]["total"]
  assert len(written["loss_per_step"]) == 5
  dream = written["dream"]
  assert len(dream["objective_per_octave"]) == 1 and dream["final_objective"] > dream["initial_objective"]


def test_missing_vgg_file_is_one_line_exit_2_and_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  proc = run_python(["-m", "experiments.style", f"--workdir={workdir}", "--config=experiments/style.py:smoke",
                     "--config.mode=stylize", "--config.network=vgg19", "--config.vgg19_path=/nonexistent/vgg19.pth"])
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert lines == ["error: VGG-19 weights file /nonexistent/vgg19.pth does not exist"]
  assert not workdir.exists()


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "sgd", "unknown optimizer 'sgd'; choose one of: adam, lbfgs"),
    ("steps", 0, "steps must be > 0, got 0"),
    ("network", "vgg19", "network vgg19 needs --config.vgg19_path"),
    ("style_layers", "relu3,relu4", "unknown layer 'relu4' of random"),
    ("dream_octaves", 9, "the smallest of 9 octaves would be"),
])
def test_bad_config_raises_before_writing(tmp_path, field, value, message):
  config = experiment.get_config("smoke")
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    experiment.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_wrong_vgg_shapes_are_a_config_error(vgg_file, tmp_path):
  torch = pytest.importorskip("torch")
  _, path = vgg_file
  state = torch.load(path, weights_only=True)
  state["features.0.bias"] = torch.zeros(32)
  torch.save(state, tmp_path / "bad.pth")
  config = experiment.get_config("smoke")
  config.mode, config.network, config.vgg19_path = "stylize", "vgg19", str(tmp_path / "bad.pth")
  with pytest.raises(ConfigError, match=r"tensor features.0.bias has shape .*\(32,\)"):
    experiment.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
