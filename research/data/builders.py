"""TFDS builders for the bundled, offline datasets (no download ever happens).

digits       scikit-learn's 8x8 handwritten digits, a fixed 1497/300 train/test split.
toy2d        ring8, grid25 and swissroll point clouds (research/data/toy2d.py).
python_docs  the English documentation text shipped with CPython (pydoc_data.topics).
"""

import numpy as np
import tensorflow_datasets as tfds

from research.data import toy2d

DIGITS_TEST_SIZE = 300
TOY2D_SIZES = {"train": 20_000, "test": 5_000}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits as uint8 images in 0..255 (stored raw, not PNG-encoded)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Prepared as ArrayRecord files (random access).", "1.0.0": "First release."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),  # raw bytes: fast random reads
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset")

  def _split_generators(self, dl_manager):
    del dl_manager  # bundled with scikit-learn
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    digits = datasets.load_digits()
    # 0..16 intensities -> 0..255.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return {"train": self._generate_examples(images[train], digits.target[train], train),
            "test": self._generate_examples(images[test], digits.target[test], test)}

  def _generate_examples(self, images, labels, ids):
    for image, label, i in zip(images, labels, ids):
      yield int(i), {"image": image, "label": int(label)}


class Toy2d(tfds.core.GeneratorBasedBuilder):
  """Generated 2D distributions: mixtures of Gaussians and a swiss roll."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Prepared as ArrayRecord files (random access).", "1.0.0": "First release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in toy2d.NAMES]

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "point": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "mode": tfds.features.Scalar(dtype=np.int32),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, seed) for seed, split in enumerate(TOY2D_SIZES)}

  def _generate_examples(self, split, seed):
    data = toy2d.generate(self.builder_config.name, TOY2D_SIZES[split], seed)
    for i in range(len(data["point"])):
      yield i, {"point": data["point"][i], "mode": data["mode"][i]}


class PythonDocs(tfds.core.GeneratorBasedBuilder):
  """CPython's English documentation topics (an offline LM corpus), one text per topic."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Prepared as ArrayRecord files (random access).", "1.0.0": "First release."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"topic": tfds.features.Text(), "text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    from pydoc_data import topics  # pylint: disable=import-outside-toplevel
    names = sorted(topics.topics)
    # Every 10th topic (in name order) is held out.
    return {"train": self._generate_examples([n for i, n in enumerate(names) if i % 10], topics.topics),
            "test": self._generate_examples(names[::10], topics.topics)}

  def _generate_examples(self, names, texts):
    for name in names:
      yield name, {"topic": name, "text": texts[name]}
