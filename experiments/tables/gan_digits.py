"""GANs against a VAE and a diffusion model on 8x8 digits: FID, precision, recall, classes covered.

Each method trains through its experiment's `run(config, workdir, members=...)` (the one
training loop), its `seeds` seeds side by side as ONE vmapped program (research.train.Members):
  GAN       experiments/gan.py's preset unconditional: its digits default before that became
            class-conditional (the DCGAN-style conv pair, spectral normalisation, TTUR, generator
            EMA, Adam 2e-4 for 3000 steps; see that module's docstring)
  WGAN-GP   the same with loss=wgan_gp (Gulrajani et al.'s image settings: lambda 10,
            n_critic 5, Adam(1e-4, beta1 0, beta2 0.9), no spectral normalisation), for
            `wgan_gp_steps` (the experiment's 3000 by default; each step makes 5 critic
            updates with a double backward pass, so this row takes about 25 minutes on 2 cores)
  PacGAN-2  the GAN with pack=2 (Lin et al.: the discriminator judges two samples at once)
  VAE       experiments/autoencoder.py (its default VAE; the NLL's importance samples cut to
            `vae_eval_k`, as this table does not report the NLL)
  diffusion experiments/diffusion.py (class-conditional DDPM, DDIM 50 steps) with a U-Net of
            `diffusion_channels`, near the GAN pair's parameter count (both counted in the table)
Every member is scored as its experiment scores a run (research.tasks.classifier.digits_sample_metrics):
`num_samples` samples against the training digits in the digits classifier's feature space,
FID, precision and recall (k = 3), and the classes holding at least 2% of the samples. Member s
is the run `python -m experiments.<name> --config.seed=s` would make with the same fields.
Reported as mean ± standard error over the members, with the FID as a multiple of real
held-out digits' (the 300-image test split against the training split, computed here).

Committed results (experiments/tables/results/gan_digits/, on a 2-core CPU shared with other
jobs): the table with `--config.vae_steps=3000 --config.diffusion_steps=1500
--config.diffusion_seeds=1 --config.wgan_gp_steps=1000` (GAN FID
3.91 ± 0.24, 1.88x held-out digits; PacGAN-2 4.57 ± 0.23, 2.20x; 10 of 10 classes in every
member), and rows rerun at their experiments' defaults with `--config.methods=...` in subdirectories:
WGAN-GP at 3000 steps (4.99 ± 0.23, 2.39x, 10 classes; wgan_gp_3000/, 1411 s), the VAE at
10000 steps (3.93 ± 0.08, 1.89x; vae_10000/) and the U-Net of 8 and 16 channels at
3000 steps (55.6 ± 5.1, 26.7x; diffusion_3000/: at the GAN's size the U-Net is far from the
experiment's default of 32 and 64 channels, 657k parameters, whose run in
experiments/tables/results/ddim/model scored 2.34; at 16 and 32 channels, 166k parameters, one
member scored 6.18, 2.97x: diffusion_16_32/). Short runs suffer from the EMA (decay 0.999, a time
constant of 1000 steps): the diffusion row at 1500 steps scored 150, WGAN-GP at 1000 steps
87.4 ± 4.2 with 8.4 classes.

Run:
  python -m experiments.tables.gan_digits --outdir=experiments/tables/results/gan_digits
  python -m experiments.tables.gan_digits --outdir=/tmp/gan_digits --config.seeds=2 --config.steps=3 \
      --config.wgan_gp_steps=2 --config.num_samples=20 --config.vae_steps=4 --config.diffusion_steps=2 \
      --config.diffusion_sample_steps=2 --config.diffusion_channels=8,16
  python -m experiments.tables.gan_digits --outdir=/tmp/gan_digits --config=experiments/tables/gan_digits.py:smoke
"""

import math
import os
import shutil
import tempfile
import time

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import autoencoder as autoencoder_experiment
from experiments import diffusion as diffusion_experiment
from experiments import gan as gan_experiment
from experiments import harness
from research.tasks import classifier as classifier_tasks
from research.train import ConfigError, Members, check_positive, cli, images

