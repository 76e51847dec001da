"""StyleGAN2 (weight demodulation, or StyleGAN1's AdaIN) on 8x8 digits or 32x32 RGB shapes, with DragGAN-style editing.

Run:
  python -m experiments.stylegan --workdir=/tmp/stylegan
  python -m experiments.stylegan --workdir=/tmp/stylegan_adain --config.style_mode=adain
  python -m experiments.stylegan --workdir=/tmp/stylegan_shapes --config.dataset=shapes
  python -m experiments.stylegan --workdir=/tmp/stylegan --drag=4,2:4,5
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
x1,y1 by research.models.stylegan.drag, and drag_before.png / drag_after.png (the points drawn:
handle red, target blue) and drag.json (the handle's path) are written. On the default run this
editing does not yet work as DragGAN's does: `--drag=3,4:5,4` redrew most of the digit and the
tracked handle ended at 3,5, no nearer the target (at 8x8 with 16 to 32 channels the features carry
little that tracking can follow).
"""

import json
import os

import jax
import ml_collections
import numpy as np
from absl import flags

from research import data as data_lib
from research.checks import ConfigError
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
  config.channels = (8, 8)
  config.num_samples = 16
  config.r1_every = config.pl_every = 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; `preset` is a comma-separated list of PRESETS (smoke)."""
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
  config.drag_steps = 40  # --drag: optimisation steps of w (motion supervision + point tracking)
  config.drag_lr = 0.05  # --drag: Adam's learning rate on w
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


def _with_points(images: np.ndarray, handle, target) -> np.ndarray:
  """Grey or RGB images in [0, 1] -> RGB in [0, 1], the handle pixel red and the target pixel blue."""
  rgb = np.repeat(images, 3, -1) if images.shape[-1] == 1 else images.copy()
  rgb = np.clip(rgb, 0.0, 1.0)  # (N, R, R, 3)
  rgb[:, target[1], target[0]] = (0.0, 0.0, 1.0)
  rgb[:, handle[1], handle[0]] = (1.0, 0.0, 0.0)
  return rgb


def drag_run(config: ml_collections.ConfigDict, workdir: str, points: str) -> dict:
  """Drags one sample of the finished run in `workdir`: drag_before.png, drag_after.png and drag.json.

  The sample is drawn with seed `config.seed` from the EMA generator, truncated by
  `truncation_psi`; research.models.stylegan.drag moves its handle towards the target in
  `drag_steps` Adam steps of `drag_lr` on w.
  """
  check_config(config)
  check_workdir(workdir)
  cfg = stylegan_tasks.model_config(config)
  handle, target = parse_points(points, cfg.resolution)
  results_path = os.path.join(workdir, "results.json")
  if not os.path.isfile(results_path) or json.load(open(results_path, encoding="utf-8")).get("step") != config.steps:
    raise ConfigError(f"{workdir} has no finished stylegan run of {config.steps} steps to drag in")
  params = saved_params(workdir)
  gen = sg.Generator(cfg)
  ws = sg.sample_ws(gen, params["gen"], params["w_avg"], jax.random.key(config.seed), 1, config.truncation_psi)
  before = gen.apply(params["gen"], ws, method=sg.Generator.synthesize)
  edit = jax.jit(lambda p, w: sg.drag(gen, p, w, handle, target, config.drag_steps, config.drag_lr))
  out = edit(params["gen"], ws)
  path = np.asarray(out.handles)
  after = np.asarray(stylegan_tasks.to_unit(out.image))
  images_lib.save_png(os.path.join(workdir, "drag_before.png"),
                      _with_points(np.asarray(stylegan_tasks.to_unit(before)), handle, target), "before")
  images_lib.save_png(os.path.join(workdir, "drag_after.png"), _with_points(after, path[-1].astype(int), target),
                      "after")
  summary = {"handle": list(handle), "target": list(target), "tracked_handle": path[-1].tolist(),
             "path": path.tolist(), "distance_before": float(np.linalg.norm(np.subtract(target, handle))),
             "distance_after": float(np.linalg.norm(target - path[-1]))}
  with open(os.path.join(workdir, "drag.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  return summary


def main() -> None:
  # Defined here, not on import: the config flag imports this file again as the config module.
  points = flags.DEFINE_string("drag", None, "x0,y0:x1,y1: drag a sample of a finished run in --workdir from the "
                                             "handle x0,y0 to the target x1,y1 instead of training.")
  cli.main(__file__, lambda config, workdir: run(config, workdir) if points.value is None
           else drag_run(config, workdir, points.value))


if __name__ == "__main__":
  main()
