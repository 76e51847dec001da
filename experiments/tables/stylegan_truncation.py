"""StyleGAN2's truncation trick on 8x8 digits: precision, recall, FID and PPL against psi.

One run of experiments/stylegan.py (its default config, or the fields set here), then its EMA
generator's samples at each psi of `psis`, drawn and scored exactly as the run's own evaluation
draws and scores them (research/tasks/stylegan.py: `num_samples` samples, the digits sample metrics
beside real held-out digits at the same count, PPL in W in the MLP digits classifier's features),
only with truncation_psi set to that psi. Truncation pulls every w towards the tracked mean w, so
precision should rise and recall fall as psi falls (Karras et al., 2019; Kynkäänniemi et al., 2019).

Measured on the default run (3000 steps, seed 0; 1000 samples per psi; FID ratio over real held-out
digits' 2.08): psi 0.5: precision 0.740, recall 0.098, FID 58.7 (28.2x), 6 classes covered;
psi 0.7: 0.643, 0.207, 35.6 (17.1x), 8 classes; psi 1: 0.540, 0.363, 19.9 (9.6x), 10 classes;
PPL 189, 296 and 445. Precision rises and recall falls as psi falls, and classes drop out.

Run:
  python -m experiments.tables.stylegan_truncation --outdir=experiments/tables/results/stylegan_truncation
  python -m experiments.tables.stylegan_truncation --outdir=/tmp/trunc --config=experiments/tables/stylegan_truncation.py:smoke
"""

import os
import shutil
import tempfile
import time

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import harness
from experiments import stylegan as stylegan_experiment
from research.tasks import stylegan as stylegan_tasks
from research.train import ConfigError, check_positive, cli, images


def _smoke(config: ml_collections.ConfigDict) -> None:
  """The experiment's smoke run, two psis, for tests."""
  config.psis, config.steps, config.num_samples, config.smoke = (0.5, 1.0), 4, 16, True


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The psis and the run; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.psis = (0.5, 0.7, 1.0)  # truncation psi of each row
  config.steps = 0  # training steps of the run; 0: experiments/stylegan.py's
  config.num_samples = 1000  # samples scored per psi (FID's bias depends on it)
  config.seed = 0  # seed of the run (and of the samples)
  config.smoke = False  # train experiments/stylegan.py's smoke preset instead of its default (tests)
  config.workdir = ""  # keep the run here (a finished run is reused); "": a temporary directory, removed at the end
  return cli.apply_presets(config, preset, PRESETS)


def run_config(table) -> ml_collections.ConfigDict:
  """The experiment config of the table's run."""
  config = stylegan_experiment.table_config(table)
  config.seed = table.seed
  return config


def check(table) -> None:
  """Raises ConfigError on a bad field, before anything is trained."""
  if not table.psis:
    raise ConfigError("psis is empty")
  for psi in table.psis:
    if not 0.0 <= psi <= 1.0:
      raise ConfigError(f"psis must be in [0, 1], got {psi}")
  check_positive("steps", table.steps, allow_zero=True)
  stylegan_experiment.check_config(run_config(table))


def score(config, workdir: str, psis) -> tuple[dict, dict]:
  """Each psi's evaluation of the finished run in `workdir`: ({psi: metrics}, {psi: the first 64 samples})."""
  params = stylegan_experiment.saved_params(workdir)
  task = stylegan_tasks.make_task(config)
  evaluate = jax.jit(task.evaluate, static_argnums=2)
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  metrics, samples = {}, {}
  for psi in psis:
    hparams = {**{name: np.float32(value) for name, value in task.hparams.items()}, "truncation_psi": np.float32(psi)}
    arrays = jax.device_get(evaluate(params, key, None, hparams))
    metrics[psi] = task.summarize(arrays)
    samples[psi] = np.asarray(arrays["samples"][:64])
  return metrics, samples


def markdown(config, rows: dict, steps: int, total_s: float) -> str:
  lines = []
  for psi, m in rows.items():
    lines.append((f"{psi:g}", f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['fid']:.2f}",
                  f"{m['fid_ratio']:.2f}", f"{m['kid']:.2f} ± {m['kid_se']:.2f}", f"{m['classes_covered']} / 10",
                  f"{min(m['class_shares']):.3f}", f"{m['ppl']:.1f}"))
  return harness.document(
      "StyleGAN2 on 8x8 digits: the truncation trick",
      f"One run of experiments/stylegan.py ({steps} steps, seed {config.seed}); its EMA generator's "
      f"{config.num_samples} samples at each psi, scored against the training digits in the MLP digits "
      "classifier's features beside the 300 real held-out digits (precision and recall with k = 3; FID ratio: "
      "FID over the held-out digits' FID; a class is covered at 2% of the samples). PPL: the perceptual path "
      "length in W (eps 1e-4, 1st to 99th percentile) in the same features. The same samples' scores in the "
      f"convolutional digits features are in results.json (cnn_*). Whole table: {total_s:.0f} s wall on "
      f"{harness.environment()['devices']['kind']} ({os.cpu_count()} CPUs).",
      harness.table(["psi", "precision", "recall", "FID", "FID ratio", "KID x 1e3", "classes covered",
                     "smallest class share", "PPL"], lines, "rrrrrrrrr"))


def figure(samples: dict) -> Figure:
  fig = Figure(figsize=(3 * len(samples), 3.3))
  for i, (psi, images_) in enumerate(samples.items()):
    ax = fig.add_subplot(1, len(samples), i + 1)
    grid = images.image_grid(images_)  # (rows, columns, C) uint8
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(f"psi {psi:g}")
    ax.axis("off")
  fig.tight_layout()
  return fig


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains (or reuses) the run, scores it at each psi, writes stylegan_truncation.{md,png} and results.json."""
  check(config)
  start = time.perf_counter()
  workdir = config.workdir or tempfile.mkdtemp(prefix="stylegan_truncation_")
  try:
    experiment = run_config(config)
    stylegan_experiment.run(experiment, workdir)
    rows, samples = score(experiment, workdir, config.psis)
  finally:
    if not config.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  total = time.perf_counter() - start
  metrics = {"rows": {f"{psi:g}": m for psi, m in rows.items()}, "steps": int(experiment.steps)}
  return harness.write_report(outdir, "stylegan_truncation", metrics,
                              markdown(config, rows, int(experiment.steps), total), figure=figure(samples),
                              config=config, wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
