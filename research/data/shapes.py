"""shapes and digits_captions: captioned images, generated here (no download).

shapes: 32 x 32 RGB images of one shape on black, with a caption and its attributes:

    shape     circle, square, triangle
    colour    red (1,0,0), green, blue, yellow, magenta, cyan, white (1,1,1): pure RGB, the edges
              anti-aliased (coverage of 4 x 4 sub-pixels)
    size      small (8 px across), large (16 px)
    position  a 3 x 3 grid (top left ... bottom right), the centre jittered by up to JITTER px

    data = research.data.load("shapes", "train")
    # image uint8 (N, 32, 32, 3); caption (N,) bytes; shape, colour, size, position, template int;
    # held_out_pair, held_out_template bool

Held out of training, for compositional and zero-shot tests: the (colour, shape) pairs of
HELD_OUT_PAIRS (every colour and every shape is still seen, only not together) and the templates
from research.data.captions.TRAIN_TEMPLATES on. The test split draws attributes and templates
from all of them, and flags each example's held-out parts.

digits_captions: the bundled 8x8 digits (the `digits` split) captioned from the label and two
attributes measured on the image: stroke thickness (thin / thick: ink per inked row, split at
the median) and slant (leaning left / upright / leaning right: the shear of the ink's second
moments, split at its terciles). Same template split as shapes.

Generation is deterministic: numpy generators seeded by the split.
"""

import numpy as np
import tensorflow_datasets as tfds

from research.data import captions

SIZE = 32
SUPERSAMPLE = 4  # sub-pixels per pixel and axis: anti-aliased edges
SIZE_PX = {"small": 8.0, "large": 16.0}
CENTERS = (9.0, 16.0, 23.0)  # grid centres in pixels, for rows and columns alike
JITTER = 1.0  # the centre moves uniformly within +-JITTER px on each axis
HELD_OUT_PAIRS = (("red", "triangle"), ("green", "square"), ("blue", "circle"))
SPLIT_SIZES = {"train": 20_000, "test": 2_000}
SPLIT_SEEDS = {"train": 0, "test": 1}
ATTRIBUTES = {"shape": captions.SHAPES, "colour": tuple(captions.COLOURS), "size": captions.SIZES,
              "position": captions.POSITIONS}


def coverage(shape: str, size: float, cx: float, cy: float) -> np.ndarray:
  """The share of each pixel that the shape covers, (SIZE, SIZE) float32 in [0, 1].

  The shape is `size` px across, centred at (cx, cy) in pixels (x to the right, y down). A
  triangle points up, its base and height `size`.
  """
  s = SUPERSAMPLE
  grid = (np.arange(SIZE * s) + 0.5) / s
  x, y = grid[None, :], grid[:, None]
  half = size / 2
  if shape == "circle":
    inside = (x - cx) ** 2 + (y - cy) ** 2 <= half ** 2
  elif shape == "square":
    inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
  elif shape == "triangle":
    depth = (y - (cy - half)) / size  # 0 at the apex, 1 at the base
    inside = (depth >= 0) & (depth <= 1) & (np.abs(x - cx) <= half * depth)
  else:
    raise ValueError(f"unknown shape {shape!r}; choose one of: {', '.join(captions.SHAPES)}")
  return inside.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3)).astype(np.float32)


