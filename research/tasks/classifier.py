"""The digits classifiers' plug-in for the loop, and the two digits feature spaces they train.

    task = make_task(config)                 # trained by experiments/classifier.py like any model
    space = digits_classifier()              # the MLP: trained once with train_config(), then cached
    pixels = digits_conv_space()            # the conv net, whose features see pixel noise
    ref = digits_reference("train")          # the training split in a space
    metrics = digits_sample_metrics(images)  # FID, KID, precision/recall, class shares in both spaces

The networks (research/models/classifier.py) are trained on the digits *training* split by the
one training loop, seeded, in seconds of CPU: the MLP classifier (VERSION; 98.3% accuracy on
the test split) and the convolutional classifier (CONV_VERSION), whose 3x3 filters see pixel
detail that the MLP's features average away. Each trained feature space is cached beside the data, in
`research.data.data_dir()/fid_classifier/<version>/` (`params`: an orbax pytree;
`classifier.json`: its test accuracy and training results), written atomically (into a
temporary directory renamed when complete) under a file lock, so two processes never train it
twice and a killed one never leaves a half-written cache. The cache serves any feature network
described as a `CachedNetwork` (`cached_space`): the shapes reader's too (research/tasks/shapes_reader.py).

Bump a version whenever its network or its training changes: scores measured with different
feature networks are not comparable, so a new network must never be mistaken for the old.
"""

import contextlib
import fcntl
import functools
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import data as data_lib
from research import optim
from research.metrics import fid
from research.metrics.features import FeatureSpace
from research.models import classifier as classifier_lib
from research.train import Task, base_config, eval_params, monitor, restore_pytree, save_pytree, train

VERSION = "digits_mlp_v1"
CONV_VERSION = "digits_cnn_v1"
NETWORKS = ("mlp", "cnn")  # config.network: VERSION's MLP or CONV_VERSION's convolutional net
DIGITS_SPLITS = ("train", "test")
# The second space's metrics are reported under this prefix (cnn_fid, cnn_kid, ...).
CONV_PREFIX = "cnn_"
# The two spaces' metric prefixes with the titles a table prints above each space's numbers.
SPACE_TITLES = (("", f"MLP classifier ({VERSION})"), (CONV_PREFIX, f"convolutional classifier ({CONV_VERSION})"))


def feature_network_config(steps: int, warmup_steps: int, steps_per_call: int) -> ml_collections.ConfigDict:
  """The loop config the cached feature networks share: seed 0, batch 64, AdamW (3e-3, weight decay 1e-4) with
  warmup and cosine decay, one log line and one checkpoint, at the end.

  Args:
    steps: training steps.
    warmup_steps: the learning rate's linear warmup.
    steps_per_call: steps compiled into one call.
  """
  config = base_config()
  config.seed = 0
  config.steps = config.log_every = config.checkpoint_every = steps
  config.batch_size = 64
  config.steps_per_call = steps_per_call
  config.prefetch = 0  # in-memory batches: no thread needed
  config.keep_checkpoints = 1
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = warmup_steps
  return config


def train_config(network: str = "mlp") -> ml_collections.ConfigDict:
  """The loop config a cached feature network is trained with (part of what its version names).

  Args:
    network: "mlp" (VERSION) or "cnn" (CONV_VERSION).
  """
  if network not in NETWORKS:
    raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
  # A tiny network: one dispatch per 50 steps, not per step.
  config = feature_network_config(3000 if network == "cnn" else 600, warmup_steps=50, steps_per_call=50)
  config.network = network  # mlp: DigitsNet; cnn: DigitsConvNet
  return config


def _model(network: str):
  return classifier_lib.DigitsConvNet() if network == "cnn" else classifier_lib.DigitsNet()


METRICS = ("test_accuracy", "test_error", "test_loss")  # `make_task`'s evaluation


