"""The digits classifier's plug-in for the loop, and the digits feature space it trains.

    task = make_task(config)                 # trained by experiments/classifier.py like any model
    space = digits_classifier()              # trained once with train_config(), then read from the cache
    ref = digits_reference("train")          # the training split in that space
    metrics = digits_sample_metrics(images)  # FID, precision/recall, class shares of digits samples

The network (research/models/classifier.py) is trained on the digits *training* split by the
one training loop, seeded, in a few seconds of CPU; 98.3% accuracy on the test split. The
trained feature space is cached beside the data, in
`research.data.data_dir()/fid_classifier/<VERSION>/` (`params`: an orbax pytree;
`classifier.json`: its test accuracy and training results), written atomically (into a
temporary directory renamed when complete) under a file lock, so two processes never train it
twice and a killed one never leaves a half-written cache.

Bump VERSION whenever the network or its training changes: FIDs measured with different
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

import jax
import jax.numpy as jnp
import ml_collections

from research import data as data_lib
from research import optim
from research.metrics import fid
from research.metrics.features import FeatureSpace
from research.models import classifier as classifier_lib
from research.train import Task, base_config, eval_params, monitor, restore_pytree, save_pytree, train

VERSION = "digits_mlp_v1"
DIGITS_SPLITS = ("train", "test")


def train_config() -> ml_collections.ConfigDict:
  """The loop config the cached classifier is trained with (part of what VERSION names)."""
  config = base_config()
  config.seed = 0
  config.steps = 600
  config.batch_size = 64
  config.steps_per_call = 50  # a tiny network: one dispatch per 50 steps, not per step
  config.prefetch = 0  # the batches are tiny: no thread needed
  config.log_every = 600
  config.checkpoint_every = 600
  config.keep_checkpoints = 1
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = 50
  return config


def make_task(config: ml_collections.ConfigDict) -> Task:
  """The classifier as a loop task: cross-entropy on the training split, accuracy on `eval_data`."""
  model = classifier_lib.DigitsNet()
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
# The digits feature space: trained on first use, read from the cache afterwards.


def feature_space(params, info: dict) -> FeatureSpace:
  """The digits feature space of trained DigitsNet parameters."""
  return FeatureSpace(VERSION, classifier_lib.DigitsNet().apply, params, classifier_lib.IMAGE_SHAPE,
                      classifier_lib.NUM_CLASSES, info)


def default_directory() -> str:
  """Where classifiers are cached: `<research.data.data_dir()>/fid_classifier`."""
  return os.path.join(data_lib.data_dir(), "fid_classifier")


@contextlib.contextmanager
def _locked(root: str):
  # Two processes asking for the classifier at once: the second waits and reads the first's cache.
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{VERSION}.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _abstract_params():
  dummy = jnp.zeros((1, *classifier_lib.IMAGE_SHAPE), jnp.float32)
  return jax.eval_shape(lambda: classifier_lib.DigitsNet().init(jax.random.key(0), dummy))


def _fit(workdir: str) -> tuple[dict, dict]:
  """Trains the network with the loop in `workdir`; returns (params, info for classifier.json)."""
  config = train_config()
  run = train(make_task(config), config, workdir, data_lib.load("digits", "train"), data_lib.load("digits", "test"))
  params = jax.device_get(eval_params(run.state))
  info = {"version": VERSION, "test_accuracy": run.results["test_accuracy"],
          "train_loss": run.results["train_loss"], "steps": config.steps, "config": config.to_dict()}
  return params, info


def _read(directory: str) -> FeatureSpace:
  with open(os.path.join(directory, "classifier.json")) as f:
    info = json.load(f)
  return feature_space(restore_pytree(os.path.join(directory, "params"), _abstract_params()), info)


@functools.lru_cache(maxsize=4)
def _cached(root: str) -> FeatureSpace:
  final = os.path.join(root, VERSION)
  if os.path.isdir(final):
    return _read(final)
  with _locked(root):
    if os.path.isdir(final):  # another process trained it while this one waited
      return _read(final)
    # Leftovers of a process killed mid-write; under the lock nobody else is writing.
    for leftover in glob.glob(os.path.join(root, f".{VERSION}.tmp-*")):
      shutil.rmtree(leftover, ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=f".{VERSION}.tmp-", dir=root)
    monitor.say(f"training the digits feature network {VERSION} once, cached in {final}")
    try:
      params, info = _fit(os.path.join(staging, "run"))
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
  return _read(final)


def digits_classifier(directory: str | None = None) -> FeatureSpace:
  """The digits feature space, trained on first use and read from the cache afterwards.

  Args:
    directory: the cache root holding one subdirectory per VERSION; defaults to
      `default_directory()` (beside the prepared data).

  Returns:
    The FeatureSpace (the same object for repeated calls in one process); its `info` holds
    `test_accuracy`, measured on the digits test split right after training.

  In a multi-process run every process would train it with the loop's collectives; prepare
  the cache once beforehand (call this in a single process), then each process only reads it.
  """
  return _cached(os.path.abspath(directory or default_directory()))


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


def digits_sample_metrics(images, space: FeatureSpace | None = None) -> dict:
  """research.metrics.fid.sample_metrics of digits samples against the training split, in the digits space.

  Args:
    images: (N, 8, 8, 1) samples, float in [0, 1] or uint8; N >= 4.
    space: the feature space; `digits_classifier()` by default.
  """
  space = space or digits_classifier()
  return fid.sample_metrics(images, space, digits_reference("train", space))


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
