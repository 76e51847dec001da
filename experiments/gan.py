"""GAN, WGAN (weight clipping), WGAN-GP and the hinge loss on 2D mixtures or 8x8 digits, with PacGAN packing.

Run:
  python -m experiments.gan --workdir=/tmp/gan
  python -m experiments.gan --workdir=/tmp/wgan_gp --config=experiments/gan.py:wgan_gp
  python -m experiments.gan --workdir=/tmp/pacgan --config.pack=2 --config.dataset=grid25
  python -m experiments.gan --workdir=/tmp/gan_digits --config.dataset=digits
  python -m experiments.gan --workdir=/tmp/wgan_gp_digits --config.dataset=digits --config.loss=wgan_gp
  python -m experiments.gan --workdir=/tmp/pacgan_digits --config=experiments/gan.py:unconditional --config.pack=2
  python -m experiments.gan --workdir=/tmp/gan_digits_unconditional --config=experiments/gan.py:unconditional
  python -m experiments.gan --workdir=/tmp/smoke --config=experiments/gan.py:wgan,smoke

Writes `samples.png` (a scatter of generated points, or a grid of generated digits),
`samples.npz` and `results.json`; on ring8 / grid25 it holds PacGAN's mode coverage
(`modes_captured`, `high_quality_fraction`) of `eval_samples` generated points. On digits the
run draws `num_samples` images (1000) from the EMA generator, writes exactly those to
samples.npz, and results.json holds their digits sample metrics as the diffusion experiment
reports them (research.tasks.classifier.digits_sample_metrics: FID, KID, precision and recall in
two feature spaces beside the real held-out digits' own at the same count, the share of each
class the classifier reads, `class_shares`, and `classes_covered`, classes with at least 2% of
the samples). The conditional figures below score 300 of the 1000 samples beside the 300 real
held-out digits in both spaces, the MLP classifier's and the conv classifier's (real: FID 2.08 /
13.4, precision 0.91 / 0.90); the unconditional ones were measured at 1000 samples in the MLP's
space alone (real held-out digits: FID 2.08).
On digits the GAN and the hinge loss are class-conditional by default (`conditional`; the preset
`unconditional` or `--config.conditional=False` turns it off): the generator reads a label and
the discriminator is a projection discriminator; the scored images are asked for the digits 0,
1, ..., 9 in turn, and results.json adds `label_accuracy`, how often the classifier reads the
digit asked for.

The generator and the critic share one `optimizer` block (the papers use the same optimizer
for both); the critic's learning rate is the generator's times `disc_lr_ratio` (TTUR).
n_critic, the optimizer's name, learning_rate, b1, b2 and schedule and the fields of
IMAGE_SETTINGS follow the loss and the dataset (LOSS_SETTINGS and POINT_SETTINGS on 2D
points, IMAGE_SETTINGS on digits) unless set explicitly: `--config.loss=wgan_gp` and the
preset `--config=experiments/gan.py:wgan_gp` are the same run, `--config.dataset=digits`
alone gives the image settings, and `--config.loss=wgan_gp --config.optimizer.learning_rate=3e-4`
changes that run's learning rate only.

Digits, class-conditional (the default). The unconditional pair (below) scored precision 0.42 /
0.36 (real held-out digits 0.91 / 0.90): many of its samples were blobs that are no digit. What
mattered, each change alone from the chosen settings, seed 0, 1000 samples scored at 300 (FID
ratio to real held-out digits, MLP / conv space; precision, MLP / conv; recall, MLP / conv; label
accuracy; the run's wall seconds on 2 cores shared with other jobs, load 3-8, so only roughly
comparable); every run covered all 10 classes with at least 9% each (the unconditional one 7.1%):
  chosen: conditional (projection critic), Adam(8e-4, 0.5),
          6000 steps, the rest as the unconditional pair       0.50 / 0.52  0.89 / 0.89  0.84 / 0.85  0.98  243
  unconditional                                                1.34 / 1.76  0.58 / 0.57  0.92 / 0.94    -   275
  3000 steps                                                   0.76 / 0.77  0.81 / 0.83  0.82 / 0.84  0.99  166
  Adam 4e-4 / 2e-4                                             0.64 / 0.66  0.81 / 0.83  0.85 / 0.85  0.99  209
                                                               0.65 / 0.76  0.76 / 0.76  0.81 / 0.84  0.99  208
  Adam 1.6e-3                                                  0.62 / 0.67  0.88 / 0.90  0.82 / 0.86  0.98  305
and from the conditional pair at the unconditional one's Adam 2e-4 and 3000 steps (0.80 / 1.02,
precision 0.69 / 0.65, recall 0.80 / 0.86, 139 s; the unconditional pair there: 2.67 / 2.75, 0.42 /
0.36, 0.92 / 0.93, 120 s), each change alone:
  the hinge loss                                               0.82 / 1.05  0.68 / 0.59  0.80 / 0.81  0.97  133
  32 channels (2.6x the time per step)                         0.71 / 0.82  0.77 / 0.72  0.84 / 0.85  0.98  255
So the labels were what turned the blobs into digits (precision 0.58 to 0.89 in the MLP's space
at the chosen rate and length, 0.42 to 0.69 at the former ones); the larger rate and the longer
run add the rest (0.69 to 0.89 together; either alone undone costs 0.08 to 0.13); at 1.6e-3 the
precision holds but the FID rises. The hinge loss and twice the channels did no better per
second. The EMA's decay does not matter below 9000 steps: the loop warms it up as min(d, (1 + t) /
(10 + t)), which stays under 0.999 until step 8990, so 0.9995 instead of 0.999 (conditional, Adam
2e-4, 6000 steps) scored the same to the last digit. The hinge loss at the chosen settings
(`--config.loss=hinge`, seed 0): 0.65 / 0.62, precision 0.89 / 0.91, recall 0.81 / 0.82, label
accuracy 0.99, 303 s at load 7-8.
The default command, `python -m experiments.gan --workdir=/tmp/g --config.dataset=digits
--config.seed=S`: S = 0 the chosen row above; S = 1 FID ratios 0.45 / 0.51, precision 0.86 / 0.86,
recall 0.86 / 0.87, all 10 classes (9.8% at least), label accuracy 0.99, 272 s at 31 steps/s
(load 7-9; about 36 steps/s at load 3-5).

Digits, unconditional (the preset `unconditional`: the default before the conditional pair, which
experiments/tables/gan_digits.py's GAN rows train). The two-layer conv pair with the points'
settings (latent 2, Adam(1e-3, 0.5), batch 128, no EMA: the preset `small_conv`, this
experiment's digits run before the image settings) drops classes: among its 1000 samples the
classifier reads no 0, no 5 and 0.6% 4s, FID 34.2 (16x real held-out digits). What mattered,
each change alone from the chosen settings, seed 0, 3000 steps, 1000 samples (FID ratio: FID /
2.08; classes covered; the smallest class share; the run's wall seconds on a 2-core CPU shared
with other jobs (load 8-13), so only roughly comparable):
  chosen: DCGAN-style pair, 16 channels, latent 32, spectral norm,
          Adam(2e-4, 0.5), critic at 2x (TTUR), batch 64, EMA 0.999    2.28  10  0.072   223
  latent 2 instead of 32                                            33.1    6  0.000   243
  no EMA: the last generator instead of the average                  3.81  10  0.081   237
  no spectral normalisation                                          2.55  10  0.076   418
  TTUR off: the critic at the generator's 2e-4                       2.32  10  0.072   420
  1500 steps (5 seeds, gan_digits table with --steps=1500)         8.40  10    -     462
So the 2-dimensional latent was what dropped the classes (alone it takes the chosen run from 10
classes to 6 and from 2.3x to 33x), and the EMA of the generator cuts the last iterate's FID by
40%. At 1500 steps the EMA (decay 0.999, a time constant of 1000 steps) still carries the early
generators. Spectral normalisation and TTUR help a little here. A first version of the pair (32
channels; in the critic a stride-1 3x3 conv and two 4x4 stride-2 convs) made 1.5 steps/s (5.4
at 16 channels) where the two-layer pair made 57 in the same process: too slow for a run of a
few minutes. The chosen pair at 16 channels has 30k parameters and 40% of the two-layer pair's
FLOPs per step (7.9e7 against 2.0e8).

`python -m experiments.gan --workdir=/tmp/g --config=experiments/gan.py:unconditional
--config.seed=S`: S = 0 FID 4.75 (2.28x), S = 1 FID 3.75 (1.80x); 10 of 10 classes each, the
smallest class share 7.2% and 6.0%, precision 0.40 / 0.40, recall 0.87 / 0.89; 3000 steps at
27 steps/s on the shared machine (under 4 minutes with compilation and scoring). WGAN-GP with
Gulrajani et al.'s image settings (`--config.loss=wgan_gp`: lambda 10, n_critic 5, Adam(1e-4, 0,
0.9), no spectral norm, seed 0): FID 4.76 (2.29x), 10 classes, smallest share 6.6%, in 3000 steps
(7 steps/s, 516 s; each step makes 5 critic updates with a double backward pass). PacGAN-2
(`--config=experiments/gan.py:unconditional --config.pack=2`, the GAN's settings as in Lin et
al.): FID 4.16 (2.00x), 10 classes, smallest share 8.2%. The same pair conditional
(`--config=experiments/gan.py:unconditional --config.conditional=True`): FID 1.41 (0.68x), 10
classes, smallest share 9.4%, label accuracy 0.96.

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
from research.tasks import gan as gan_tasks
from research.train import base_config, check_common, cli, train

# The settings that follow `config.loss` (and, for images, `config.dataset`): each field holds a
# reference to the loss and the dataset and reads its value here until something sets it (a preset,
# --config.<field>=..., or code), after which it keeps what it was given. So `--config.loss=wgan_gp`
# trains with the WGAN-GP column, and `--config.loss=wgan_gp --config.optimizer.learning_rate=3e-4`
# with that column but 3e-4.
# On 2D points (ring8, grid25, swissroll):
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
    # The hinge loss with the GAN's optimizer.
    "hinge": {"n_critic": 1, "optimizer.name": "adam", "optimizer.learning_rate": 1e-3, "optimizer.b1": 0.5,
              "optimizer.b2": 0.999, "optimizer.schedule": "constant"},
}
# What the fields that LOSS_SETTINGS leaves out read on 2D points, whatever the loss.
POINT_SETTINGS = {"steps": 3000, "batch_size": 128, "latent_dim": 2, "gp_weight": 0.1, "ema_decay": 0.0,
                  "spectral_norm": False, "disc_lr_ratio": 1.0, "conv_features": 32, "conditional": False}
# On 8x8 digits (the conv pair), every following field per loss (measured in the module docstring).
IMAGE_SETTINGS = {
    # Class-conditional (a projection discriminator), DCGAN's Adam(beta1 0.5) at 8e-4, TTUR (critic at 2x), spectral
    # normalisation, generator EMA, 6000 steps.
    "gan": {"n_critic": 1, "optimizer.name": "adam", "optimizer.learning_rate": 8e-4, "optimizer.b1": 0.5,
            "optimizer.b2": 0.999, "optimizer.schedule": "constant", "steps": 6000, "batch_size": 64,
            "latent_dim": 32, "gp_weight": 10.0, "ema_decay": 0.999, "spectral_norm": True, "disc_lr_ratio": 2.0,
            "conv_features": 16, "conditional": True},
    # Arjovsky et al.'s RMSProp 5e-5 with the image pair (not measured on digits).
    "wgan": {"n_critic": 5, "optimizer.name": "rmsprop", "optimizer.learning_rate": 5e-5, "optimizer.b1": 0.0,
             "optimizer.b2": 0.99, "optimizer.schedule": "constant", "steps": 3000, "batch_size": 64,
             "latent_dim": 32, "gp_weight": 10.0, "ema_decay": 0.999, "spectral_norm": False, "disc_lr_ratio": 1.0,
             "conv_features": 16, "conditional": False},
    # Gulrajani et al.'s image settings: Adam(1e-4, beta1 0, beta2 0.9), lambda 10, n_critic 5, unconditional.
    "wgan_gp": {"n_critic": 5, "optimizer.name": "adam", "optimizer.learning_rate": 1e-4, "optimizer.b1": 0.0,
                "optimizer.b2": 0.9, "optimizer.schedule": "constant", "steps": 3000, "batch_size": 64,
                "latent_dim": 32, "gp_weight": 10.0, "ema_decay": 0.999, "spectral_norm": False,
                "disc_lr_ratio": 1.0, "conv_features": 16, "conditional": False},
}
# The hinge loss with the GAN's settings (Miyato & Koyama pair it with spectral normalisation and the projection
# discriminator).
IMAGE_SETTINGS["hinge"] = dict(IMAGE_SETTINGS["gan"])
# The digits GAN before it was class-conditional (the preset `unconditional`): what experiments/tables/gan_digits.py's
# GAN and PacGAN-2 rows train.
UNCONDITIONAL = {"optimizer.learning_rate": 2e-4, "steps": 3000}
FOLLOWING = tuple(IMAGE_SETTINGS["gan"])  # every field that follows the loss and the dataset


def setting(field: str, loss: str, dataset: str):
  """The value `field` follows for this loss and dataset (None for an unknown loss or dataset).

  Args:
    field: a name of FOLLOWING (dotted for the optimizer's).
    loss: a name of gan.LOSSES.
    dataset: a dataset name.

  Returns:
    The value, or None: check_config names the bad loss or dataset before anything uses it.
  """
  if gan.is_image_dataset(dataset):
    return IMAGE_SETTINGS.get(loss, {}).get(field)
  if dataset not in gan.POINT_DATASETS or loss not in LOSS_SETTINGS:
    return None
  return LOSS_SETTINGS[loss].get(field, POINT_SETTINGS.get(field))


def _setting(field: str, _, loss: str, dataset: str):
  return setting(field, loss, dataset)


def _follow_loss(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Makes every FOLLOWING field of `config` a reference that reads its value from the loss and dataset.

  A reference stops following once it is set, so whatever a user sets explicitly survives a
  later change of the loss or the dataset, in either order on the command line.

  Args:
    config: a config with `loss`, `dataset` and every field FOLLOWING names.

  Returns:
    `config`, changed in place.
  """
  loss, dataset = config.get_ref("loss"), config.get_ref("dataset")
  for field, value in IMAGE_SETTINGS["gan"].items():
    *parents, name = field.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    kind = type(value)
    # A derived reference, built as ml_collections builds `ref + 1` (its exported _Op): the op
    # reads the loss and the dataset and ignores the reference's own value, an unused default of
    # the field's type.
    op = config_dict._Op(functools.partial(_setting, field), [loss, dataset])  # pylint: disable=protected-access
    node[name] = ml_collections.FieldReference(kind(), field_type=kind, op=op)
  return config


def _loss(name: str):
  """The preset of one loss: sets config.loss, which the FOLLOWING fields follow."""

  def edit(config: ml_collections.ConfigDict) -> None:
    config.loss = name

  return edit


def _mode_table(config: ml_collections.ConfigDict) -> None:
  """The sizes of experiments/tables/gan_modes.py: the VEEGAN/PacGAN kinds of layers at a CPU budget.

  Each loss's learning rate is annealed with a cosine so short runs end sharp.
  """
  config.batch_size = 64
  config.disc_width = 64
  config.optimizer.schedule = "warmup_cosine"


def _small_conv(config: ml_collections.ConfigDict) -> None:
  """The digits GAN before the image settings, which experiments/bench/vs_torch.py's PyTorch peer mirrors.

  The two-layer conv pair with the 2D points' settings (latent 2, Adam 1e-3 beta1 0.5, batch 128, no EMA).
  """
  config.dataset = "digits"
  config.conv_arch = "small"
  for field in FOLLOWING:
    value = setting(field, config.loss, "ring8")
    *parents, name = field.split(".")
    (config.optimizer if parents else config)[name] = value


def _unconditional(config: ml_collections.ConfigDict) -> None:
  """The digits GAN before it was class-conditional, which experiments/tables/gan_digits.py's GAN rows train.

  Unconditional, and with the GAN's or the hinge loss Adam at 2e-4 for 3000 steps (UNCONDITIONAL); the other
  losses' image settings are unconditional already.
  """
  config.dataset = "digits"
  config.conditional = False
  if IMAGE_SETTINGS.get(config.loss) == IMAGE_SETTINGS["gan"]:
    config.optimizer.learning_rate = UNCONDITIONAL["optimizer.learning_rate"]
    config.steps = UNCONDITIONAL["steps"]


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Tiny networks, a few steps and few samples, for tests."""
  config.steps = 6
  config.batch_size = 32
  config.checkpoint_every = 3
  config.log_every = 3
  config.gen_width = config.disc_width = 16
  config.gen_depth = config.disc_depth = 1
  config.maxout_pieces = 2
  config.conv_features = 4
  config.eval_samples = 200
  config.num_samples = 40


# A loss name first (the later presets read config.loss), then the sizes; any combination, e.g. "wgan_gp,smoke".
PRESETS = {**{loss: _loss(loss) for loss in gan.LOSSES}, "mode_table": _mode_table, "small_conv": _small_conv,
           "unconditional": _unconditional, "smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; `preset` is a comma-separated list of PRESETS (a loss, mode_table, small_conv, unconditional,
  smoke)."""
  config = base_config()
  config.dataset = "ring8"  # ring8, grid25, swissroll (2D points: MLP pair) or digits (8x8: conv pair)
  config.steps = 3000  # generator updates (each after n_critic critic updates; follows the loss and data)
  config.batch_size = 128  # samples per critic (and generator) update (follows the loss and data)
  config.checkpoint_every = 1000  # save a checkpoint every this many steps (and at the end)
  config.log_every = 250  # write metrics and a progress line every this many steps
  config.loss = "gan"  # gan (non-saturating), wgan (weight clipping), wgan_gp (gradient penalty) or hinge
  config.n_critic = 1  # critic updates per generator update (follows the loss: LOSS_SETTINGS)
  config.pack = 1  # PacGAN packing degree m: the discriminator judges m samples at once
  config.latent_dim = 2  # dimension of the Gaussian latent code z (follows the data: 2 points, 32 images)
  config.gen_width = 128  # units per hidden layer of the MLP generator
  config.gen_depth = 3  # hidden ReLU layers of the MLP generator
  config.disc_width = 128  # units per hidden layer of the MLP discriminator
  config.disc_depth = 2  # hidden layers of the MLP discriminator
  config.disc_layer = "maxout"  # the MLP discriminator's hidden layers: maxout (LinearMaxout) or relu
  config.maxout_pieces = 5  # linear pieces per LinearMaxout unit
  config.conv_arch = "dcgan"  # digits: the conv pair, dcgan (labels, spectral norm) or small (see small_conv)
  config.conv_features = 32  # base channel count of the conv pair (digits; follows the data: 16 dcgan, 32 small_conv)
  config.spectral_norm = False  # conv critic: spectral normalisation of every layer (follows the loss and data)
  config.conditional = False  # digits: class-conditional generator, projection critic (follows the loss and data)
  config.disc_lr_ratio = 1.0  # critic learning rate / generator learning rate (TTUR; follows the loss and data)
  config.clip = 0.01  # wgan: critic weights are clipped to [-clip, clip]
  config.gp_weight = 0.1  # wgan_gp: lambda of the penalty (0.1 on points as Gulrajani et al.'s toy code, 10 on images)
  config.eval_samples = 2500  # generated points scored for mode coverage (and drawn in the scatter)
  config.num_samples = 1000  # digits: generated images scored (FID, precision, recall) and written to samples.npz
  config.ema_decay = 0.0  # generator EMA, used by evaluation and samples (follows the data: 0.999 on images)
  # The optimizer's name, learning_rate, b1, b2 and schedule follow the loss (and the data) too.
  _follow_loss(config)

  losses = [name for name in preset.split(",") if name in gan.LOSSES]
  if len(losses) > 1:
    raise ValueError(f"presets name several losses: {losses}")
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on bad input, before anything is compiled or written."""
  gan_tasks.check_config(config)
  check_common(config)


# What experiments.sample / experiments.evaluate may change in a finished run (they train nothing).
SAMPLING_FIELDS = ("num_samples", "eval_samples")


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  return gan_tasks.metric_names(config)


def run(config: ml_collections.ConfigDict, workdir: str, members=None) -> dict:
  """Trains the GAN described by `config` in `workdir`; returns what results.json holds.

  `members` (research.train.Members) trains a sweep of runs as one program (experiments/sweep.py).
  """
  check_config(config)
  task = gan_tasks.make_task(config)
  return train(task, config, workdir, data_lib.load(config.dataset, "train"), members=members).results


if __name__ == "__main__":
  cli.main(__file__, run)
