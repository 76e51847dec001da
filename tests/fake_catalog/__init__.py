"""A tiny TFDS builder standing in for a catalog dataset, so the catalog path runs offline."""

import numpy as np
import tensorflow_datasets as tfds


class LocalCatalogSet(tfds.core.GeneratorBasedBuilder):
  """A tiny builder standing in for a catalog dataset (mnist, cifar10) without a download."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12), "test": self._generate_examples(6)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((4, 4, 1), 10 * i, np.uint8), "label": i % 3}


class LocalCatalogText(tfds.core.GeneratorBasedBuilder):
  """A tiny text builder standing in for a catalog corpus (tiny_shakespeare, lm1b, c4) without a download."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 40), "validation": self._generate_examples(40, 8)}

  def _generate_examples(self, first, n):
    for i in range(first, first + n):
      yield i, {"text": f"Document {i}: the quick brown fox jumps over {i % 7} lazy dogs. " * (1 + i % 3)}
