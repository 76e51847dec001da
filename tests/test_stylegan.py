"""StyleGAN2: demodulation, the path-length penalty, truncation, style mixing, lazy regularisers, the experiment."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from experiments import stylegan as stylegan_experiment
from research.models import stylegan as sg
from research.train import ConfigError

TINY = sg.StyleGANConfig(latent_dim=5, w_dim=6, mapping_layers=1, channels=(5, 3), resolution=8, num_channels=1)


def _tiny_generator(config=TINY, seed=0):
  gen = sg.Generator(config)
  return gen, gen.init(jax.random.key(seed), jnp.zeros((1, config.latent_dim)))


# ---------------------------------------------------------------------------------------
# The model's closed forms.


def test_demodulated_kernels_have_unit_norm_per_output_channel_and_match_the_styled_conv():
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 5, 7))
  styles = jax.random.normal(jax.random.key(1), (4, 5)) * 3.0
  out = sg.demodulate(kernel, styles)  # (4, 3, 3, 5, 7)
  assert out.shape == (4, 3, 3, 5, 7)
  norms = np.sqrt(np.sum(np.square(np.asarray(out)), axis=(1, 2, 3)))  # (4, 7)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
  # The layer scales activations instead of kernels; per example it equals a convolution with w''.
  layer = sg.StyledConv(7, 3)
  x, w = jax.random.normal(jax.random.key(2), (4, 6, 6, 5)), jax.random.normal(jax.random.key(3), (4, 9))
  params = layer.init(jax.random.key(4), x, w)
  y = layer.apply(params, x, w)
  p = params["params"]
  s = w @ (p["affine"]["kernel"] / 3.0) + p["affine"]["bias"]  # the equalised affine: fan_in 9
  kernels = sg.demodulate(p["kernel"] / np.sqrt(3 * 3 * 5), s)
  expected = jnp.stack([sg.conv2d(x[i:i + 1], kernels[i])[0] for i in range(4)])
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="demodulate needs"):
    sg.demodulate(kernel, styles[:, :3])


def test_path_length_penalty_on_a_linear_generator_matches_the_hand_computation_and_finite_differences():
  num_ws, w_dim, h, w, c = 3, 4, 5, 5, 2
  a = jax.random.normal(jax.random.key(0), (num_ws, w_dim, h, w, c))
  ws = jax.random.normal(jax.random.key(1), (6, num_ws, w_dim))
  key, pl_mean = jax.random.key(2), jnp.float32(0.7)

  def linear(a_, ws_):
    return jnp.einsum("bnd,ndhwc->bhwc", ws_, a_)  # (batch, H, W, C)

  out = sg.path_length_penalty(lambda v: linear(a, v), ws, key, pl_mean, decay=0.1)
  # By hand: J^T y has entries sum_{hwc} y_bhwc A_ndhwc, the same y the penalty drew.
  y = jax.random.normal(key, (6, h, w, c)) / np.sqrt(h * w)
  jty = np.einsum("bhwc,ndhwc->bnd", np.asarray(y, np.float64), np.asarray(a, np.float64))
  lengths = np.sqrt(np.mean(np.sum(jty ** 2, -1), -1))
  mean = 0.7 + 0.1 * (lengths.mean() - 0.7)
  np.testing.assert_allclose(out.lengths, lengths, rtol=1e-5)
  np.testing.assert_allclose(out.pl_mean, mean, rtol=1e-5)
  np.testing.assert_allclose(out.penalty, np.mean((lengths - mean) ** 2), rtol=1e-4)

  # Its gradient in the generator's parameters against central differences along a random direction. The
  # penalty holds the updated running mean fixed (no gradient through it); at decay 0 it is pl_mean, so
  # the differences hold it fixed too.
  def penalty(a_):
    return sg.path_length_penalty(lambda v: linear(a_, v), ws, key, pl_mean, decay=0.0).penalty

  direction = jax.random.normal(jax.random.key(3), a.shape)
  analytic = float(jnp.sum(jax.grad(penalty)(a) * direction))
  step = 1e-2
  numeric = (float(penalty(a + step * direction)) - float(penalty(a - step * direction))) / (2 * step)
  assert analytic == pytest.approx(numeric, rel=2e-2)
  assert abs(analytic) > 1e-3


def test_truncation_at_psi_zero_gives_the_mean_ws_image_for_every_z():
  gen, params = _tiny_generator()
  w_avg = jax.random.normal(jax.random.key(5), (TINY.w_dim,))

  @jax.jit
  def images_and_mean(psi):
    ws = sg.sample_ws(gen, params, w_avg, jax.random.key(6), 8, psi)  # (8, num_ws, w_dim)
    images = gen.apply(params, ws, method=sg.Generator.synthesize)
    mean_image = gen.apply(params, sg.broadcast_ws(w_avg[None], TINY.num_ws), method=sg.Generator.synthesize)
    return images, mean_image

  images, mean_image = images_and_mean(jnp.float32(0.0))
  np.testing.assert_allclose(images, jnp.broadcast_to(mean_image, images.shape), rtol=1e-5, atol=1e-6)
  images, _ = images_and_mean(jnp.float32(1.0))
  assert float(jnp.std(images, 0).mean()) > 1e-3  # other z, other images
  # psi = 1 leaves the ws alone.
  untruncated = jax.random.normal(jax.random.key(7), (8, TINY.num_ws, TINY.w_dim))
  np.testing.assert_allclose(sg.truncate(untruncated, w_avg, 1.0), untruncated, rtol=1e-6, atol=1e-6)
  # A traced psi is one program for every value.
  traced = jax.jit(sg.truncate)(untruncated, w_avg, jnp.float32(0.5))
  np.testing.assert_allclose(traced, w_avg + 0.5 * (untruncated - w_avg), rtol=1e-6)
  for psi in (-0.1, 1.5):
    with pytest.raises(ValueError, match=r"^truncation psi must be in \[0, 1\], got ") as err:
      sg.truncate(untruncated, w_avg, psi)
    assert "\n" not in str(err.value)


def test_style_mixing_switches_from_w1_to_w2_at_one_layer_with_the_traced_probability():
  w1, w2 = jnp.zeros((500, 3)), jnp.ones((500, 3))
  none = sg.mix_styles(jax.random.key(0), w1, w2, 4, 0.0)
  assert none.shape == (500, 4, 3) and float(jnp.max(none)) == 0.0
  mixed = jax.jit(sg.mix_styles, static_argnums=3)(jax.random.key(0), w1, w2, 4, jnp.float32(1.0))
  layers = np.asarray(mixed[:, :, 0])  # (500, 4): 0 before the crossover, 1 from it on
  assert np.all(np.diff(layers, axis=1) >= 0) and np.all(layers[:, 0] == 0) and np.all(layers[:, -1] == 1)
  assert set(layers.sum(1).astype(int)) == {1, 2, 3}  # crossovers at layers 1, 2 and 3
  half = np.asarray(sg.mix_styles(jax.random.key(1), w1, w2, 4, 0.5)[:, -1, 0])
  assert 0.4 < half.mean() < 0.6


def test_minibatch_stddev_appends_the_group_standard_deviation():
  x = jax.random.normal(jax.random.key(0), (6, 2, 2, 3))
  out = np.asarray(sg.minibatch_stddev(x, 3))
  assert out.shape == (6, 2, 2, 4)
  np.testing.assert_array_equal(out[..., :3], x)
  groups = np.asarray(x).reshape(3, 2, 2, 2, 3)  # image i in group i % 2
  for i in range(6):
    expected = np.mean(np.sqrt(np.var(groups[:, i % 2], axis=0) + 1e-8))
    np.testing.assert_allclose(out[i, ..., 3], expected, rtol=1e-5)


@pytest.mark.parametrize("style_mode", ["demod", "adain"])
def test_generator_and_discriminator_shapes_on_shapes_resolution(style_mode):
  config = sg.StyleGANConfig(latent_dim=4, w_dim=4, mapping_layers=1, channels=(4, 4, 3, 3), resolution=32,
                             num_channels=3, style_mode=style_mode, mbstd_group=2)
  gen, params = _tiny_generator(config)
  images = jax.jit(lambda p: sg.generate(gen, p, jnp.zeros(4), jax.random.key(1), 4, 0.7))(params)
  assert images.shape == (4, 32, 32, 3) and np.all(np.isfinite(images))
  disc = sg.Discriminator(config)
  logits = jax.jit(lambda x: disc.apply(disc.init(jax.random.key(2), x), x))(images)
  assert logits.shape == (4,) and np.all(np.isfinite(logits))
  with pytest.raises(ValueError, match="unknown style_mode 'stylish'"):
    sg.StyleGANConfig(style_mode="stylish")


def test_perceptual_path_length_drops_the_outer_percentiles():
  a = np.zeros((100, 2))
  b = np.zeros((100, 2))
  b[:, 0] = 1e-4 * np.arange(100) / 99.0  # squared distances / eps^2 spread over [0, 1]
  b[-1, 0] = 1.0  # one outlier beyond the 99th percentile
  value = sg.perceptual_path_length(a, b, 1e-4)
  kept = (np.arange(1, 99) / 99.0) ** 2
  assert value == pytest.approx(kept.mean(), rel=1e-6)


# ---------------------------------------------------------------------------------------
# The plug-in and the experiment.


@pytest.mark.parametrize("field,value,message", [
    ("truncation_psi", 1.5, "truncation_psi must be in [0, 1], got 1.5"),
    ("style_mode", "stylish", "unknown style_mode 'stylish'; choose one of: demod, adain"),
    ("w_dim", 0, "w_dim must be > 0, got 0"),
    ("r1_every", -1, "r1_every must be > 0, got -1"),
    ("channels", (8, 8, 8), "channels must name 2 widths for digits"),
    ("mbstd_group", 3, "batch_size 8 is not divisible by mbstd_group 3"),
    ("dataset", "mnist", "unknown dataset 'mnist'; choose one of: digits, shapes"),
])
def test_bad_config_is_a_config_error(field, value, message):
  config = stylegan_experiment.get_config("smoke")
  config[field] = value
  with pytest.raises(ConfigError, match=None) as err:
    stylegan_experiment.check_config(config)
  assert message in str(err.value)


def test_bad_psi_on_the_command_line_is_one_line_exit_2_and_writes_nothing(tmp_path):
  proc = run_python(["-m", "experiments.stylegan", f"--workdir={tmp_path / 'w'}",
                     "--config=experiments/stylegan.py:smoke", "--config.truncation_psi=-0.5"])
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip() == "error: truncation_psi must be in [0, 1], got -0.5"
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_smoke_run_regularises_lazily_and_writes_samples_sample_metrics_and_ppl(tmp_path):
  config = stylegan_experiment.get_config("smoke")
  config.truncation_psi = 0.7
  config.r1_every, config.pl_every, config.log_every = 2, 3, 1
  results = stylegan_experiment.run(config, str(tmp_path))
  # The lazy regularisers act at the steps (0-based) divisible by their interval, in the one compiled step.
  logged = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
  logged = sorted((row for row in logged if "r1" in row), key=lambda row: row["step"])
  assert [row["step"] for row in logged] == [1, 2, 3, 4]
  assert [row["r1"] > 0 for row in logged] == [True, False, True, False]
  assert [row["pl_penalty"] > 0 for row in logged] == [True, False, False, True]
  stored = json.loads((tmp_path / "results.json").read_text())
  assert stored["step"] == config.steps == results["step"]
  for name in ("fid", "fid_real", "kid", "precision", "recall", "cnn_fid", "class_shares", "ppl"):
    assert name in stored, name
  assert np.isfinite(stored["ppl"]) and stored["ppl"] > 0 and stored["num_samples"] == config.num_samples
  assert set(stylegan_experiment.metric_names(config)) <= set(stored)  # what a sweep may plot
  with np.load(tmp_path / "samples.npz") as drawn:
    images = drawn["images"]
  assert images.shape == (config.num_samples, 8, 8, 1) and images.min() >= 0 and images.max() <= 1
  assert (tmp_path / "samples.png").stat().st_size > 0

  # Dragging a sample of the finished run writes the images with the points and the handle's path.
  summary = stylegan_experiment.drag_run(config, str(tmp_path), "2,3:5,3")
  assert summary["handle"] == [2, 3] and summary["target"] == [5, 3]
  assert len(summary["path"]) == config.drag_steps + 1 and summary["path"][0] == [2.0, 3.0]
  for name in ("drag_before.png", "drag_after.png", "drag.json"):
    assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.parametrize("points,message", [
    ("2,3:8,3", "--drag target point 8,3 is outside the 8x8 image (x and y in 0..7)"),
    ("-1,3:4,3", "--drag handle point -1,3 is outside the 8x8 image (x and y in 0..7)"),
    ("2,3", "--drag must be x0,y0:x1,y1 (integer pixel columns and rows), got '2,3'"),
])
def test_drag_points_are_checked(points, message):
  with pytest.raises(ConfigError) as err:
    stylegan_experiment.parse_points(points, 8)
  assert str(err.value) == message


def test_drag_point_outside_the_image_is_one_line_exit_2(tmp_path):
  proc = run_python(["-m", "experiments.stylegan", f"--workdir={tmp_path}", "--config=experiments/stylegan.py:smoke",
                     "--drag=1,1:9,1"])
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip() == "error: --drag target point 9,1 is outside the 8x8 image (x and y in 0..7)"
  assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------
# DragGAN-style editing.


def test_sample_features_interpolates_bilinearly_between_pixels():
  ys, xs = np.mgrid[:5, :6].astype(np.float32)
  feats = jnp.stack([xs, ys, xs * ys], -1)  # (5, 6, 3): bilinear interpolation reproduces x, y and xy exactly
  points = jnp.array([[0.0, 0.0], [2.25, 1.5], [4.9, 3.1], [7.0, -1.0]])  # the last is clamped to (5, 0)
  got = np.asarray(sg.sample_features(feats, points))
  want = np.array([[0, 0, 0], [2.25, 1.5, 2.25 * 1.5], [4.9, 3.1, 4.9 * 3.1], [5, 0, 0]], np.float32)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_synthesis_features_are_every_block_resized_to_the_image():
  config = sg.StyleGANConfig(latent_dim=4, w_dim=4, mapping_layers=1, channels=(3, 2, 2), resolution=16,
                             num_channels=3)
  gen, params = _tiny_generator(config)
  ws = jax.random.normal(jax.random.key(1), (2, config.num_ws, config.w_dim))
  images, feats = gen.apply(params, ws, True, method=sg.Generator.synthesize)
  np.testing.assert_array_equal(images, gen.apply(params, ws, method=sg.Generator.synthesize))
  assert feats.shape == (2, 16, 16, 3 + 2 + 2)
  # The last block is at the image's size already: its features are the block's output. The first (4x4)
  # varies smoothly: neighbouring pixels of the resized map differ less than the 4x4 map's neighbours.
  _, inter = gen.apply(params, ws, True, method=sg.Generator.synthesize, capture_intermediates=True,
                       mutable=["intermediates"])
  last = inter["intermediates"]["synthesis"]["conv16"]["__call__"][0]
  np.testing.assert_allclose(feats[..., -2:], last, rtol=1e-6)
  coarse = np.asarray(feats[..., :3])
  assert np.abs(np.diff(coarse, axis=1)).max() < np.abs(np.diff(coarse[:, ::4, ::4], axis=1)).max()


def test_drag_of_traced_points_under_vmap_equals_one_drag_per_image_and_checks_concrete_points():
  config = sg.StyleGANConfig(latent_dim=4, w_dim=4, mapping_layers=1, channels=(4, 4), resolution=8, num_channels=1)
  gen, params = _tiny_generator(config)
  ws = jax.random.normal(jax.random.key(1), (2, 1, config.num_ws, config.w_dim))
  handles, targets = np.float32([[2, 3], [5, 5]]), np.float32([[5, 3], [5, 1.5]])

  def edit(w, h, t):
    return sg.drag(gen, params, w, h, t, steps=3, lr=0.1, tracking_radius=1)

  batched = jax.jit(jax.vmap(edit))(ws, handles, targets)
  assert batched.handles.shape == (2, 4, 2) and batched.image.shape == (2, 1, 8, 8, 1)
  for i in range(2):
    single = edit(ws[i], tuple(handles[i]), tuple(targets[i]))
    np.testing.assert_allclose(batched.ws[i], single.ws, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched.handles[i], single.handles)
    assert float(jnp.max(jnp.abs(single.ws - ws[i]))) > 0  # it edited w
  # The tracked handle moves at most tracking_radius per step, and only the first edit_layers ws change.
  assert np.all(np.abs(np.diff(np.asarray(batched.handles), axis=1)) <= 1.0)
  np.testing.assert_array_equal(batched.ws[:, :, config.num_ws // 2:], ws[:, :, config.num_ws // 2:])
  with pytest.raises(ValueError, match=r"^target point \(8, 3\) is outside the 8x8 image"):
    edit(ws[0], (2, 3), (8, 3))
