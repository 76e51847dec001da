"""The digits feature network for FID, precision/recall and class shares (research/metrics/fid.py).

    classifier = digits_classifier()        # trained once, then read from the cache
    feats = classifier.features(images)     # (N, FEATURES) penultimate-layer activations
    labels = classifier.predict(images)     # (N,) int
    classifier.test_accuracy                # on the digits test split, measured when trained

A small MLP trained on the digits *training* split by the one training loop
(research.train.train), seeded, in a few seconds of CPU; 98.3% accuracy on the test split.
It is cached beside the data, in `research.data.data_dir()/fid_classifier/<VERSION>/`
(`params`: an orbax pytree; `classifier.json`: its test accuracy and training results),
written atomically (into a temporary directory renamed when complete) under a file lock,
so two processes never train it twice and a killed one never leaves a half-written cache.

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

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import data as data_lib
from research import optim
from research.train import Task, base_config, eval_params, monitor, restore_pytree, save_pytree, train

VERSION = "digits_mlp_v1"
FEATURES = 64  # width of the penultimate layer: the feature space FID and precision/recall live in
HIDDEN = 256  # width of the first hidden layer
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
# Features are computed in chunks of this many images, padded to it: one compiled program for any N.
CHUNK = 1024


class DigitsNet(nn.Module):
  """Two hidden dense layers, the second one the features, before the class logits.

  An MLP rather than a CNN: on 8x8 images it is as accurate (about 98% on the test split)
  and trains several times faster on a CPU.
  """

  features: int = FEATURES

  @nn.compact
  def __call__(self, images):
    """Maps (batch, 8, 8, 1) images in [0, 1] to (logits (batch, 10), features (batch, features))."""
    x = images.reshape(images.shape[0], -1)  # (batch, 64)
    x = nn.relu(nn.Dense(HIDDEN)(x))  # (batch, HIDDEN)
    feats = nn.relu(nn.Dense(self.features)(x))  # (batch, features)
    return nn.Dense(NUM_CLASSES)(feats), feats


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


def to_unit_images(images) -> jax.Array:
  """Checks the shape and scales images to float32 in [0, 1].

  Args:
    images: (N, 8, 8, 1) uint8 in 0..255, or float in [0, 1]; float values outside [0, 1]
      are clipped, as saving them as an image would.

  Returns:
    (N, 8, 8, 1) float32 in [0, 1].

  Raises:
    ValueError: for any other shape.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f"expected digits images of shape (N, 8, 8, 1), got {images.shape}")
  if images.dtype == np.uint8:
    return jnp.asarray(images, jnp.float32) / 255.0
  return jnp.clip(jnp.asarray(images, jnp.float32), 0.0, 1.0)


def to_unit_images_traced(images: jax.Array) -> jax.Array:
  """uint8 batches inside the compiled step -> float32 in [0, 1] (no host-side checks)."""
  return images.astype(jnp.float32) / 255.0


def _cross_entropy(logits, labels):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None].astype(jnp.int32), 1))


def make_task(config: ml_collections.ConfigDict) -> Task:
  """The classifier as a loop task: cross-entropy on the training split, accuracy on `eval_data`."""
  model = DigitsNet()

  def loss(params, batch, key, train):
    del key, train
    logits, _ = model.apply(params, to_unit_images_traced(batch["image"]))
    return _cross_entropy(logits, batch["label"]), {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  def evaluate(params, key, eval_data):
    # Pure: a sweep's members are evaluated together in one vmapped program.
    del key
    images = eval_data["image"]
    x = to_unit_images_traced(images) if images.dtype == jnp.uint8 else jnp.clip(images.astype(jnp.float32), 0, 1)
    logits, _ = model.apply(params, x)
    labels = eval_data["label"].astype(jnp.int32)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return {"test_accuracy": accuracy, "test_error": 1.0 - accuracy, "test_loss": _cross_entropy(logits, labels)}

  return Task(init=lambda k, b: model.init(k, to_unit_images_traced(b["image"])),
              tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate, evaluate_pure=True,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps))


class Classifier:
  """The trained digits network: features, predictions and its measured test accuracy.

  Attributes:
    params: the network's parameters.
    test_accuracy: accuracy on the digits test split, measured right after training.
    info: what `classifier.json` holds (version, training config and results).
  """

  def __init__(self, params, info: dict):
    self.params = params
    self.info = info
    self.test_accuracy: float = float(info["test_accuracy"])
    model = DigitsNet()
    self._apply = jax.jit(lambda p, x: model.apply(p, x))
    self._reference = {}

  def _outputs(self, images) -> tuple[np.ndarray, np.ndarray]:
    x = to_unit_images(images)
    n = x.shape[0]
    logits, feats = [], []
    for start in range(0, n, CHUNK):
      chunk = x[start:start + CHUNK]
      rows = chunk.shape[0]
      chunk = jnp.pad(chunk, ((0, CHUNK - rows), (0, 0), (0, 0), (0, 0)))  # (CHUNK, 8, 8, 1)
      chunk_logits, chunk_feats = self._apply(self.params, chunk)
      logits.append(np.asarray(chunk_logits[:rows]))
      feats.append(np.asarray(chunk_feats[:rows]))
    if not logits:
      return np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, FEATURES), np.float32)
    return np.concatenate(logits), np.concatenate(feats)

  def features(self, images) -> np.ndarray:
    """Penultimate-layer activations.

    Args:
      images: (N, 8, 8, 1) uint8 in 0..255, or float in [0, 1].

    Returns:
      (N, FEATURES) float32.
    """
    return self._outputs(images)[1]

  def predict(self, images) -> np.ndarray:
    """The most likely digit of each image.

    Args:
      images: (N, 8, 8, 1) uint8 in 0..255, or float in [0, 1].

    Returns:
      (N,) int32 class labels.
    """
    return np.argmax(self._outputs(images)[0], -1).astype(np.int32)

  def reference_features(self, split: str) -> np.ndarray:
    """Features of a real digits split ("train" or "test"), computed once per classifier."""
    if split not in self._reference:
      self._reference[split] = self.features(data_lib.load("digits", split)["image"])
    return self._reference[split]


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
  dummy = jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)
  return jax.eval_shape(lambda: DigitsNet().init(jax.random.key(0), dummy))


def _fit(workdir: str) -> tuple[dict, dict]:
  """Trains the network with the loop in `workdir`; returns (params, info for classifier.json)."""
  config = train_config()
  run = train(make_task(config), config, workdir, data_lib.load("digits", "train"), data_lib.load("digits", "test"))
  params = jax.device_get(eval_params(run.state))
  info = {"version": VERSION, "test_accuracy": run.results["test_accuracy"],
          "train_loss": run.results["train_loss"], "steps": config.steps, "config": config.to_dict()}
  return params, info


def _read(directory: str) -> Classifier:
  with open(os.path.join(directory, "classifier.json")) as f:
    info = json.load(f)
  return Classifier(restore_pytree(os.path.join(directory, "params"), _abstract_params()), info)


@functools.lru_cache(maxsize=4)
def _cached(root: str) -> Classifier:
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


def digits_classifier(directory: str | None = None) -> Classifier:
  """The digits feature network, trained on first use and read from the cache afterwards.

  Args:
    directory: the cache root holding one subdirectory per VERSION; defaults to
      `default_directory()` (beside the prepared data).

  Returns:
    The Classifier (the same object for repeated calls in one process).

  In a multi-process run every process would train it with the loop's collectives; prepare
  the cache once beforehand (call this in a single process), then each process only reads it.
  """
  return _cached(os.path.abspath(directory or default_directory()))
