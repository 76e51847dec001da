"""StyleGAN2 (weight demodulation, or StyleGAN1's AdaIN) on 8x8 digits or 32x32 RGB shapes, with DragGAN-style editing.

Run:
  python -m experiments.stylegan --workdir=/tmp/stylegan
  python -m experiments.stylegan --workdir=/tmp/stylegan_adain --config.style_mode=adain
  python -m experiments.stylegan --workdir=/tmp/stylegan_shapes --config=experiments/stylegan.py:shapes
  python -m experiments.stylegan --workdir=/tmp/stylegan --drag=4,2:4,5
  python -m experiments.stylegan --workdir=/tmp/stylegan_shapes --config=experiments/stylegan.py:shapes --drag_shapes=8
  python -m experiments.stylegan --workdir=/tmp/smoke --config=experiments/stylegan.py:smoke

Writes `samples.png` (a grid of generated images), `samples.npz` (the `num_samples` scored images,
drawn from the EMA generator with truncation `truncation_psi` around the tracked mean w) and
`results.json`: the sample metrics as the GAN experiment reports them (on digits
research.tasks.classifier.digits_sample_metrics: FID, KID, precision and recall in the two digits
feature spaces beside the real held-out digits' own at the same count, the class shares the
classifier reads; on shapes the same in a pixel space of 4x4-pooled pixels) and `ppl`, the
perceptual path length in W (t and t + 1e-4 along lines between two ws, the 1st to 99th
percentile), measured in the MLP digits classifier's feature space on digits and in the pixel
space on shapes.

Measured on a 2-core CPU shared with other jobs (seed 0; FID in the MLP digits space, where the
300 real held-out digits score 2.08 against the training digits). The default command: FID
20.2 (9.7x real; KID 7.4 ± 1.9 x 1e-3), 10 of 10 classes (the smallest share 2.6%, the largest 25%
threes), precision 0.51, recall 0.29, PPL 453; in the convolutional digits space FID 145 (real:
13.1). 3000 steps at 9 steps/s on the machine under a load of 12 (589 s; 5 min 14 s wall at a load
of 6, 15 steps/s). Short probes, 1000 steps and 500 samples each (FID; classes covered; precision;
recall): the default settings 105, 7, 0.73, 0.00 (every sample nearly one shape: the generator
collapsed onto few modes, and the EMA generator draws a blurred average of them); without the EMA
150, 4, 0.24, 0.00; StyleGAN2-ADA's CIFAR-10 choices (no path length, no mixing, gamma 0.01) 95,
4, 0.52, 0.00; Adam(3e-4, beta1 0.5) 66, 8, 0.33, 0.17. The last, run for the default 3000 steps,
ended at FID 65.0 with 6 classes (precision 0.35, recall 0.08): StyleGAN2's Adam(2e-3, 0, 0.99)
stays the default. This small StyleGAN (32 and 16 channels, 23k generator and 33k discriminator parameters) does not yet
reach the DCGAN-style GAN of experiments/gan.py (FID 4.75, 10 classes, in the same 3000 steps).

`--drag=x0,y0:x1,y1` (pixel columns and rows of the image, 0-based) edits a finished run instead
of training: one sample (seed `config.seed`) has its handle point x0,y0 dragged towards the target
x1,y1 by research.models.stylegan.drag (at most `drag_steps` Adam steps of `drag_lr` on the first
`drag_edit_layers` ws, supervision radius r1 `drag_supervision_radius`, tracking window r2
`drag_tracking_radius`), and drag_before.png / drag_after.png (the points drawn: handle red, target
blue) and drag.json (the handle's path; on shapes also the shape's centroid, area and colour before
and after) are written. `--drag_shapes=N` (shapes runs) drags the shape of each of N samples from
its centroid (the weighted mean of the pixels that differ from the border's colour) `drag_distance`
pixels along x or y towards the image centre, all N in one compiled program, and writes
drag_shapes.json (per sample where the centroid lands, its distance to the target, the share of
the way it moved, and the shape's area and colour before and after) and drag_shapes_before.png /
drag_shapes_after.png. On the default run this
editing does not yet work as DragGAN's does: `--drag=3,4:5,4` redrew most of the digit and the
tracked handle ended at 3,5, no nearer the target (at 8x8 with 16 to 32 channels the features carry
little that tracking can follow). Nor yet on shapes: the `shapes` preset's samples after 3000 steps
are not clean shapes (mostly faint dots; FID 9.45 in the pooled pixel space, 33.8x the test
images'), and `--drag_shapes=8 --config.drag_steps=60` erased or redrew the shapes instead of
moving them (the centroids ended 7.03 px from targets 7 px away on average; docs/results.md).
"""

