"""The shapes attribute reader: its test accuracy, rendered prompts read back, prompt accuracy, captions parsed back,
its cache and its feature space."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import data
from research.data import captions, shapes
from research.tasks import classifier as classifier_tasks
from research.tasks import latent_diffusion as ld
from research.tasks import shapes_reader

# One worker runs this file: its session fixtures read the reader and compile its forward pass once.
pytestmark = pytest.mark.xdist_group("shapes_reader")


@pytest.fixture(scope="session")
def reader():
  return shapes_reader.shapes_reader()  # trained at session start (conftest.py), read from the cache here


@pytest.fixture(scope="session")
def read(reader):
  apply = jax.jit(shapes_reader.model().apply)
  return lambda images: apply(reader.params, jnp.asarray(images, jnp.float32) / 255.0)[0]


def _eval_prompt_images(count):
  """The evaluation prompts (`ld.eval_prompts`), each rendered as it names it: images, labels, held-out flags."""
  texts, held = ld.eval_prompts(count)
  labels = shapes_reader.prompt_labels(texts)
  images = np.stack([shapes.render(**captions.shapes_attributes(text)) for text in texts])
  return images, labels, held


def test_test_split_accuracy_per_attribute(reader, read):
  info = reader.info
  assert info["version"] == reader.name == shapes_reader.VERSION
  for name in shapes_reader.ATTRIBUTES:
    assert info[f"test_{name}_accuracy"] >= 0.95, name
  assert info["test_accuracy"] >= 0.95 and info["test_held_out_pair_accuracy"] >= 0.95
  assert info["rendered_accuracy"] >= 0.95
  # The info is what the cached parameters measure (on the first 400 test images: every attribute).
  test = {k: v[:400] for k, v in data.load("shapes", "test").items()}
  right = shapes_reader._right(read(test["image"]), shapes_reader.labels_of(test))
  assert float(jnp.mean(jnp.all(right, -1))) >= 0.95


def test_reads_back_every_rendered_prompt_held_out_pairs_included(read):
  images, labels = shapes_reader.rendered_prompts()
  assert len(images) == 7 * 3 * 2 * 9
  right = np.asarray(shapes_reader._right(read(images), jnp.asarray(labels)))  # (378, 4)
  for colour in range(7):
    for shape in range(3):
      pair = (labels[:, 0] == colour) & (labels[:, 1] == shape)
      assert right[pair].all(), (shapes.ATTRIBUTES["colour"][colour], shapes.ATTRIBUTES["shape"][shape],
                                 right[pair].mean(0))


def test_prompt_accuracy_of_rendered_prompts_and_of_noise(read):
  images, labels, held = _eval_prompt_images(84)
  assert held.any() and not held.all()
  score = jax.jit(shapes_reader.prompt_accuracy)
  rendered = {k: float(v) for k, v in score(read(images), labels, held).items()}
  assert set(rendered) == set(shapes_reader.PROMPT_METRICS)
  assert all(v == 1.0 for v in rendered.values()), rendered
  noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
  chance = {k: float(v) for k, v in score(read(noise), labels, held).items()}
  assert chance["prompt_accuracy"] <= 0.05 and chance["prompt_accuracy_held_out"] <= 0.1, chance
  assert chance["colour_accuracy"] <= 0.4 and chance["position_accuracy"] <= 0.4, chance
  # An attribute a prompt does not name is never counted wrong: "a red circle" names two.
  free = shapes_reader.prompt_labels(["a red circle"])
  assert free.tolist() == [[0, 0, -1, -1]]
  out = score(read(shapes.render("circle", "red", "large", "top")[None]), free, np.zeros(1, bool))
  assert float(out["prompt_accuracy"]) == 1.0 and float(out["size_accuracy"]) == 0.0  # no prompt names a size


def test_captions_name_their_attributes_in_every_template():
  for colour in captions.COLOURS:
    for shape in captions.SHAPES:
      for size in captions.SIZES:
        for position in captions.POSITIONS:
          named = {"shape": shape, "colour": colour, "size": size, "position": position}
          for template in range(len(captions.SHAPE_TEMPLATES)):
            assert captions.shapes_attributes(captions.shapes_caption(named, template)) == named, (named, template)
  assert captions.shapes_attributes("A big box, bottom.") == {"shape": "square", "colour": None, "size": "large",
                                                             "position": "bottom"}
  # Two values named, or a position that is none of the nine: not named.
  assert captions.shapes_attributes("a red blue disc at the left right") == {
      "shape": "circle", "colour": None, "size": None, "position": None}
  texts, held = ld.eval_prompts(42)
  labels = shapes_reader.prompt_labels(texts)
  assert (labels >= 0).all() and (ld.held_out_pairs(labels) == held).all()


def test_colour_permutation_moves_the_label_with_the_pixels():
  images = np.stack([shapes.render("triangle", colour, "large", "center") for colour in captions.COLOURS])
  colour = jnp.arange(len(captions.COLOURS))
  out, moved = jax.jit(lambda k: shapes_reader.permute_colours(k, jnp.asarray(images), colour))(jax.random.key(1))
  rgb = [tuple(v) for v in captions.COLOURS.values()]
  for image, label in zip(np.asarray(out), np.asarray(moved)):
    assert tuple((image.max(axis=(0, 1)) > 0).astype(int)) == rgb[label]
  assert (np.asarray(moved) != np.arange(7)).any()  # key 1 permutes some


def test_cache_is_read_back_without_training(reader):
  def refuse(workdir):
    raise AssertionError(f"retrained into {workdir}")

  root = classifier_tasks.default_directory()
  assert sorted(os.listdir(os.path.join(root, shapes_reader.VERSION))) == ["classifier.json", "params"]
  from_disk = classifier_tasks._cached.__wrapped__(os.path.abspath(root), shapes_reader.NETWORK._replace(fit=refuse))
  images, _ = shapes_reader.rendered_prompts()
  np.testing.assert_array_equal(from_disk.features(images), reader.features(images))
  assert from_disk.info == reader.info


def test_sample_metrics_of_rendered_prompts_and_noise(reader):
  images, _, _ = _eval_prompt_images(42)
  good = shapes_reader.shapes_sample_metrics(images, reader)
  noise = shapes_reader.shapes_sample_metrics(np.random.default_rng(0).random(images.shape, np.float32), reader)
  assert good["num_scored"] == noise["num_scored"] == 42 and good["fid_real"] == noise["fid_real"]
  assert good["classes_covered"] == 21 and noise["classes_covered"] <= 3
  assert good["fid_ratio"] < 2.0 < 5.0 < noise["fid_ratio"], (good["fid_ratio"], noise["fid_ratio"])
  assert good["kid"] < noise["kid"] and noise["precision"] == 0.0
