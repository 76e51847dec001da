"""The catalog of datasets: bundled offline builders and TFDS names, prepared on first use, loaded or read by index.

    records = catalog.source("digits", "train")   # random access over ArrayRecord files
    data = catalog.load("digits", "test")          # a whole split as numpy arrays
"""

import contextlib
import fcntl
import functools
import glob
import io
import os
import shutil
import socket
import sys

import numpy as np
from absl import logging as absl_logging

from research.checks import ConfigError
from research.data.sources import RecordSource

# Short names -> TFDS names of the bundled, offline datasets.
BUNDLED = {
    "digits": "digits",
    "ring8": "toy2d/ring8",
    "grid25": "toy2d/grid25",
    "swissroll": "toy2d/swissroll",
    "python_docs": "python_docs",
    "python_docs_topics": "python_docs_topics",
    "python_docs_tasks": "python_docs_tasks",
    "python_docs_code": "python_docs_code",
    "python_functions": "python_functions",
    "shapes": "shapes", "digits_captions": "digits_captions",
    "number_words": "number_words",
}
# Catalog datasets the experiments know; they download on first use when online.
CATALOG = ("mnist", "cifar10", "tiny_shakespeare", "lm1b")


def _tfds():
  """TFDS with the bundled builders registered.

  Imported on first use, so that the training loop and the scans (which only batch arrays)
  run where TensorFlow is not installed.
  """
  # TensorFlow only encodes and reads records here: keep it quiet (no oneDNN banner, no info logs).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
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
  raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(list(BUNDLED) + list(CATALOG))} "
                   "(or any TFDS catalog name)")


def check_name(name: str) -> None:
  """Raises ConfigError (a ValueError) listing the available datasets if `name` is unknown."""
  _tfds_name(name)


@contextlib.contextmanager
def lock(directory: str, name: str):
  """An exclusive file lock named `name` in `directory`: one process at a time prepares or writes it."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "." + name.replace("/", "_") + ".lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _is_prepared(builder) -> bool:
  return builder.is_prepared()


def _can_download(host: str = "storage.googleapis.com", timeout_s: float = 3.0) -> bool:
  """Whether TFDS's download mirror answers within a few seconds (never a long retry loop)."""
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
    return True
  except OSError:
    return False