import json
import os

import jax
import ml_collections
import numpy as np
from absl import flags

from research import data as data_lib
from research.checks import ConfigError, check_positive
from research.models import stylegan as sg
from research.tasks import stylegan as stylegan_tasks
from research.train import Checkpointer, base_config, check_common, check_workdir, cli, train
from research.train import images as images_lib


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Tiny networks, a few steps and few samples, for tests."""
  config.steps = 4
  config.batch_size = 8
  config.checkpoint_every = 2
  config.log_every = 2
  config.latent_dim = config.w_dim = 8
  config.mapping_layers = 1
  config.channels = (8,) * len(config.channels)  # one width per resolution of the dataset
  config.num_samples = 16
  config.r1_every = config.pl_every = 2


def _shapes(config: ml_collections.ConfigDict) -> None:
  """32x32 RGB shapes with a small generator (8 to 16 channels), sized for a 2-core CPU."""
  config.dataset = "shapes"
  config.channels = (16, 16, 8, 8)
  config.batch_size = 16
  config.steps_per_call = 10


PRESETS = {"shapes": _shapes, "smoke": _smoke}
SHAPE_THRESHOLD = 0.25  # a pixel belongs to the shape when a channel differs from the background by this much


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; `preset` is a comma-separated list of PRESETS (shapes, smoke)."""
  config = base_config()
  config.dataset = "digits"  # digits (8x8 grey) or shapes (32x32 RGB); set channels to 4 widths for shapes
  config.steps = 3000  # generator (and discriminator) updates
  config.batch_size = 32  # images per update
  config.checkpoint_every = 1000  # save a checkpoint every this many steps (and at the end)
  config.log_every = 250  # write metrics and a progress line every this many steps
  config.latent_dim = 32  # dimension of z
  config.w_dim = 32  # dimension of w
  config.mapping_layers = 2  # dense layers of the mapping network
  config.mapping_lr_mul = 0.01  # learning-rate multiplier of the mapping network (StyleGAN's 0.01)
  config.channels = (32, 16)  # feature channels per resolution from 4x4 up (digits: 4, 8; shapes: 4, 8, 16, 32)
  config.style_mode = "demod"  # demod (StyleGAN2's weight demodulation) or adain (StyleGAN1)
  config.mbstd_group = 4  # images per minibatch-standard-deviation group of the discriminator
  config.mixing_prob = 0.9  # style mixing probability (StyleGAN2: 0.9)
  config.r1_gamma = 0.1  # R1 weight gamma (gamma / 2 E ||grad D(x)||^2 on reals); StyleGAN2 scales it with resolution
  config.r1_every = 16  # lazy R1: every this many steps, scaled by it
  config.pl_weight = 2.0  # path-length penalty weight (StyleGAN2: 2)
  config.pl_every = 4  # lazy path-length penalty: every this many steps, scaled by it
  config.pl_decay = 0.01  # rate of the running mean of the path lengths
  config.w_avg_beta = 0.995  # the tracked mean w: w_avg <- mean w + beta (w_avg - mean w) per step
  config.truncation_psi = 1.0  # truncation of the scored samples around the tracked mean w (1: none)
  config.disc_lr_ratio = 1.0  # discriminator learning rate / generator learning rate
  config.num_samples = 1000  # generated images scored (FID, precision, recall), PPL pairs, written to samples.npz
  config.ema_decay = 0.999  # generator EMA, used by evaluation and samples
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 2e-3  # StyleGAN2's Adam(2e-3, 0, 0.99)
  config.optimizer.b1 = 0.0
  config.optimizer.b2 = 0.99
  config.optimizer.schedule = "constant"
  config.drag_steps = 40  # --drag: optimisation steps of w (motion supervision + point tracking), at most
  config.drag_lr = 0.05  # --drag: Adam's learning rate on w
  config.drag_edit_layers = 0  # --drag: how many of the first ws are optimised (0: half of them)
  config.drag_supervision_radius = 1  # --drag: radius r1 of the motion-supervision disc, in pixels
  config.drag_tracking_radius = 2  # --drag: half-side r2 of the point-tracking window, in pixels
  config.drag_distance = 7.0  # --drag_shapes: how far each shape's centroid is dragged, in pixels
  return cli.apply_presets(config, preset, PRESETS)