def make_task(config: ml_collections.ConfigDict) -> Task:
  """A classifier as a loop task: cross-entropy on the training split, accuracy on `eval_data`.

  `config.network` picks the network: "mlp" (DigitsNet, also when absent) or "cnn" (DigitsConvNet).
  """
  model = _model(config.get("network", "mlp"))
  to_unit = classifier_lib.to_unit_images

  def loss(params, batch, key, train, hparams):
    del key, train, hparams
    logits, _ = model.apply(params, to_unit(batch["image"]))
    return classifier_lib.cross_entropy(logits, batch["label"]), \
        {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  def evaluate(params, key, eval_data, hparams):
    # Pure: a sweep's members are evaluated together in one vmapped program.
    del key, hparams
    images = eval_data["image"]
    x = to_unit(images) if images.dtype == jnp.uint8 else jnp.clip(images.astype(jnp.float32), 0, 1)
    logits, _ = model.apply(params, x)
    labels = eval_data["label"].astype(jnp.int32)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return {"test_accuracy": accuracy, "test_error": 1.0 - accuracy,
            "test_loss": classifier_lib.cross_entropy(logits, labels)}

  return Task(init=lambda k, b: model.init(k, to_unit(b["image"])),
              tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate, evaluate_pure=True,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps))


# ---------------------------------------------------------------------------------------
# Feature networks cached by version: trained on first use, read from the cache afterwards.


class CachedNetwork(NamedTuple):
  """A feature network the cache trains once and reads back: what `cached_space` needs of it.

  Attributes:
    version: the cache's subdirectory; bump it whenever the network or its training changes.
    description: what it is, for the one line said while it trains ("the digits feature network").
    fit: `fit(workdir) -> (params, info)`: trains it with the loop in `workdir`; `info` becomes
      classifier.json (its test accuracy and training results).
    abstract_params: `abstract_params() -> params' shapes` (jax.eval_shape of its init), to restore params.
    space: `space(params, info) -> FeatureSpace` of trained parameters.
  """

  version: str
  description: str
  fit: Callable[[str], tuple[Any, dict]]
  abstract_params: Callable[[], Any]
  space: Callable[[Any, dict], FeatureSpace]


def default_directory() -> str:
  """Where classifiers are cached: `<research.data.data_dir()>/fid_classifier`."""
  return os.path.join(data_lib.data_dir(), "fid_classifier")


@contextlib.contextmanager
def _locked(root: str, version: str):
  # Two processes asking for a network at once: the second waits and reads the first's cache.
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{version}.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _read(directory: str, network: CachedNetwork) -> FeatureSpace:
  with open(os.path.join(directory, "classifier.json")) as f:
    info = json.load(f)
  return network.space(restore_pytree(os.path.join(directory, "params"), network.abstract_params()), info)


@functools.lru_cache(maxsize=8)
def _cached(root: str, network: CachedNetwork) -> FeatureSpace:
  final = os.path.join(root, network.version)
  if os.path.isdir(final):
    return _read(final, network)
  with _locked(root, network.version):
    if os.path.isdir(final):  # another process trained it while this one waited
      return _read(final, network)
    # Leftovers of a process killed mid-write; under the lock nobody else is writing.
    for leftover in glob.glob(os.path.join(root, f".{network.version}.tmp-*")):
      shutil.rmtree(leftover, ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=f".{network.version}.tmp-", dir=root)
    monitor.say(f"training {network.description} {network.version} once (seconds), cached in {final}")
    try:
      params, info = network.fit(os.path.join(staging, "run"))
      save_pytree(os.path.join(staging, "params"), params)
      with open(os.path.join(staging, "classifier.json"), "w") as f:
        json.dump(info, f, indent=2)
      # The loop's checkpoints and events are not part of the cache.
      shutil.rmtree(os.path.join(staging, "run"), ignore_errors=True)
      os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is shared like the data beside it
      os.rename(staging, final)
    except BaseException:
      shutil.rmtree(staging, ignore_errors=True)
      raise
  return _read(final, network)


def cached_space(network: CachedNetwork, directory: str | None = None) -> FeatureSpace:
  """A feature network's space, trained on first use and read from the cache afterwards.

  The cache is `<directory>/<network.version>/` (`params`: an orbax pytree; `classifier.json`:
  the info `network.fit` returned), written atomically (into a temporary directory renamed
  when complete) under a file lock: two processes never train it twice and a killed one never
  leaves a half-written cache.

  Args:
    network: the network.
    directory: the cache root holding one subdirectory per version; defaults to
      `default_directory()` (beside the prepared data).

  Returns:
    The FeatureSpace (the same object for repeated calls in one process).
  """
  return _cached(os.path.abspath(directory or default_directory()), network)


# ---------------------------------------------------------------------------------------
# The digits feature spaces.

_VERSIONS = {"mlp": VERSION, "cnn": CONV_VERSION}


