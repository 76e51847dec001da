"""AE, denoising AE or VAE (ELBO or IWAE bound) on images, trained by research.train.

Run:
  python -m experiments.autoencoder --workdir=/tmp/vae
  python -m experiments.autoencoder --workdir=/tmp/iwae --config.objective=iwae --config.k=5
  python -m experiments.autoencoder --workdir=/tmp/dae --config.model=dae --config.corruption=mask
  python -m experiments.autoencoder --workdir=/tmp/smoke --config=experiments/autoencoder.py:smoke
  python -m experiments.autoencoder --workdir=/scratch/runs/iwae --config=experiments/autoencoder.py:iwae_mnist

Writes into the workdir: checkpoints, TensorBoard events, reconstructions.png (test images
and their reconstructions in alternating rows; for the DAE: clean, corrupted, denoised),
samples.png (VAE: Bernoulli means of decoded prior samples) and results.json with
test_nll_nats and nll_k (VAE) or the test reconstruction errors (AE/DAE). On digits the VAE's
`num_samples` prior samples are scored as the GAN's and the diffusion model's are
(research.tasks.classifier.digits_sample_metrics: FID, KID, precision and recall in two feature
spaces beside the real held-out digits' own, and the share of each class); samples.npz and
samples.png then hold those samples.
"""

import ml_collections
import numpy as np

from research import data as data_lib
from research.tasks import autoencoder
from research.train import ConfigError, base_config, check_common, check_workdir, cli, train


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Shrinks the model, the run and the evaluation for tests."""
  config.steps = 20
  config.batch_size = 32
  config.latent_dim = 4
  config.hidden = (32,)
  config.eval_k = 16
  config.num_samples = 40
  config.checkpoint_every = 10
  config.log_every = 10


def _iwae_mnist(config: ml_collections.ConfigDict) -> None:
  """Burda et al. (2016)'s IWAE with one stochastic layer and k = 50 on MNIST (GPU/TPU hosts).

  784-200-200-50 tanh encoder and a mirrored Bernoulli decoder, the IWAE bound with k = 50
  samples, batch 20, Adam (epsilon 1e-4), scored by importance sampling with 5,000 samples:
  the paper's test NLL 84.78 nats (Table 1; 82.90 with two stochastic layers, which this
  model does not have). The paper trains 3^i passes at 1e-3 * 10^(-i/7) for i = 0..7, 3,280
  passes in all: 9,840,000 updates of 20 of MNIST's 60,000 training images; here a cosine
  from 1e-3 to 1e-4 over those updates stands for the staircase.
  """
  config.dataset = "mnist"
  config.model, config.objective, config.k = "vae", "iwae", 50
  config.latent_dim, config.hidden = 50, (200, 200)
  config.eval_k = 5000
  config.steps, config.batch_size = 9_840_000, 20
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule, config.optimizer.final_lr_fraction = "warmup_cosine", 0.1
  config.log_every, config.checkpoint_every = 10_000, 300_000


PRESETS = {"smoke": _smoke, "iwae_mnist": _iwae_mnist}
# Image shapes `plan_inputs` knows without loading the dataset.
IMAGE_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1)}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (the VAE on bundled digits, a few minutes on 2 CPU cores).

  Presets: "smoke" for tests; "iwae_mnist" is the IWAE paper's one-stochastic-layer k = 50
  model on MNIST at its scale (GPU/TPU hosts; `python -m launch plan autoencoder` prices it).
  """
  config = base_config()
  config.model = "vae"  # one of: ae, dae, vae
  config.latent_dim = 16  # size of the code (AE/DAE) or of the Gaussian latent (VAE)
  config.hidden = (100, 100)  # encoder tanh layer widths; the decoder mirrors them (IWAE paper, 784 pixels: 200, 200)
  config.corruption = "gaussian"  # DAE corruption: gaussian (additive noise) or mask (pixels set to 0)
  config.noise_level = 0.3  # DAE: Gaussian noise std, or masking probability
  config.kl_weight = 1.0  # VAE with the ELBO: beta, the KL term's weight (1: the ELBO; a beta-VAE otherwise)
  config.objective = "elbo"  # VAE training bound: elbo (analytic KL) or iwae (log-mean-exp of k weights)
  config.k = 1  # samples per image in the training bound
  config.eval_k = 5000  # importance samples per test image for test_nll_nats (IWAE paper: 5000)
  config.num_samples = 1000  # VAE on digits: prior samples scored (FID, precision, recall) and written; 0: none
  config.steps = 10_000  # optimizer updates (about 670 epochs of the 1497 training digits)
  config.batch_size = 100  # images per step
  config.optimizer.eps = 1e-4  # Adam epsilon as in the IWAE paper
  config.checkpoint_every = 5000  # save a checkpoint every this many steps (and at the end)
  config.log_every = 1000  # metrics and a progress line every this many steps
  config.steps_per_call = 25  # steps per compiled call: a model this small is dispatch-bound (bench/vs_torch.py)
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  """Raises ConfigError on bad input, before anything is loaded, compiled or written."""
  check_common(config)
  autoencoder.check_config(config)
  # Precision/recall's k-th nearest neighbour (k = 3) needs more samples than k.
  if config.num_samples != 0 and config.num_samples < 4:
    raise ConfigError(f"num_samples must be 0 (no sample metrics) or at least 4, got {config.num_samples}")


def plan_inputs(config):
  """The task and one step's batch of `config` for `python -m launch plan`: shapes only, no images.

  Raises:
    ConfigError: for a dataset whose image shape is not in IMAGE_SHAPES.
  """
  if config.dataset not in IMAGE_SHAPES:
    raise ConfigError(f"launch plan knows the image shapes of {', '.join(IMAGE_SHAPES)}, not of "
                      f"dataset {config.dataset!r}")
  shape = IMAGE_SHAPES[config.dataset]
  task = autoencoder.make_task(config, np.zeros((autoencoder.NUM_RECONSTRUCTIONS, *shape), np.uint8))
  return task, {"image": np.zeros((config.batch_size, *shape), np.uint8)}


# What experiments.sample / experiments.evaluate may change in a finished run (they train nothing).
SAMPLING_FIELDS = ("num_samples", "eval_k")


def _num_samples(config) -> int:
  """The VAE's scored prior samples: the digits classifier scores 8x8 digits only."""
  return config.num_samples if config.model == "vae" and config.dataset == "digits" else 0


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  return autoencoder.metric_names(config.model, _num_samples(config))


def run(config, workdir: str, members=None) -> dict:
  """Trains the autoencoder named by config.model and returns the results.json dict.

  `members` (research.train.Members) trains a sweep of runs as one program (experiments/sweep.py).

  Raises:
    ConfigError: on a bad field, a dataset without images, or a workdir whose checkpoint
      has other shapes; before anything is compiled or written to the workdir.
  """
  check_config(config)
  check_workdir(workdir)
  train_data = data_lib.load(config.dataset, "train")
  if "image" not in train_data:
    raise ConfigError(f"dataset {config.dataset!r} has no images (features: {', '.join(sorted(train_data))})")
  test_images = data_lib.load(config.dataset, "test")["image"]
  task = autoencoder.make_task(config, test_images, _num_samples(config))
  return train(task, config, workdir, {"image": train_data["image"]}, {"image": test_images}, members).results


if __name__ == "__main__":
  cli.main(__file__, run)