def table_config(table) -> ml_collections.ConfigDict:
  """The run config of a StyleGAN table (`table`: its smoke flag, num_samples and steps, 0 = the preset's)."""
  config = get_config("smoke" if table.smoke else "")
  config.num_samples = table.num_samples
  if table.steps:
    config.steps = table.steps
  config.log_every = config.checkpoint_every = max(config.steps, 1)
  return config


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on bad input, before anything is compiled or written."""
  stylegan_tasks.check_config(config)
  if config.drag_steps < 1 or config.drag_lr <= 0:
    raise ConfigError(f"drag_steps and drag_lr must be positive, got {config.drag_steps} and {config.drag_lr}")
  check_positive("drag_edit_layers", config.drag_edit_layers, allow_zero=True)
  check_positive("drag_supervision_radius", config.drag_supervision_radius, allow_zero=True)
  check_positive("drag_tracking_radius", config.drag_tracking_radius)
  check_positive("drag_distance", config.drag_distance)
  num_ws = 2 * len(config.channels)
  if config.drag_edit_layers > num_ws:
    raise ConfigError(f"drag_edit_layers must be at most the {num_ws} ws of the generator, got {config.drag_edit_layers}")
  check_common(config)


def saved_params(workdir: str) -> dict:
  """The finished run's parameters in `workdir` ({'gen', 'disc', 'w_avg'}): the EMA's where the run keeps one."""
  checkpoints = Checkpointer(workdir, keep=1)
  try:
    _, state = checkpoints.restore_saved()
  finally:
    checkpoints.close()
  return state["ema_params"] if state.get("ema_params") is not None else state["params"]


# What experiments.sample / experiments.evaluate may change in a finished run (they train nothing):
# `--config.truncation_psi=0.7` draws and scores the run's generator truncated.
SAMPLING_FIELDS = ("num_samples", "truncation_psi")


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  return stylegan_tasks.metric_names(config.dataset)


def run(config: ml_collections.ConfigDict, workdir: str, members=None) -> dict:
  """Trains the StyleGAN described by `config` in `workdir`; returns what results.json holds.

  `members` (research.train.Members) trains a sweep of runs as one program (experiments/sweep.py).
  """
  check_config(config)
  task = stylegan_tasks.make_task(config)
  data = stylegan_tasks.images_only(data_lib.load(config.dataset, "train"))
  return train(task, config, workdir, data, members=members).results


def parse_points(text: str, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """--drag's "x0,y0:x1,y1" -> ((x0, y0), (x1, y1)), each inside a size x size image.

  Raises:
    ConfigError: for another form or a point outside the image.
  """
  try:
    handle, target = (tuple(int(v) for v in part.split(",")) for part in text.split(":"))
    if len(handle) != 2 or len(target) != 2:
      raise ValueError
  except ValueError:
    raise ConfigError(f"--drag must be x0,y0:x1,y1 (integer pixel columns and rows), got {text!r}") from None
  for name, point in (("handle", handle), ("target", target)):
    if not all(0 <= v < size for v in point):
      raise ConfigError(f"--drag {name} point {point[0]},{point[1]} is outside the {size}x{size} image "
                        f"(x and y in 0..{size - 1})")
  return handle, target


def _with_points(images: np.ndarray, handles, targets) -> np.ndarray:
  """Grey or RGB images in [0, 1] -> RGB in [0, 1], each image's handle pixel red and its target pixel blue.

  `handles` and `targets` are one (x, y) for every image or (N, 2), rounded to pixels.
  """
  rgb = np.repeat(images, 3, -1) if images.shape[-1] == 1 else images.copy()
  rgb = np.clip(rgb, 0.0, 1.0)  # (N, R, R, 3)
  n = len(rgb)
  handles = np.broadcast_to(np.round(np.asarray(handles)).astype(int), (n, 2))
  targets = np.broadcast_to(np.round(np.asarray(targets)).astype(int), (n, 2))
  for image, (hx, hy), (tx, ty) in zip(rgb, handles, targets):
    image[ty, tx] = (0.0, 0.0, 1.0)
    image[hy, hx] = (1.0, 0.0, 0.0)
  return rgb


def shape_pixels(image: np.ndarray) -> np.ndarray:
  """(R, R) weights in [0, 1] of the pixels of an image in [0, 1] that differ from its background.

  The background is the median colour of the image's border; a pixel's weight is its largest
  channel difference from it, clipped to [0, 1], and 0 below SHAPE_THRESHOLD (noise and faint
  halos).
  """
  image = np.asarray(image, np.float32)
  border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # (4R, C)
  difference = np.max(np.abs(image - np.median(border, 0)), -1)  # (R, R)
  return np.where(difference >= SHAPE_THRESHOLD, np.clip(difference, 0.0, 1.0), 0.0)


def shape_centroid(image: np.ndarray) -> np.ndarray:
  """(x, y): the centroid of an image's shape pixels (`shape_pixels`), weighted; the image centre if there are none."""
  weights = shape_pixels(image)
  total = weights.sum()
  if total == 0:
    return np.full(2, (image.shape[0] - 1) / 2.0)
  ys, xs = np.mgrid[:image.shape[0], :image.shape[1]]
  return np.array([np.sum(weights * xs), np.sum(weights * ys)]) / total