METHODS = ("GAN", "WGAN-GP", "PacGAN-2", "VAE", "diffusion")
# name -> (loss preset of experiments/gan.py, PacGAN packing degree).
GAN_METHODS = {"GAN": ("gan", 1), "WGAN-GP": ("wgan_gp", 1), "PacGAN-2": ("gan", 2)}
CHECKS = {"VAE": autoencoder_experiment.check_config, "diffusion": diffusion_experiment.check_config}
MIN_SAMPLES = 4  # precision/recall's k-th neighbour (k = 3) needs more samples than k


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A GAN row and a non-GAN row (the table's two code paths), two members of two steps, for tests."""
  config.methods, config.seeds, config.steps, config.num_samples, config.vae_steps = ("PacGAN-2", "VAE"), 2, 2, 12, 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's rows and budget; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.methods = METHODS  # rows of the table
  config.seeds = 5  # members (seeds) per method, trained as one vmapped program
  config.steps = 0  # generator updates of the GAN and PacGAN runs; 0: the unconditional preset's 3000
  # Generator updates of the WGAN-GP runs, each after 5 critic updates; 0: experiments/gan.py's digits setting,
  # 3000 (a WGAN-GP step costs about 5 GAN steps, and at 1000 its EMA generator still carries the early weights).
  config.wgan_gp_steps = 0
  config.num_samples = 1000  # samples scored per member (FID's bias depends on it)
  config.vae_steps = 0  # VAE updates; 0: experiments/autoencoder.py's
  # Importance samples of the VAE's test NLL (not reported here; the experiment's 5000 cost time this table
  # does not use).
  config.vae_eval_k = 100
  config.diffusion_steps = 0  # diffusion updates; 0: experiments/diffusion.py's
  # Members of the diffusion model (its DDIM sampling of num_samples images per member is this table's costliest part).
  config.diffusion_seeds = 2
  config.diffusion_channels = (8, 16)  # U-Net channels per resolution (8, 16: 42k parameters, near the GAN pair's 30k)
  config.diffusion_sample_steps = 0  # DDIM steps; 0: experiments/diffusion.py's
  config.workdir = ""  # keep the runs' checkpoints and samples here; "": a temporary directory, removed at the end
  return cli.apply_presets(config, preset, PRESETS)


def method_config(method: str, table):
  """The experiment config of one method at this table's config (checked by the experiment's run)."""
  if method in GAN_METHODS:
    loss, pack = GAN_METHODS[method]
    config = gan_experiment.get_config(f"{loss},unconditional")  # the GANs of this table are unconditional
    config.pack = pack
    steps = table.wgan_gp_steps if loss == "wgan_gp" else table.steps
    if steps:
      config.steps = steps
  elif method == "VAE":
    config = autoencoder_experiment.get_config()
    config.eval_k = table.vae_eval_k
    if table.vae_steps:
      config.steps = table.vae_steps
  else:
    config = diffusion_experiment.get_config()
    config.unet_channels = tuple(table.diffusion_channels)
    if table.diffusion_steps:
      config.steps = table.diffusion_steps
      if config.optimizer.warmup_steps > config.steps:  # a short (smoke) run: a tenth of it warms up
        config.optimizer.warmup_steps = config.steps // 10
    if table.diffusion_sample_steps:
      config.sample_steps = table.diffusion_sample_steps
  config.num_samples = table.num_samples
  # One log line and one checkpoint at the end: the table reads only the final evaluation.
  config.log_every = config.checkpoint_every = max(config.steps, 1)
  return config


def param_count(method: str, config) -> int:
  """Trainable parameters of the model that draws the samples (the GAN's generator and critic both counted)."""
  from research.data import load  # pylint: disable=import-outside-toplevel
  from research.tasks import autoencoder, diffusion, gan  # pylint: disable=import-outside-toplevel
  train = load("digits", "train")
  batch = {"image": train["image"][:4], "label": train["label"][:4]}
  if method in GAN_METHODS:
    task = gan.make_task(config)
  elif method == "VAE":
    task = autoencoder.make_task(config, train["image"][:4])
  else:
    task = diffusion.make_task(config, train["image"].shape[1:], 10)
  shapes = jax.eval_shape(task.init, jax.random.key(0), batch)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


def run_method(method: str, table, seeds: list[int], workdir: str) -> dict:
  """Trains one method's members as one program and collects each member's sample metrics."""
  config = method_config(method, table)
  run = {"GAN": gan_experiment.run, "WGAN-GP": gan_experiment.run, "PacGAN-2": gan_experiment.run,
         "VAE": autoencoder_experiment.run, "diffusion": diffusion_experiment.run}[method]
  directory = os.path.join(workdir, method)
  start = time.perf_counter()
  results = run(config, directory, members=Members(tuple(seeds)))
  wall = time.perf_counter() - start
  members = [m for m in results["members"] if "diverged_at_step" not in m]
  metrics = {name: [float(m[name]) for m in members] for name in ("fid", "precision", "recall", "classes_covered")}
  metrics["min_class_share"] = [float(min(m["class_shares"])) for m in members]
  first = os.path.join(directory, "member_0", "samples.npz")
  samples = np.load(first)["images"][:100] if os.path.exists(first) else None
  return {"seeds": seeds, "steps": int(config.steps), "diverged_members": len(results["members"]) - len(members),
          "params": param_count(method, config), "per_member": metrics,
          "mean_se": {name: harness.mean_se(values) for name, values in metrics.items()},
          "class_shares": [m["class_shares"] for m in members], "wall_time_s": round(wall, 1),
          "config": config.to_dict(), "samples_seed0": samples}


def describe(method: str, cell: dict) -> str:
  """What one row trained: steps and the settings that differ between the methods."""
  config = cell["config"]
  if method in GAN_METHODS:
    return (f"{cell['steps']} steps × n_critic {config['n_critic']}, batch {config['batch_size']}, "
            f"{config['loss']}, pack {config['pack']}, lr {config['optimizer']['learning_rate']:g} "
            f"(critic ×{config['disc_lr_ratio']:g}), SN {'on' if config['spectral_norm'] else 'off'}")
  if method == "VAE":
    return f"{cell['steps']} steps, batch {config['batch_size']}, latent {config['latent_dim']}, MLP {config['hidden']}"
  return (f"{cell['steps']} steps, batch {config['batch_size']}, U-Net {tuple(config['unet_channels'])}, "
          f"DDIM {config['sample_steps']} steps")


def markdown(cells: dict, reference_fid: float, num_samples: int, total_s: float) -> str:
  """The table, with the command that produced it."""
  rows = []
  for method, cell in cells.items():
    stats = cell["mean_se"]
    ratio = (stats["fid"][0] / reference_fid, stats["fid"][1] / reference_fid)
    diverged = f" ({cell['diverged_members']} diverged)" if cell["diverged_members"] else ""
    rows.append((method, f"{len(cell['seeds'])}{diverged}", harness.pm(stats["fid"], 2), harness.pm(ratio, 2),
                 harness.pm(stats["precision"], 3), harness.pm(stats["recall"], 3),
                 f"{harness.pm(stats['classes_covered'], 1)} / 10", harness.pm(stats["min_class_share"], 3),
                 f"{cell['params']:,}", f"{cell['wall_time_s']:.0f}", describe(method, cell)))
  return harness.document(
      "GANs, a VAE and a diffusion model on 8x8 digits",
      f"Each row: its members (seeds) trained as one vmapped program through its experiment's `run`; "
      f"{num_samples} samples per member scored against the 1497 training digits in the digits "
      "classifier's features (FID, precision and recall with k = 3; a class is covered when at least 2% "
      "of the samples are read as it). Mean ± standard error over the members. FID ratio: FID over real "
      f"held-out digits' FID ({reference_fid:.2f}, the 300-image test split). Whole table: {total_s:.0f} s "
      f"wall on {harness.environment()['devices']['kind']} ({os.cpu_count()} CPUs).",
      harness.table(["method", "members", "FID", "FID ratio", "precision", "recall", "classes covered",
                     "smallest class share", "parameters", "wall s", "trained"], rows),
      "Wall time covers training, sampling and scoring every member of the row (the machine's cores "
      "are shared, so times are noisy). The VAE's samples are the Bernoulli means of decoded prior "
      "draws; the diffusion model is class-conditional (labels cycling 0-9), the GANs unconditional.")


def figure(cells: dict) -> Figure:
  """The first 100 samples of each method's seed-0 member."""
  fig = Figure(figsize=(2.4 * len(cells), 2.8), dpi=100)
  axes = np.atleast_1d(fig.subplots(1, len(cells)))
  for ax, (method, cell) in zip(axes, cells.items()):
    if cell["samples_seed0"] is not None:
      ax.imshow(images.image_grid(cell["samples_seed0"], 10)[..., 0], cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"{method}\nFID {cell['per_member']['fid'][0]:.2f}", fontsize=8)
    ax.axis("off")
  fig.tight_layout()
  return fig


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field, then on any method's experiment config, before anything trains."""
  for name in ("seeds", "vae_eval_k", "diffusion_seeds"):
    check_positive(name, config[name])
  for name in ("steps", "wgan_gp_steps", "vae_steps", "diffusion_steps", "diffusion_sample_steps"):
    check_positive(name, config[name], allow_zero=True)
  if config.num_samples < MIN_SAMPLES:
    raise ConfigError(f"num_samples must be at least {MIN_SAMPLES}, got {config.num_samples}")
  harness.check_counts("diffusion_channels", config.diffusion_channels)
  harness.check_names("methods", config.methods, METHODS)
  # Every experiment config is checked too, so a bad field costs no compile.
  for method in config.methods:
    try:
      CHECKS.get(method, gan_experiment.check_config)(method_config(method, config))
    except ConfigError as e:
      raise ConfigError(f"{method}: {e}") from None


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains and scores every row; writes results.json, gan_digits.md and gan_digits.png into `outdir`."""
  check_config(config)
  methods = list(config.methods)
  seeds = list(range(config.seeds))
  workdir = config.workdir or tempfile.mkdtemp(prefix="gan_digits_")
  start = time.perf_counter()
  reference_fid = classifier_tasks.digits_reference_fids()["test_split"]
  cells = {}
  try:
    for method in methods:
      method_seeds = seeds[:config.diffusion_seeds] if method == "diffusion" else seeds
      cell = run_method(method, config, method_seeds, workdir)
      cells[method] = cell
      print(f"{method}: FID {harness.pm(cell['mean_se']['fid'], 2)}, classes "
            f"{harness.pm(cell['mean_se']['classes_covered'], 1)} ({cell['wall_time_s']} s)", flush=True)
  finally:
    if not config.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  total = time.perf_counter() - start
  text = markdown(cells, reference_fid, config.num_samples, total)
  results = {"reference_fid_test_split": reference_fid, "num_samples": config.num_samples,
             "cells": {m: {k: v for k, v in cell.items() if k != "samples_seed0"} for m, cell in cells.items()}}
  print(text)
  return harness.write_report(outdir, "gan_digits", results, text, figure=figure(cells), config=config,
                              wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