def feature_space(params, info: dict, network: str = "mlp") -> FeatureSpace:
  """The digits feature space of a trained network's parameters ("mlp": DigitsNet, "cnn": DigitsConvNet)."""
  return FeatureSpace(_VERSIONS[network], _model(network).apply, params, classifier_lib.IMAGE_SHAPE,
                      classifier_lib.NUM_CLASSES, info)


def _abstract_params(network: str):
  dummy = jnp.zeros((1, *classifier_lib.IMAGE_SHAPE), jnp.float32)
  return jax.eval_shape(lambda: _model(network).init(jax.random.key(0), dummy))


def _fit(workdir: str, network: str) -> tuple[dict, dict]:
  """Trains a digits network with the loop in `workdir`; returns (params, info for classifier.json)."""
  config = train_config(network)
  with monitor.quiet():
    run = train(make_task(config), config, workdir, data_lib.load("digits", "train"),
                data_lib.load("digits", "test"))
  params = jax.device_get(eval_params(run.state))
  info = {"version": _VERSIONS[network], "test_accuracy": run.results["test_accuracy"],
          "train_loss": run.results["train_loss"], "steps": config.steps, "config": config.to_dict()}
  return params, info


# The two digits networks as the cache knows them.
DIGITS_NETWORKS = {network: CachedNetwork(_VERSIONS[network], "the digits feature network",
                                          functools.partial(_fit, network=network),
                                          functools.partial(_abstract_params, network),
                                          functools.partial(feature_space, network=network))
                   for network in NETWORKS}


def digits_classifier(directory: str | None = None) -> FeatureSpace:
  """The digits feature space, trained on first use and read from the cache afterwards.

  Args:
    directory: the cache root holding one subdirectory per version; defaults to
      `default_directory()` (beside the prepared data).

  Returns:
    The FeatureSpace (the same object for repeated calls in one process); its `info` holds
    `test_accuracy`, measured on the digits test split right after training.

  In a multi-process run every process would train it with the loop's collectives; prepare
  the cache once beforehand (call this in a single process), then each process only reads it.
  """
  return cached_space(DIGITS_NETWORKS["mlp"], directory)


def digits_conv_space(directory: str | None = None) -> FeatureSpace:
  """The second digits feature space: the convolutional classifier (CONV_VERSION), which sees pixel noise.

  Cached like `digits_classifier` (same directory argument); its `info` holds its test accuracy.
  """
  return cached_space(DIGITS_NETWORKS["cnn"], directory)


def digits_reference(split: str = "train", space: FeatureSpace | None = None) -> fid.Reference:
  """A real digits split in the digits feature space, computed once per space and split.

  Args:
    split: "train" (1497 images) or "test" (300).
    space: the feature space; `digits_classifier()` by default.

  Returns:
    The split's research.metrics.fid.Reference, named "digits/<split>".
  """
  if split not in DIGITS_SPLITS:
    raise ValueError(f"reference must be one of {DIGITS_SPLITS}, got {split!r}")
  return _reference(space or digits_classifier(), split)


@functools.lru_cache(maxsize=8)
def _reference(space: FeatureSpace, split: str) -> fid.Reference:
  return fid.reference(space, data_lib.load("digits", split)["image"], f"digits/{split}")


def digits_spaces(directory: str | None = None) -> list[tuple[FeatureSpace, str]]:
  """Both digits feature spaces with the prefix of their metrics: [(MLP, ""), (conv net, CONV_PREFIX)].

  Args:
    directory: the cache root (`digits_classifier`).
  """
  return [(digits_classifier(directory), ""), (digits_conv_space(directory), CONV_PREFIX)]


def digits_sample_metrics(images, space: FeatureSpace | None = None, directory: str | None = None) -> dict:
  """research.metrics.fid.sample_metrics of digits samples in both digits feature spaces, beside real held-out digits.

  The samples and the real test split (300 held-out digits) are scored alike against the
  training split, at the same count (the first min(N, 300) of each): FID and its ratio to the
  real digits', KID with its standard error, precision/recall, class shares and confidence.
  The MLP classifier's metrics are unprefixed (fid, kid, ...), the convolutional net's carry
  CONV_PREFIX (cnn_fid, cnn_kid, ...).

  Args:
    images: (N, 8, 8, 1) samples, float in [0, 1] or uint8; N >= 4.
    space: one feature space only (its prefix as above); both by default.
    directory: the cache root of the feature networks (`digits_classifier`).
  """
  spaces = digits_spaces(directory) if space is None else [(space, CONV_PREFIX if space.name == CONV_VERSION else "")]
  out = {}
  for one, prefix in spaces:
    out.update(fid.sample_metrics(images, one, digits_reference("train", one), digits_reference("test", one), prefix))
  return out