def shape_summary(image: np.ndarray) -> dict:
  """The centroid, the area (summed shape weights, in pixels) and the mean colour of an image's shape."""
  weights = shape_pixels(image)
  colour = np.sum(weights[..., None] * image, (0, 1)) / max(float(weights.sum()), 1e-8)
  return {"centroid": shape_centroid(image).tolist(), "area": float(weights.sum()), "colour": colour.tolist()}


def _edit_fn(config, gen: sg.Generator):
  """(gen params, ws (1, num_ws, w_dim), handle (2,), target (2,)) -> sg.DragResult with the config's drag settings."""
  def edit(params, ws, handle, target):
    return sg.drag(gen, params, ws, handle, target, config.drag_steps, config.drag_lr,
                   config.drag_edit_layers or None, config.drag_supervision_radius, config.drag_tracking_radius)
  return edit


def _finished_run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The parameters of the finished run in `workdir`, after the config's and the workdir's checks."""
  check_config(config)
  check_workdir(workdir)
  results_path = os.path.join(workdir, "results.json")
  if not os.path.isfile(results_path) or json.load(open(results_path, encoding="utf-8")).get("step") != config.steps:
    raise ConfigError(f"{workdir} has no finished stylegan run of {config.steps} steps to drag in")
  return saved_params(workdir)


def drag_run(config: ml_collections.ConfigDict, workdir: str, points: str) -> dict:
  """Drags one sample of the finished run in `workdir`: drag_before.png, drag_after.png and drag.json.

  The sample is drawn with seed `config.seed` from the EMA generator, truncated by
  `truncation_psi`; research.models.stylegan.drag moves its handle towards the target in at most
  `drag_steps` Adam steps of `drag_lr` on w. On shapes, drag.json also holds the shape's centroid,
  area and colour before and after (`shape_summary`).
  """
  cfg = stylegan_tasks.model_config(config)
  handle, target = parse_points(points, cfg.resolution)
  params = _finished_run(config, workdir)
  gen = sg.Generator(cfg)
  ws = sg.sample_ws(gen, params["gen"], params["w_avg"], jax.random.key(config.seed), 1, config.truncation_psi)
  before = np.asarray(stylegan_tasks.to_unit(gen.apply(params["gen"], ws, method=sg.Generator.synthesize)))
  out = jax.jit(_edit_fn(config, gen))(params["gen"], ws, np.float32(handle), np.float32(target))
  path = np.asarray(out.handles)
  after = np.asarray(stylegan_tasks.to_unit(out.image))
  images_lib.save_png(os.path.join(workdir, "drag_before.png"), _with_points(before, handle, target), "before")
  images_lib.save_png(os.path.join(workdir, "drag_after.png"), _with_points(after, path[-1], target), "after")
  summary = {"handle": list(handle), "target": list(target), "tracked_handle": path[-1].tolist(),
             "path": path.tolist(), "distance_before": float(np.linalg.norm(np.subtract(target, handle))),
             "distance_after": float(np.linalg.norm(target - path[-1]))}
  if config.dataset == "shapes":
    summary["shape_before"], summary["shape_after"] = shape_summary(before[0]), shape_summary(after[0])
  with open(os.path.join(workdir, "drag.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  return summary


def centroid_targets(centroids: np.ndarray, distance: float, size: int) -> np.ndarray:
  """(N, 2) targets `distance` px from each centroid along x (even rows) or y (odd rows), towards the image centre.

  A centroid within 2 px of the centre on that axis goes right or down for rows 0, 1 mod 4 and
  left or up for the others. Targets are clipped to the image.
  """
  centre = (size - 1) / 2.0
  targets = np.array(centroids, np.float64)
  for i, centroid in enumerate(centroids):
    axis = i % 2
    offset = centre - centroid[axis]
    sign = np.sign(offset) if abs(offset) > 2.0 else (1.0 if i % 4 < 2 else -1.0)
    targets[i, axis] += sign * distance
  return np.clip(targets, 0.0, size - 1.0)


def drag_shapes(config: ml_collections.ConfigDict, workdir: str, count: int) -> dict:
  """Drags the shape centroid of `count` samples of a finished shapes run by `drag_distance` px, in one program.

  Samples are drawn with seed `config.seed` as `drag_run` draws one; each handle is the shape's
  centroid (`shape_centroid`) and each target `centroid_targets`'. Writes drag_shapes.json (per
  sample: the centroid, area and colour before and after, the target, the tracked handle, and the
  centroid's distance to the target before and after) and drag_shapes_before.png /
  drag_shapes_after.png (the same grid of samples, handle red, target blue).

  Returns:
    The summary: per-sample rows and the means of the final distance and of the share of the
    way covered (the centroid's progress along the drag direction over the distance).
  """
  if config.dataset != "shapes":
    raise ConfigError(f"--drag_shapes drags shapes; the run is on {config.dataset}")
  if count < 1:
    raise ConfigError(f"--drag_shapes must be a positive count of samples, got {count}")
  cfg = stylegan_tasks.model_config(config)
  params = _finished_run(config, workdir)
  gen = sg.Generator(cfg)
  ws = sg.sample_ws(gen, params["gen"], params["w_avg"], jax.random.key(config.seed), count, config.truncation_psi)
  before = np.asarray(stylegan_tasks.to_unit(gen.apply(params["gen"], ws, method=sg.Generator.synthesize)))
  handles = np.stack([shape_centroid(image) for image in before]).astype(np.float32)  # (count, 2)
  targets = centroid_targets(handles, config.drag_distance, cfg.resolution).astype(np.float32)
  edit = jax.vmap(_edit_fn(config, gen), in_axes=(None, 0, 0, 0))
  out = jax.jit(edit)(params["gen"], ws[:, None], handles, targets)
  after = np.asarray(stylegan_tasks.to_unit(out.image[:, 0]))  # (count, R, R, C)
  tracked = np.asarray(out.handles[:, -1])  # (count, 2)
  rows = []
  for i in range(count):
    shape_before, shape_after = shape_summary(before[i]), shape_summary(after[i])
    direction = (targets[i] - handles[i]) / np.linalg.norm(targets[i] - handles[i])
    moved = np.subtract(shape_after["centroid"], shape_before["centroid"])
    rows.append({"target": targets[i].tolist(), "tracked_handle": tracked[i].tolist(),
                 "shape_before": shape_before, "shape_after": shape_after,
                 "distance_before": float(np.linalg.norm(targets[i] - handles[i])),
                 "distance_after": float(np.linalg.norm(targets[i] - shape_after["centroid"])),
                 "progress": float(moved @ direction / np.linalg.norm(targets[i] - handles[i]))})
  summary = {"samples": rows, "mean_distance_after": float(np.mean([r["distance_after"] for r in rows])),
             "mean_progress": float(np.mean([r["progress"] for r in rows]))}
  images_lib.save_png(os.path.join(workdir, "drag_shapes_before.png"), _with_points(before, handles, targets),
                      "before")
  images_lib.save_png(os.path.join(workdir, "drag_shapes_after.png"), _with_points(after, tracked, targets),
                      "after")
  with open(os.path.join(workdir, "drag_shapes.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  return summary


def main() -> None:
  # Defined here, not on import: the config flag imports this file again as the config module.
  points = flags.DEFINE_string("drag", None, "x0,y0:x1,y1: drag a sample of a finished run in --workdir from the "
                                             "handle x0,y0 to the target x1,y1 instead of training.")
  shapes = flags.DEFINE_integer("drag_shapes", None, "N: drag the shape centroids of N samples of a finished shapes "
                                                     "run in --workdir by drag_distance pixels instead of training.")

  def dispatch(config, workdir):
    if points.value is not None and shapes.value is not None:
      raise ConfigError("pass --drag or --drag_shapes, not both")
    if points.value is not None:
      return drag_run(config, workdir, points.value)
    if shapes.value is not None:
      return drag_shapes(config, workdir, shapes.value)
    return run(config, workdir)

  cli.main(__file__, dispatch)


if __name__ == "__main__":
  main()
