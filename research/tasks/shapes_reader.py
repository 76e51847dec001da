"""The shapes attribute reader: its plug-in for the loop, its cached feature space, and prompt accuracy.

    space = shapes_reader()                        # trained once with train_config(), then cached
    space.info["test_shape_accuracy"]              # per-attribute accuracy on the shapes test split
    labels = prompt_labels(texts)                  # (N, 4) attribute indices a prompt names, -1 where none
    logits, _ = model().apply(space.params, images)
    prompt_accuracy(logits, labels, held_out)      # pure: what a text-to-image evaluation reports
    shapes_sample_metrics(images)                  # FID, KID, precision/recall in the reader's space

The reader (research.models.classifier.ShapesReader) is trained by the one training loop on the
shapes *training* split, whose images never show the held-out (colour, shape) pairs
(research.data.shapes.HELD_OUT_PAIRS), with their colour channels in a random order (a red
triangle becomes a green or a blue one, so that it sees every pair), seeded, in about a minute
of CPU; the test split, which shows the held-out pairs, measures it. It is cached like the digits feature networks
(research.tasks.classifier.cached_space, version VERSION): bump VERSION whenever the network or
its training changes.

Its features are the shapes' sample-metric space; its class head, for class shares, is the 21
(colour, shape) pairs (log p(colour) + log p(shape)).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import data as data_lib
from research import optim
from research.data import captions, shapes
from research.metrics import fid
from research.metrics.features import FeatureSpace
from research.models import classifier as classifier_lib
from research.tasks.classifier import CachedNetwork, cached_space, feature_network_config
from research.train import Task, eval_params, monitor, train

VERSION = "shapes_reader_v1"
# The heads, in the order of prompt_labels' columns; each attribute's values in research.data.shapes.ATTRIBUTES' order.
ATTRIBUTES = ("colour", "shape", "size", "position")
HEADS = tuple((name, len(shapes.ATTRIBUTES[name])) for name in ATTRIBUTES)
NUM_PAIRS = len(shapes.ATTRIBUTES["colour"]) * len(shapes.ATTRIBUTES["shape"])  # the class head: colour-major
SPLITS = ("train", "test")
# Training images of the sample metrics' reference: precision/recall compare every pair of them (quadratic), and
# 20,000 took 50 s a call on a CPU; 5,000 take a sixteenth of that.
REFERENCE_IMAGES = 5000


def train_config() -> ml_collections.ConfigDict:
  """The loop config the cached reader is trained with (part of what VERSION names)."""
  # One step per call: XLA:CPU runs these convolutions about 9x slower inside the loop's multi-step scan.
  config = feature_network_config(400, warmup_steps=40, steps_per_call=1)
  config.dataset = "shapes"
  return config


def model() -> classifier_lib.ShapesReader:
  """The reader's module (its heads HEADS)."""
  return classifier_lib.ShapesReader(heads=HEADS)


def labels_of(split) -> jax.Array:
  """The attribute labels (N, 4) int32 (columns ATTRIBUTES) of a shapes split's examples."""
  return jnp.stack([jnp.asarray(split[name], jnp.int32) for name in ATTRIBUTES], -1)


def _unit(images: jax.Array) -> jax.Array:
  # uint8 split images or float samples, inside a compiled program.
  if images.dtype == jnp.uint8:
    return classifier_lib.to_unit_images(images)
  return jnp.clip(images.astype(jnp.float32), 0.0, 1.0)


def _channel_permutations() -> tuple[np.ndarray, np.ndarray]:
  """The 6 orders of the RGB channels (6, 3), and where each sends each colour (6, 7): pure colours stay pure."""
  orders = np.asarray(list(itertools.permutations(range(3))))
  colours = [tuple(rgb) for rgb in captions.COLOURS.values()]
  moved = [[colours.index(tuple(np.asarray(rgb)[order])) for rgb in colours] for order in orders]
  return orders, np.asarray(moved, np.int32)