def real_scores(metrics: dict) -> dict:
  """The real held-out digits' scores in a `digits_sample_metrics` dict: num_scored and every "<metric>_real" key.

  They are the same for every sample set scored at one count: what a table states once as its reference.
  """
  return {"num_scored": metrics["num_scored"], **{k: v for k, v in metrics.items() if k.endswith("_real")}}


def digits_sample_metric_names() -> tuple[str, ...]:
  """The scalar keys of `digits_sample_metrics` in both spaces: what a sweep can plot of digits samples."""
  return tuple(dict.fromkeys(fid.sample_metric_names("", classes=True)
                             + fid.sample_metric_names(CONV_PREFIX, classes=True)))


KNOWN_CASES = ("real held-out", "noise 0.05", "noise 0.1", "gaussian mixture", "independent pixels")


def digits_known_cases(n: int = 1000, seed: int = 0, directory: str | None = None) -> dict:
  """Sample metrics of cases whose order is known, in both spaces: the scale a model's scores sit on.

  From best to worst: the real test split; it with Gaussian pixel noise of standard deviation
  0.05 and 0.1 (clipped to [0, 1]); `n` draws of a full-covariance Gaussian mixture fitted to
  the training pixels, its size chosen by BIC (research.metrics.fid.gaussian_mixture_samples); `n`
  images of independent pixels (fid.independent_pixel_samples). Each is scored as a model's
  samples are (`digits_sample_metrics`, so at min(n, 300) against the 300 held-out digits).

  Args:
    n: samples drawn of the two models (the experiments' count).
    seed: seeds the noise, the mixture and the independent pixels.
    directory: the cache root of the feature networks (`digits_classifier`).

  Returns:
    {case (KNOWN_CASES): its digits_sample_metrics}.
  """
  train_images = data_lib.load("digits", "train")["image"]
  test = data_lib.load("digits", "test")["image"].astype(np.float32) / 255.0
  rng = np.random.default_rng(seed)
  cases = {"real held-out": test,
           "noise 0.05": np.clip(test + 0.05 * rng.standard_normal(test.shape), 0, 1).astype(np.float32),
           "noise 0.1": np.clip(test + 0.1 * rng.standard_normal(test.shape), 0, 1).astype(np.float32),
           "gaussian mixture": fid.gaussian_mixture_samples(train_images.astype(np.float32) / 255.0, n, seed=seed),
           "independent pixels": fid.independent_pixel_samples(train_images, n, seed)}
  return {name: digits_sample_metrics(images, directory=directory) for name, images in cases.items()}


def digits_fid(images, reference: str = "train", space: FeatureSpace | None = None) -> float:
  """FID of digits samples against a real split, in the digits feature space.

  Args:
    images: (N, 8, 8, 1) samples, float in [0, 1] or uint8; N >= 2 (use the same N when
      comparing models: FID's bias depends on it).
    reference: the real split to compare with, "train" (1497 images) or "test" (300).
    space: the feature space; `digits_classifier()` by default.

  Returns:
    The squared Fréchet distance between Gaussian fits of the two feature sets.
  """
  space = space or digits_classifier()
  ref = digits_reference(reference, space)
  return fid.frechet_distance_from_stats(*fid.gaussian_fit(space.features(images)), ref.mean, ref.covariance)


def digits_reference_fids(space: FeatureSpace | None = None, n_bad: int = 1000, seed: int = 0) -> dict:
  """The two ends of the digits FID scale, against the training split's features.

  Args:
    space: the feature space; `digits_classifier()` by default.
    n_bad: number of independent-pixel images.
    seed: seeds the independent-pixel images.

  Returns:
    {"test_split": FID of the real test split, "independent_pixels": FID of `n_bad`
    independent-pixel images, "test_accuracy": the classifier's}.
  """
  space = space or digits_classifier()
  bad = fid.independent_pixel_samples(data_lib.load("digits", "train")["image"], n_bad, seed)
  return {"test_split": digits_fid(data_lib.load("digits", "test")["image"], "train", space),
          "independent_pixels": digits_fid(bad, "train", space),
          "test_accuracy": float(space.info["test_accuracy"])}