def render(shape: str, colour: str, size: str, position: str, jitter=(0.0, 0.0)) -> np.ndarray:
  """One image, (SIZE, SIZE, 3) uint8: the shape in its pure colour on black."""
  index = captions.POSITIONS.index(position)
  cy, cx = CENTERS[index // 3] + jitter[1], CENTERS[index % 3] + jitter[0]
  alpha = coverage(shape, SIZE_PX[size], cx, cy)
  return np.round(255.0 * alpha[..., None] * np.asarray(captions.COLOURS[colour], np.float32)).astype(np.uint8)


def generate(split: str, count: int | None = None) -> dict[str, np.ndarray]:
  """The examples of a shapes split as arrays (what the builder stores), deterministic in the split.

  Args:
    split: "train" (held-out pairs and templates never drawn) or "test" (all drawn).
    count: how many (default SPLIT_SIZES[split]); the first n of a longer draw are the same.
  """
  count = SPLIT_SIZES[split] if count is None else count
  rng = np.random.default_rng(SPLIT_SEEDS[split])
  train = split == "train"
  pairs = [(c, s) for c in captions.COLOURS for s in captions.SHAPES if not (train and (c, s) in HELD_OUT_PAIRS)]
  templates = captions.TRAIN_TEMPLATES["shapes"] if train else len(captions.SHAPE_TEMPLATES)
  out = {k: [] for k in ("image", "caption", "shape", "colour", "size", "position", "template", "held_out_pair",
                         "held_out_template")}
  for _ in range(count):
    colour, shape = pairs[rng.integers(len(pairs))]
    size = captions.SIZES[rng.integers(len(captions.SIZES))]
    position = captions.POSITIONS[rng.integers(len(captions.POSITIONS))]
    template = int(rng.integers(templates))
    jitter = rng.uniform(-JITTER, JITTER, 2)
    attributes = {"shape": shape, "colour": colour, "size": size, "position": position}
    out["image"].append(render(shape, colour, size, position, jitter))
    out["caption"].append(captions.shapes_caption(attributes, template))
    for name, value in attributes.items():
      out[name].append(ATTRIBUTES[name].index(value))
    out["template"].append(template)
    out["held_out_pair"].append((colour, shape) in HELD_OUT_PAIRS)
    out["held_out_template"].append(captions.held_out_template("shapes", template))
  arrays = {k: np.asarray(v) for k, v in out.items()}
  arrays["caption"] = arrays["caption"].astype(object)
  return arrays


class Shapes(tfds.core.GeneratorBasedBuilder):
  """32x32 RGB shapes with captions and attributes (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release (ArrayRecord files)."}

  def _info(self):
    labels = {name: tfds.features.ClassLabel(names=[v.replace(" ", "_") for v in values])
              for name, values in ATTRIBUTES.items()}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8),  # raw bytes: fast random reads
            "caption": tfds.features.Text(),
            **labels,
            "template": tfds.features.Scalar(dtype=np.int32),
            "held_out_pair": tfds.features.Scalar(dtype=np.bool_),
            "held_out_template": tfds.features.Scalar(dtype=np.bool_),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # generated here
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split):
    data = generate(split)
    for i in range(len(data["image"])):
      yield i, {k: v[i] for k, v in data.items()}


# ---------------------------------------------------------------------------------------
# digits_captions.


def stroke_thickness(images: np.ndarray) -> np.ndarray:
  """Ink per inked row, (N,): the mean over rows with any ink of the row's ink (intensities / max)."""
  ink = images.reshape(len(images), 8, 8).astype(np.float32) / 255.0
  rows = ink.sum(axis=2)  # (N, 8)
  return rows.sum(axis=1) / np.maximum((rows > 0.05).sum(axis=1), 1)


def slant(images: np.ndarray) -> np.ndarray:
  """The ink's shear, (N,): cov(x, y) / var(y) with y pointing up; > 0 leans right."""
  ink = images.reshape(len(images), 8, 8).astype(np.float32)
  ys, xs = np.meshgrid(-np.arange(8.0), np.arange(8.0), indexing="ij")  # y up, x right
  mass = ink.sum(axis=(1, 2))
  mean_x = (ink * xs).sum(axis=(1, 2)) / mass
  mean_y = (ink * ys).sum(axis=(1, 2)) / mass
  cov = (ink * (xs - mean_x[:, None, None]) * (ys - mean_y[:, None, None])).sum(axis=(1, 2)) / mass
  var = (ink * (ys - mean_y[:, None, None]) ** 2).sum(axis=(1, 2)) / mass
  return cov / var


def digit_attributes(images: np.ndarray) -> dict[str, np.ndarray]:
  """thickness (0 thin, 1 thick) and slant (0 left, 1 upright, 2 right) indices of (N, 8, 8[, 1]) digits.

  Thresholds are the median thickness and the slant terciles of `images` (all the digits).
  """
  thickness, shear = stroke_thickness(images), slant(images)
  low, high = np.quantile(shear, [1 / 3, 2 / 3])
  return {"thickness": (thickness > np.median(thickness)).astype(np.int64),
          "slant": np.where(shear < low, 0, np.where(shear > high, 2, 1)).astype(np.int64)}


class DigitsCaptions(tfds.core.GeneratorBasedBuilder):
  """The bundled digits (the `digits` builder's split) with captions from label, thickness and slant."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release (ArrayRecord files)."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
            "caption": tfds.features.Text(),
            "thickness": tfds.features.ClassLabel(names=list(captions.THICKNESSES)),
            "slant": tfds.features.ClassLabel(names=[s.replace(" ", "_") for s in captions.SLANTS]),
            "template": tfds.features.Scalar(dtype=np.int32),
            "held_out_template": tfds.features.Scalar(dtype=np.bool_),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # bundled with scikit-learn
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    from research.data import builders  # pylint: disable=import-outside-toplevel  # the digits split
    digits = datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    attributes = digit_attributes(images)
    order = np.random.default_rng(0).permutation(len(images))
    test, train = order[:builders.DIGITS_TEST_SIZE], order[builders.DIGITS_TEST_SIZE:]
    return {"train": self._generate_examples(images, digits.target, attributes, train, "train"),
            "test": self._generate_examples(images, digits.target, attributes, test, "test")}

  def _generate_examples(self, images, labels, attributes, ids, split):
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    templates = captions.TRAIN_TEMPLATES["digits"] if split == "train" else len(captions.DIGIT_TEMPLATES)
    for i in ids:
      template = int(rng.integers(templates))
      words = {"digit": captions.DIGIT_NAMES[labels[i]], "thickness": captions.THICKNESSES[attributes["thickness"][i]],
               "slant": captions.SLANTS[attributes["slant"][i]]}
      yield int(i), {"image": images[i], "label": int(labels[i]), "caption": captions.digits_caption(words, template),
                     "thickness": int(attributes["thickness"][i]), "slant": int(attributes["slant"][i]),
                     "template": template, "held_out_template": captions.held_out_template("digits", template)}