def permute_colours(key, images: jax.Array, colour: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Each image's RGB channels in a random order, and its colour label moved alike: (images, colour).

  A red triangle becomes a green or blue one, so the training split's images show every
  (colour, shape) pair, the held-out ones too: what the shape is never depends on the colour.
  """
  orders, moved = _channel_permutations()
  pick = jax.random.randint(key, colour.shape, 0, len(orders))  # (B,)
  order = jnp.asarray(orders)[pick]  # (B, 3)
  return jnp.take_along_axis(images, order[:, None, None, :], -1), jnp.asarray(moved)[pick, colour]


def _right(logits: dict, labels: jax.Array) -> jax.Array:
  """(N, 4) bool: each attribute read as labelled; a label < 0 (not named) counts as right."""
  return jnp.stack([(jnp.argmax(logits[name], -1) == labels[:, i]) | (labels[:, i] < 0)
                    for i, name in enumerate(ATTRIBUTES)], -1)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """The mean of `values` where `mask` holds; 0 where it holds nowhere."""
  return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


METRICS = ("test_accuracy", "test_held_out_pair_accuracy") + tuple(f"test_{name}_accuracy" for name in ATTRIBUTES)


def make_task(config: ml_collections.ConfigDict) -> Task:
  """The reader as a loop task: the sum of the four heads' cross-entropies; its evaluation (pure) on a shapes
  split: `test_accuracy` (all four attributes right), per attribute `test_<attribute>_accuracy`, and
  `test_held_out_pair_accuracy` (all four, on the held-out (colour, shape) pairs)."""
  net = model()

  def loss(params, batch, key, train, hparams):
    del hparams
    images, labels = _unit(batch["image"]), labels_of(batch)
    if train:
      images, colour = permute_colours(key, images, labels[:, 0])
      labels = labels.at[:, 0].set(colour)
    logits, _ = net.apply(params, images)
    value = sum(classifier_lib.cross_entropy(logits[name], labels[:, i]) for i, name in enumerate(ATTRIBUTES))
    right = _right(logits, labels)
    return value, {f"{name}_accuracy": jnp.mean(right[:, i]) for i, name in enumerate(ATTRIBUTES)}

  def evaluate(params, key, eval_data, hparams):
    del key, hparams
    logits, _ = net.apply(params, _unit(eval_data["image"]))
    right = _right(logits, labels_of(eval_data))
    every = jnp.all(right, -1)
    out = {f"test_{name}_accuracy": jnp.mean(right[:, i]) for i, name in enumerate(ATTRIBUTES)}
    return {"test_accuracy": jnp.mean(every),
            "test_held_out_pair_accuracy": masked_mean(every, eval_data["held_out_pair"]), **out}

  return Task(init=lambda k, b: net.init(k, _unit(b["image"])), tx=optim.make(config.optimizer, config.steps),
              loss=loss, evaluate=evaluate, evaluate_pure=True,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps))


# ---------------------------------------------------------------------------------------
# Prompts: what a text-to-image sample should show, and how often the reader reads it back.


def prompt_labels(texts) -> np.ndarray:
  """The attribute indices (N, 4) int32 (columns ATTRIBUTES) each text names, -1 where it names none.

  Read from the caption's words (research.data.captions.shapes_attributes), so any template or a
  free prompt ("a red circle": size and position -1).
  """
  rows = []
  for text in texts:
    named = captions.shapes_attributes(text)
    rows.append([-1 if named[name] is None else shapes.ATTRIBUTES[name].index(named[name]) for name in ATTRIBUTES])
  return np.asarray(rows, np.int32).reshape(len(rows), len(ATTRIBUTES))


def prompt_accuracy(logits: dict, labels: jax.Array, held_out: jax.Array) -> dict:
  """How often the reader reads back what the prompts name (pure, jit-able).

  Args:
    logits: the reader's {attribute: (N, values)} logits of the samples.
    labels: (N, 4) `prompt_labels` of their prompts (-1: not named, any value is right).
    held_out: (N,) bool, whether a prompt's (colour, shape) pair was held out of training.

  Returns:
    {"prompt_accuracy": the share of samples with every named attribute read as named,
    "prompt_accuracy_seen" / "prompt_accuracy_held_out": the same among seen / held-out pairs,
    "<attribute>_accuracy": the share read as named among the prompts that name it}; a mean
    over no samples is 0.
  """
  right = _right(logits, labels)  # (N, 4)
  every = jnp.all(right, -1)
  out = {"prompt_accuracy": jnp.mean(every), "prompt_accuracy_seen": masked_mean(every, ~held_out),
         "prompt_accuracy_held_out": masked_mean(every, held_out)}
  out.update({f"{name}_accuracy": masked_mean(right[:, i], labels[:, i] >= 0) for i, name in enumerate(ATTRIBUTES)})
  return out


PROMPT_METRICS = ("prompt_accuracy", "prompt_accuracy_seen", "prompt_accuracy_held_out") + tuple(
    f"{name}_accuracy" for name in ATTRIBUTES)  # `prompt_accuracy`'s keys


def rendered_prompts() -> tuple[np.ndarray, np.ndarray]:
  """Every (colour, shape, size, position) drawn by research.data.shapes.render, centred (no jitter): images
  (378, 32, 32, 3) uint8 and their labels (378, 4) (columns ATTRIBUTES), held-out pairs included."""
  images, labels = [], []
  for colour in shapes.ATTRIBUTES["colour"]:
    for shape in shapes.ATTRIBUTES["shape"]:
      for size in shapes.ATTRIBUTES["size"]:
        for position in shapes.ATTRIBUTES["position"]:
          images.append(shapes.render(shape, colour, size, position))
          values = {"colour": colour, "shape": shape, "size": size, "position": position}
          labels.append([shapes.ATTRIBUTES[name].index(values[name]) for name in ATTRIBUTES])
  return np.stack(images), np.asarray(labels, np.int32)


# ---------------------------------------------------------------------------------------
# The cached reader and its feature space.


def pair_logits(logits: dict) -> jax.Array:
  """(N, 21) log-probabilities of the (colour, shape) pairs, colour-major: the feature space's class head."""
  colour = jax.nn.log_softmax(logits["colour"])  # (N, 7)
  shape = jax.nn.log_softmax(logits["shape"])  # (N, 3)
  return (colour[:, :, None] + shape[:, None, :]).reshape(colour.shape[0], -1)


def feature_space(params, info: dict) -> FeatureSpace:
  """The reader's feature space of trained parameters: its penultimate features, the (colour, shape) pairs as classes."""
  net = model()

  def apply(p, images):
    logits, feats = net.apply(p, images)
    return pair_logits(logits), feats

  return FeatureSpace(VERSION, apply, params, classifier_lib.READER_IMAGE_SHAPE, NUM_PAIRS, info)


def _abstract_params():
  dummy = jnp.zeros((1, *classifier_lib.READER_IMAGE_SHAPE), jnp.float32)
  return jax.eval_shape(lambda: model().init(jax.random.key(0), dummy))


def _split(name: str) -> dict:
  split = data_lib.load("shapes", name)
  return {key: split[key] for key in ("image", "held_out_pair") + ATTRIBUTES}


def _fit(workdir: str) -> tuple[dict, dict]:
  """Trains the reader with the loop in `workdir`; returns (params, info for classifier.json)."""
  config = train_config()
  train_split = _split("train")
  del train_split["held_out_pair"]
  with monitor.quiet():
    run = train(make_task(config), config, workdir, train_split, _split("test"))
  params = jax.device_get(eval_params(run.state))
  images, labels = rendered_prompts()
  logits, _ = jax.jit(model().apply)(params, classifier_lib.to_unit_images(jnp.asarray(images)))
  info = {"version": VERSION, **{k: float(run.results[k]) for k in METRICS},
          "rendered_accuracy": float(jnp.mean(jnp.all(_right(logits, jnp.asarray(labels)), -1))),
          "train_loss": run.results["train_loss"], "steps": config.steps, "config": config.to_dict()}
  return params, info


NETWORK = CachedNetwork(VERSION, "the shapes attribute reader", _fit, _abstract_params, feature_space)


def shapes_reader(directory: str | None = None) -> FeatureSpace:
  """The reader's feature space, trained on first use and read from the cache afterwards.

  Args:
    directory: the cache root (research.tasks.classifier.cached_space); by default beside the data.

  Returns:
    The FeatureSpace; its `info` holds METRICS measured on the shapes test split right after
    training, and `rendered_accuracy` (all four attributes right on `rendered_prompts`).
  """
  return cached_space(NETWORK, directory)


@functools.lru_cache(maxsize=4)
def _reference(space: FeatureSpace, split: str) -> fid.Reference:
  images = data_lib.load("shapes", split)["image"][:REFERENCE_IMAGES]
  return fid.reference(space, images, f"shapes/{split}[:{len(images)}]")


def shapes_reference(split: str = "train", space: FeatureSpace | None = None) -> fid.Reference:
  """A real shapes split in the reader's space (its first REFERENCE_IMAGES images: 5,000 of the 20,000 train, all
  2,000 test), computed once per space and split."""
  if split not in SPLITS:
    raise ValueError(f"reference must be one of {SPLITS}, got {split!r}")
  return _reference(space or shapes_reader(), split)


def shapes_sample_metrics(images, space: FeatureSpace | None = None) -> dict:
  """research.metrics.fid.sample_metrics of shapes samples in the reader's space, beside real test images.

  The samples and the real test split are scored alike against REFERENCE_IMAGES training images
  at the same count (the first min(N, 2000) of each): fid, fid_real, fid_ratio, kid, kid_se (and _real),
  precision, recall, and the (colour, shape) pairs' class_shares, classes_covered, confidence.

  Args:
    images: (N, 32, 32, 3) samples, float in [0, 1] or uint8; N >= 4.
    space: the reader's space; `shapes_reader()` by default.
  """
  space = space or shapes_reader()
  return fid.sample_metrics(images, space, shapes_reference("train", space), shapes_reference("test", space))
