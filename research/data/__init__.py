"""Datasets through TFDS: bundled offline builders plus the TFDS catalog.

    data = research.data.load("digits", "train")   # {'image': uint8 (N,8,8,1), 'label': ...}
    batches = research.data.Batcher(data, batch_size=64, seed=0)
    batch = batches(step)                           # deterministic in (seed, step)
"""

import contextlib
import fcntl
import functools
import os

import numpy as np

from research.data import toy2d
from research.data.batching import Batcher

# Short names -> TFDS names of the bundled, offline datasets.
BUNDLED = {
    "digits": "digits",
    "ring8": "toy2d/ring8",
    "grid25": "toy2d/grid25",
    "swissroll": "toy2d/swissroll",
    "python_docs": "python_docs",
}
# Catalog datasets the experiments know; they download on first use when online.
CATALOG = ("mnist", "cifar10", "tiny_shakespeare", "lm1b")

__all__ = ["BUNDLED", "CATALOG", "Batcher", "check_name", "data_dir", "load", "toy2d"]


def _tfds():
  """TFDS with the bundled builders registered.

  Imported on first use, so that the training loop and the scans (which only batch arrays)
  run where TensorFlow is not installed.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads records here: keep it quiet
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from research.data import builders  # pylint: disable=import-outside-toplevel,unused-import
  return tfds


def data_dir() -> str:
  """Where prepared datasets live: $TFDS_DATA_DIR, else TFDS's default."""
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _tfds_name(name: str) -> str:
  if name in BUNDLED:
    return BUNDLED[name]
  if name.split("/")[0].split(":")[0] in set(_tfds().list_builders(with_community_datasets=False)):
    return name
  raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list(BUNDLED) + list(CATALOG))} "
                   "(or any TFDS catalog name)")


def check_name(name: str) -> None:
  """Raises ValueError listing the available datasets if `name` is unknown."""
  _tfds_name(name)


@contextlib.contextmanager
def _lock(directory: str, name: str):
  # Two processes preparing the same dataset at once would race on its files.
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "." + name.replace("/", "_") + ".lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def load(name: str, split: str = "train", directory: str | None = None) -> dict[str, np.ndarray]:
  """Loads a whole split into memory as numpy arrays (read once per process, then copied).

  Args:
    name: a key of BUNDLED, or a TFDS catalog name (downloaded on first use).
    split: a TFDS split, e.g. "train", "test", "train[:10%]".
    directory: the TFDS data directory; defaults to `data_dir()`.

  Returns:
    A dict of numpy arrays keyed by feature name, sharing the leading dimension.

  Raises:
    ValueError: for an unknown name (the message lists the available datasets).
  """
  return {k: v.copy() for k, v in _load_cached(name, split, directory or data_dir()).items()}


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, split: str, directory: str) -> dict[str, np.ndarray]:
  tfds = _tfds()
  tfds_name = _tfds_name(name)
  builder = tfds.builder(tfds_name, data_dir=directory)
  with _lock(directory, tfds_name):
    builder.download_and_prepare()
  return dict(tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1)))
