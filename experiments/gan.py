"""GAN, WGAN (weight clipping) and WGAN-GP on 2D mixtures or 8x8 digits, with PacGAN packing.

Run:
  python -m experiments.gan --workdir=/tmp/gan
  python -m experiments.gan --workdir=/tmp/wgan_gp --config=experiments/gan.py:wgan_gp
  python -m experiments.gan --workdir=/tmp/pacgan --config.pack=2 --config.dataset=grid25
  python -m experiments.gan --workdir=/tmp/gan_digits --config.dataset=digits
  python -m experiments.gan --workdir=/tmp/smoke --config=experiments/gan.py:wgan,smoke

Writes `samples.png` (a scatter of generated points, or a grid of generated digits) and
`results.json`; on ring8 / grid25 it holds PacGAN's mode coverage (`modes_captured`,
`high_quality_fraction`) of `eval_samples` generated points.

The generator and the critic share one `optimizer` block (the papers use the same
optimizer for both). Each loss comes with its paper's optimizer and n_critic
(PAPER_SETTINGS below): a preset named after the loss applies them
(`--config=experiments/gan.py:wgan_gp`), while `--config.loss=wgan_gp` alone changes the loss
only, which the run then reports as a warning.
"""

import ml_collections
from absl import logging

from research import data as data_lib
from research.models import gan
from research.train import base_config, check_common, cli, train

# Per loss: the optimizer and critic updates its paper uses. The `gan` entry is this
# codebase's choice for the toy problems (Adam with beta1 = 0.5, as in DCGAN).
PAPER_SETTINGS = {
    "gan": {"n_critic": 1, "optimizer": {"name": "adam", "learning_rate": 1e-3, "b1": 0.5, "b2": 0.999}},
    # Arjovsky et al.: RMSProp 5e-5, n_critic 5 (decay 0.99 as in their reference code).
    "wgan": {"n_critic": 5, "optimizer": {"name": "rmsprop", "learning_rate": 5e-5, "b1": 0.0, "b2": 0.99}},
    # Gulrajani et al.: Adam(1e-4, beta1 0, beta2 0.9), n_critic 5.
    "wgan_gp": {"n_critic": 5, "optimizer": {"name": "adam", "learning_rate": 1e-4, "b1": 0.0, "b2": 0.9}},
}
PRESETS = ("smoke", "mode_table") + gan.LOSSES


def apply_loss_settings(config: ml_collections.ConfigDict, loss: str) -> ml_collections.ConfigDict:
  """Sets `config.loss` and its paper's n_critic and optimizer fields (PAPER_SETTINGS)."""
  settings = PAPER_SETTINGS[loss]
  config.loss = loss
  config.n_critic = settings["n_critic"]
  for field, value in settings["optimizer"].items():
    config.optimizer[field] = value
  return config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; `preset` is a comma-separated list of PRESETS (a loss name, mode_table, smoke)."""
  config = base_config()
  config.dataset = "ring8"  # ring8, grid25, swissroll (2D points: MLP pair) or digits (8x8: conv pair)
  config.steps = 3000  # generator updates (each after n_critic critic updates)
  config.batch_size = 128  # samples per critic (and generator) update
  config.checkpoint_every = 1000  # save a checkpoint every this many steps (and at the end)
  config.log_every = 250  # write metrics and a progress line every this many steps
  config.loss = "gan"  # gan (non-saturating), wgan (weight clipping) or wgan_gp (gradient penalty)
  config.n_critic = 1  # critic updates per generator update (set by the loss presets)
  config.pack = 1  # PacGAN packing degree m: the discriminator judges m samples at once
  config.latent_dim = 2  # dimension of the Gaussian latent code z
  config.gen_width = 128  # units per hidden layer of the MLP generator
  config.gen_depth = 3  # hidden ReLU layers of the MLP generator
  config.disc_width = 128  # units per hidden layer of the MLP discriminator
  config.disc_depth = 2  # hidden LinearMaxout layers of the MLP discriminator
  config.maxout_pieces = 5  # linear pieces per LinearMaxout unit
  config.conv_features = 32  # base channel count of the conv pair (digits)
  config.clip = 0.01  # wgan: critic weights are clipped to [-clip, clip]
  config.gp_weight = 10.0  # wgan_gp: lambda of the gradient penalty
  config.eval_samples = 2500  # generated points scored for mode coverage (and drawn in the scatter)
  apply_loss_settings(config, "gan")

  tokens = [t for t in preset.split(",") if t]
  unknown = [t for t in tokens if t not in PRESETS]
  if unknown:
    raise ValueError(f"unknown preset {unknown[0]!r}; choose from: {', '.join(PRESETS)}")
  losses = [t for t in tokens if t in gan.LOSSES]
  if len(losses) > 1:
    raise ValueError(f"presets name several losses: {losses}")
  if losses:
    apply_loss_settings(config, losses[0])
  if "mode_table" in tokens:
    # The sizes of experiments/tables/gan_modes.py: the VEEGAN/PacGAN kinds of layers at a
    # CPU budget, each loss's learning rate annealed with a cosine so short runs end sharp.
    config.batch_size = 64
    config.disc_width = 64
    config.optimizer.schedule = "warmup_cosine"
  if "smoke" in tokens:
    config.steps = 6
    config.batch_size = 32
    config.checkpoint_every = 3
    config.log_every = 3
    config.gen_width = config.disc_width = 16
    config.gen_depth = config.disc_depth = 1
    config.maxout_pieces = 2
    config.conv_features = 4
    config.eval_samples = 200
  return config


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on bad input and warns when a loss runs without its paper's settings."""
  gan.check_config(config)
  check_common(config)
  settings = PAPER_SETTINGS[config.loss]
  differing = {k: v for k, v in settings["optimizer"].items() if config.optimizer[k] != v}
  if config.n_critic != settings["n_critic"]:
    differing["n_critic"] = settings["n_critic"]
  if differing:
    logging.warning("loss %s runs with other settings than its paper's %s (the %s preset sets them)",
                    config.loss, differing, config.loss)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the GAN described by `config` in `workdir`; returns what results.json holds."""
  check_config(config)
  task = gan.make_task(config)
  return train(task, config, workdir, data_lib.load(config.dataset, "train")).results


if __name__ == "__main__":
  cli.main(__file__, run)