@contextlib.contextmanager
def _downloads_refused(name: str, tfds_name: str, directory: str):
  """Makes any download of a preparation fail at once, naming how to prepare the dataset.

  Without a network TFDS would retry each download for minutes; builders that need no
  download (local ones) still prepare.
  """
  from tensorflow_datasets.core.download import download_manager  # pylint: disable=import-outside-toplevel

  def refuse(*args, **kwargs):
    del args, kwargs
    raise ConfigError(
        f"dataset {name!r} is not prepared in {directory} and cannot be downloaded (no network); prepare "
        f"it where there is one with `tfds build {tfds_name} --data_dir=DIR --file_format=array_record` "
        "and point TFDS_DATA_DIR at DIR")

  cls = download_manager.DownloadManager
  saved = {attr: getattr(cls, attr) for attr in ("download", "download_and_extract", "download_kaggle_data")}
  verbosity = absl_logging.get_verbosity()
  try:
    for attr in saved:
      setattr(cls, attr, refuse)
    # The attempt is expected to fail: its banner and warnings would bury the one line that matters.
    absl_logging.set_verbosity(absl_logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    absl_logging.set_verbosity(verbosity)
    for attr, method in saved.items():
      setattr(cls, attr, method)


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS without its progress bars, info and warning lines and stdout banners (a bundled dataset downloads nothing)."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=import-outside-toplevel
  shown = tqdm_utils._active  # pylint: disable=protected-access
  level = absl_logging.get_verbosity()
  tqdm_utils.display_progress_bar(False)
  absl_logging.set_verbosity(min(level, absl_logging.ERROR))
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tqdm_utils.display_progress_bar(shown)
    absl_logging.set_verbosity(level)


def _prepared_builder(name: str, directory: str):
  """The TFDS builder of `name`, prepared in `directory` (ArrayRecord files for new preparations).

  Raises:
    ValueError: for an unknown name, or a catalog dataset that is not prepared and cannot be
      downloaded (no network): one line naming how to prepare it.
  """
  tfds = _tfds()
  tfds_name = _tfds_name(name)
  with lock(directory, tfds_name):
    top = os.path.join(directory, tfds_name.split(":")[0].split("/")[0])
    fresh = not os.path.exists(top)
    offline = name not in BUNDLED and not _is_prepared(tfds.builder(tfds_name, data_dir=directory)) \
        if not fresh else name not in BUNDLED
    offline = offline and not _can_download()
    try:
      with _downloads_refused(name, tfds_name, directory) if offline else contextlib.nullcontext(), \
          _quiet_tfds() if name in BUNDLED else contextlib.nullcontext():
        builder = tfds.builder(tfds_name, data_dir=directory)
        if not _is_prepared(builder):
          if name in BUNDLED:
            sys.stderr.write(f"preparing the bundled dataset {name} in {directory} (once; generated here, nothing "
                             "downloaded)\n")
          # ArrayRecord files give random access by index: research.data.source reads them directly.
          builder = tfds.builder(tfds_name, data_dir=directory, file_format="array_record")
          builder.download_and_prepare()
    except Exception:
      # A failed preparation leaves nothing behind: no incomplete.* files, no empty folders.
      if fresh:
        shutil.rmtree(top, ignore_errors=True)
      else:
        for leftover in glob.glob(os.path.join(top, "**", "incomplete.*"), recursive=True):
          shutil.rmtree(leftover, ignore_errors=True)
      raise
  return builder


def source(name: str, split: str = "train", directory: str | None = None, features=None) -> RecordSource:
  """A random-access source over a prepared dataset's ArrayRecord files (read by index, not loaded).

  Args:
    name: a key of BUNDLED, or a TFDS catalog name (prepared on first use).
    split: a TFDS split, e.g. "train", "test", "train[:10%]".
    directory: the TFDS data directory; defaults to `data_dir()`.
    features: the features to read (all, by default).

  Returns:
    A RecordSource for research.data.Batcher and research.train.train.

  Raises:
    ValueError: for an unknown name, or a dataset prepared in another file format.
  """
  builder = _prepared_builder(name, directory or data_dir())
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if file_format != "array_record":
    raise ValueError(f"dataset {name!r} in {builder.data_dir} is stored as {file_format}, which has no random "
                     "access; prepare it again with --file_format=array_record")
  _check_split(builder, name, split)
  return RecordSource(builder.as_data_source(split=split), features)


def _check_split(builder, name: str, split: str) -> None:
  """Raises ConfigError naming the dataset's splits when `split` ("test", "train[:10%]", "a+b") names none of them."""
  known = list(builder.info.splits.keys())
  for part in split.split("+"):
    base = part.split("[")[0].strip()
    if base not in known:
      raise ConfigError(f"dataset {name!r} has no split {base!r}; its splits: {', '.join(known)}")


def load(name: str, split: str = "train", directory: str | None = None) -> dict[str, np.ndarray]:
  """Loads a whole split into memory as numpy arrays (read once per process, then copied).

  Args:
    name: a key of BUNDLED, or a TFDS catalog name (downloaded on first use).
    split: a TFDS split, e.g. "train", "test", "train[:10%]".
    directory: the TFDS data directory; defaults to `data_dir()`.

  Returns:
    A dict of numpy arrays keyed by feature name, sharing the leading dimension.

  Raises:
    ValueError: for an unknown name (the message lists the available datasets), or a catalog
      dataset that is neither prepared nor downloadable.
  """
  return {k: v.copy() for k, v in _load_cached(name, split, directory or data_dir()).items()}


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, split: str, directory: str) -> dict[str, np.ndarray]:
  builder = _prepared_builder(name, directory)
  _check_split(builder, name, split)
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if file_format == "array_record":
    records = builder.as_data_source(split=split)
    return RecordSource(records).__getitems__(range(len(records)))
  return dict(_tfds().as_numpy(builder.as_dataset(split=split, batch_size=-1)))
