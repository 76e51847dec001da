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
optimizer for both). n_critic and the optimizer's name, learning_rate, b1, b2 and schedule
follow the loss (LOSS_SETTINGS below) unless set explicitly: `--config.loss=wgan_gp` and the
preset `--config=experiments/gan.py:wgan_gp` are the same run, and
`--config.loss=wgan_gp --config.optimizer.learning_rate=3e-4` changes that run's learning rate only.

WGAN-GP's settings: on ring8 the paper's (Adam 1e-4, beta1 0, lambda 10, constant rate, n_critic 5)
need far more than the default 3000 generator steps: in 3000 they capture 0 of 8 modes (0% high
quality) for each of the seeds 11, 23, 37 and 0. What mattered, each change alone from the
chosen settings, 3000 steps, seeds 11 and 23 (modes; % high-quality samples):
  chosen: lambda 0.1, Adam 2e-3, beta1 0.5, beta2 0.9, cosine to 0  8, 8;  95, 96
  lambda 10 (the paper's images) instead of 0.1 (its toy code)      2, 8;   1, 75
  lambda 1                                                          8, 8;  92, 95
  a constant learning rate instead of the cosine                    8, 8;  75, 30
  learning rate 1e-4 / 1e-3 / 5e-3                                  8, 8;  58, 60 / 92, 93 / 95, 97
  beta1 0 instead of 0.5 (both at 1e-3)                             8, 8;  92, 92 / 92, 93
So a small lambda brings all modes within the budget and the annealed rate makes the samples
sharp. The default nets (LinearMaxout critic, batch 128) suffice; Gulrajani et al.'s ReLU critic
(`--config.disc_layer=relu`, 3 x 256 with a 3 x 256 generator, batch 256) did a little better at
1500 steps at 1e-3 (89% against 85% high quality, 8 modes each) for a fifth more time per step.
`python -m experiments.gan --workdir=/tmp/w --config.loss=wgan_gp --config.seed=S` for
S = 11, 23, 37, 0 captured 8 of 8 modes each, with 95.5, 96.2, 95.1 and 93.6% high-quality
samples, in about 2 minutes on one CPU core (the GAN's default run: 30 s).
"""

import functools

import ml_collections
from ml_collections import config_dict

from research import data as data_lib
from research.models import gan
from research.train import base_config, check_common, cli, train

# The settings that follow `config.loss`: each field holds a reference to the loss and reads
# its value here until something sets it (a preset, --config.<field>=..., or code), after which it
# keeps what it was given. So `--config.loss=wgan_gp` trains with the WGAN-GP column, and
# `--config.loss=wgan_gp --config.optimizer.learning_rate=3e-4` with that column but 3e-4.
LOSS_SETTINGS = {
    # Adam with beta1 = 0.5 as in DCGAN: this codebase's choice for the toy problems.
    "gan": {"n_critic": 1, "optimizer.name": "adam", "optimizer.learning_rate": 1e-3, "optimizer.b1": 0.5,
            "optimizer.b2": 0.999, "optimizer.schedule": "constant"},
    # Arjovsky et al.: RMSProp 5e-5, n_critic 5 (decay 0.99 as in their reference code).
    "wgan": {"n_critic": 5, "optimizer.name": "rmsprop", "optimizer.learning_rate": 5e-5, "optimizer.b1": 0.0,
             "optimizer.b2": 0.99, "optimizer.schedule": "constant"},
    # Gulrajani et al.'s toy experiments (Adam beta1 0.5, beta2 0.9, n_critic 5; their lambda 0.1
    # is gp_weight's default) with a larger, cosine-annealed learning rate so that the default
    # 3000 steps suffice (measured in the module docstring).
    "wgan_gp": {"n_critic": 5, "optimizer.name": "adam", "optimizer.learning_rate": 2e-3, "optimizer.b1": 0.5,
                "optimizer.b2": 0.9, "optimizer.schedule": "warmup_cosine"},
}
PRESETS = ("smoke", "mode_table") + gan.LOSSES


def _loss_setting(field: str, _, loss: str):
  # An unknown loss reads as None: check_config names the bad loss before anything uses the field.
  return LOSS_SETTINGS.get(loss, {}).get(field)


def _follow_loss(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Makes every LOSS_SETTINGS field of `config` a reference that reads its value from `config.loss`.

  A reference stops following the loss once it is set, so whatever a user sets explicitly
  survives a later change of the loss, in either order on the command line.

  Args:
    config: a config with `loss` and every field LOSS_SETTINGS names.

  Returns:
    `config`, changed in place.
  """
  loss = config.get_ref("loss")
  for field, value in LOSS_SETTINGS["gan"].items():
    *parents, name = field.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    kind = type(value)
    # A derived reference, built as ml_collections builds `ref + 1` (its exported _Op): the op
    # reads the loss and ignores the reference's own value, an unused default of the field's type.
    op = config_dict._Op(functools.partial(_loss_setting, field), [loss])  # pylint: disable=protected-access
    node[name] = ml_collections.FieldReference(kind(), field_type=kind, op=op)
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
  config.n_critic = 1  # critic updates per generator update (follows the loss: LOSS_SETTINGS)
  config.pack = 1  # PacGAN packing degree m: the discriminator judges m samples at once
  config.latent_dim = 2  # dimension of the Gaussian latent code z
  config.gen_width = 128  # units per hidden layer of the MLP generator
  config.gen_depth = 3  # hidden ReLU layers of the MLP generator
  config.disc_width = 128  # units per hidden layer of the MLP discriminator
  config.disc_depth = 2  # hidden layers of the MLP discriminator
  config.disc_layer = "maxout"  # the MLP discriminator's hidden layers: maxout (LinearMaxout) or relu
  config.maxout_pieces = 5  # linear pieces per LinearMaxout unit
  config.conv_features = 32  # base channel count of the conv pair (digits)
  config.clip = 0.01  # wgan: critic weights are clipped to [-clip, clip]
  config.gp_weight = 0.1  # wgan_gp: lambda of the gradient penalty (Gulrajani et al.'s toy value)
  config.eval_samples = 2500  # generated points scored for mode coverage (and drawn in the scatter)
  # The optimizer's name, learning_rate, b1, b2 and schedule follow the loss too.
  _follow_loss(config)

  tokens = [t for t in preset.split(",") if t]
  unknown = [t for t in tokens if t not in PRESETS]
  if unknown:
    raise ValueError(f"unknown preset {unknown[0]!r}; choose from: {', '.join(PRESETS)}")
  losses = [t for t in tokens if t in gan.LOSSES]
  if len(losses) > 1:
    raise ValueError(f"presets name several losses: {losses}")
  if losses:
    config.loss = losses[0]
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
  """Raises ConfigError on bad input, before anything is compiled or written."""
  gan.check_config(config)
  check_common(config)


def run(config: ml_collections.ConfigDict, workdir: str, members=None) -> dict:
  """Trains the GAN described by `config` in `workdir`; returns what results.json holds.

  `members` (research.train.Members) trains a sweep of runs as one program (experiments/sweep.py).
  """
  check_config(config)
  task = gan.make_task(config)
  return train(task, config, workdir, data_lib.load(config.dataset, "train"), members=members).results


if __name__ == "__main__":
  cli.main(__file__, run)
