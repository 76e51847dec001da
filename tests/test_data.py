"""Bundled TFDS builders, the catalog path on a local builder, and deterministic batching."""

import subprocess
import sys

import numpy as np
import pytest

from research import data
from research.data import toy2d

import fake_catalog  # registers a small local stand-in for a catalog dataset


def test_digits_splits_shapes_and_range(digits_train):
  test = data.load("digits", "test")
  assert digits_train["image"].shape == (1497, 8, 8, 1) and test["image"].shape == (300, 8, 8, 1)
  assert digits_train["image"].dtype == np.uint8 and digits_train["image"].max() == 255
  assert set(np.unique(digits_train["label"])) == set(range(10))
  # The split is fixed and disjoint: no test image appears in train.
  train_rows = {row.tobytes() for row in digits_train["image"].reshape(len(digits_train["image"]), -1)}
  overlap = sum(row.tobytes() in train_rows for row in test["image"].reshape(300, -1))
  assert overlap <= 5  # a handful of digits are exact duplicates in scikit-learn's set itself


def test_digits_match_scikit_learn(digits_train):
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  reference = np.round(datasets.load_digits().images * (255.0 / 16.0)).astype(np.uint8)
  test = data.load("digits", "test")
  ours = np.concatenate([digits_train["image"], test["image"]])[..., 0]
  key = lambda a: sorted(x.tobytes() for x in a)
  assert key(ours) == key(reference)


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_toy2d_mixtures_have_the_stated_modes_and_spread(name):
  points = data.load(name, "train")
  modes, std = toy2d.MIXTURES[name]
  offsets = points["point"] - modes[points["mode"]]
  np.testing.assert_allclose(offsets.std(0), [std, std], rtol=0.05)
  counts = np.bincount(points["mode"], minlength=len(modes))
  assert counts.min() > 0.7 * counts.mean()
  if name == "ring8":
    np.testing.assert_allclose(np.linalg.norm(modes, axis=1), 1.0)
  else:
    assert sorted(set(modes.ravel().tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_swissroll_and_python_docs():
  roll = data.load("swissroll", "test")["point"]
  assert roll.shape == (5000, 2) and np.all(np.isfinite(roll))
  docs = data.load("python_docs", "train")
  assert len(docs["text"]) > 50 and all(isinstance(t, bytes) for t in docs["text"][:5])
  assert sum(len(t) for t in docs["text"]) > 300_000


def test_unknown_dataset_lists_the_available_ones():
  with pytest.raises(ValueError, match="unknown dataset 'mnsit'; available: digits, ring8, grid25"):
    data.load("mnsit")


def test_catalog_names_go_through_tfds(tmp_path):
  assert fake_catalog.LocalCatalogSet.name == "local_catalog_set"
  split = data.load("local_catalog_set", "train", directory=str(tmp_path))
  assert split["image"].shape == (12, 4, 4, 1)
  assert sorted(split["image"][:, 0, 0, 0].tolist()) == list(range(0, 120, 10))
  assert len(data.load("local_catalog_set", "test[:50%]", directory=str(tmp_path))["label"]) == 3


def test_batches_are_deterministic_epoch_permutations_and_resumable():
  arrays = {"x": np.arange(103), "y": -np.arange(103)}
  batcher = data.Batcher(arrays, batch_size=10, seed=3)
  assert batcher.steps_per_epoch == 10
  epoch0 = np.concatenate([batcher(s)["x"] for s in range(10)])
  assert len(set(epoch0.tolist())) == 100  # a permutation, remainder dropped
  epoch1 = np.concatenate([batcher(s)["x"] for s in range(10, 20)])
  assert not np.array_equal(epoch0, epoch1)
  fresh = data.Batcher(arrays, batch_size=10, seed=3)  # a resumed run starts at any step
  np.testing.assert_array_equal(fresh(17)["x"], batcher(17)["x"])
  np.testing.assert_array_equal(batcher(17)["y"], -batcher(17)["x"])
  other = data.Batcher(arrays, batch_size=10, seed=4)
  assert not np.array_equal(other(0)["x"], batcher(0)["x"])
  np.testing.assert_array_equal(batcher.index_table(12)[11], batcher.indices(11))


def test_process_shares_tile_the_global_batch():
  arrays = {"x": np.arange(64)}
  whole = data.Batcher(arrays, batch_size=16, seed=0)
  parts = [data.Batcher(arrays, 16, 0, process_index=i, process_count=4)(5)["x"] for i in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), whole(5)["x"])


def test_bad_batch_sizes():
  with pytest.raises(ValueError, match="must be in"):
    data.Batcher({"x": np.arange(5)}, batch_size=6, seed=0)
  with pytest.raises(ValueError, match="not divisible"):
    data.Batcher({"x": np.arange(50)}, batch_size=6, seed=0, process_count=4)


def test_a_bundled_dataset_prepares_quietly_with_one_line(tmp_path):
  code = ("from research import data; print(data.load('digits', 'test', directory=%r)['image'].shape)" % str(tmp_path))
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout == "(300, 8, 8, 1)\n"  # no TFDS banner on stdout
  assert done.stderr == f"preparing the bundled dataset digits in {tmp_path} (once; generated here, nothing downloaded)\n"


def test_an_unknown_split_names_the_dataset_s_splits():
  from research.checks import ConfigError  # pylint: disable=import-outside-toplevel
  for read in (data.load, data.source):
    with pytest.raises(ConfigError, match="^dataset 'digits' has no split 'validation'; its splits: train, test$"):
      read("digits", "validation[:10%]")
