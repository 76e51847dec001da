"""The captioned datasets (shapes, digits_captions) and the caption tokenizer."""

import numpy as np
import pytest

from research import data
from research.data import captions, shapes


@pytest.fixture(scope="module")
def train():
  return shapes.generate("train", 600)


@pytest.fixture(scope="module")
def test():
  return shapes.generate("test", 600)


def test_generation_is_deterministic_and_a_prefix_of_longer_draws(train):
  again = shapes.generate("train", 100)
  for key, value in again.items():
    np.testing.assert_array_equal(value, train[key][:100])


def test_images_are_pure_colours_on_black_and_match_their_attributes(train):
  images = train["image"].astype(np.float32) / 255.0
  assert images.shape == (600, 32, 32, 3)
  for i in range(50):
    colour = np.asarray(list(captions.COLOURS.values())[train["colour"][i]], np.float32)
    # Every pixel is a multiple of the pure colour (coverage x colour), full inside.
    alpha = images[i].max(axis=-1)
    np.testing.assert_allclose(images[i], alpha[..., None] * colour, atol=1 / 255)
    assert alpha.max() == 1.0
    area = alpha.sum()
    size = shapes.SIZE_PX[captions.SIZES[train["size"][i]]]
    expected = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[captions.SHAPES[train["shape"][i]]] * size ** 2
    assert abs(area - expected) < 0.1 * expected
    ys, xs = np.nonzero(alpha > 0.5)
    row, col = divmod(int(train["position"][i]), 3)
    assert abs(xs.mean() + 0.5 - shapes.CENTERS[col]) < 3.0
    assert abs((ys.min() + ys.max() + 1) / 2 - shapes.CENTERS[row]) < shapes.JITTER + 1.0


def test_captions_name_the_attributes_and_hold_out_pairs_and_templates(train, test):
  for split in (train, test):
    for i in range(len(split["caption"])):
      attributes = {name: values[split[name][i]] for name, values in shapes.ATTRIBUTES.items()}
      assert split["caption"][i] == captions.shapes_caption(attributes, int(split["template"][i]))
  pairs = {(list(captions.COLOURS)[c], captions.SHAPES[s]) for c, s in zip(train["colour"], train["shape"])}
  assert not pairs & set(shapes.HELD_OUT_PAIRS) and len(pairs) == 21 - len(shapes.HELD_OUT_PAIRS)
  assert set(np.unique(train["colour"])) == set(range(7)) and set(np.unique(train["shape"])) == set(range(3))
  assert train["template"].max() < captions.TRAIN_TEMPLATES["shapes"] and not train["held_out_template"].any()
  assert test["held_out_pair"].any() and test["held_out_template"].any()
  assert set(np.unique(test["template"])) == set(range(len(captions.SHAPE_TEMPLATES)))


def test_held_out_captions_use_only_training_words(train, test):
  tok = captions.CaptionTokenizer.fit(train["caption"])
  ids, mask = tok.encode(list(test["caption"]), length=16)
  assert ids.shape == (600, 16) and mask.dtype == bool
  assert (ids[:, 0] == captions.SOT_ID).all()
  eot = np.argmax(ids == captions.EOT_ID, axis=1)
  assert (mask.sum(axis=1) == eot + 1).all()
  assert tok.decode(ids[0]) == " ".join(captions.words(test["caption"][0]))
  digit_train = [captions.digits_caption({"digit": d, "thickness": t, "slant": s}, k)
                 for d in captions.DIGIT_NAMES for t in captions.THICKNESSES for s in captions.SLANTS
                 for k in range(captions.TRAIN_TEMPLATES["digits"])]
  digit_tok = captions.CaptionTokenizer.fit(digit_train)
  for k in range(len(captions.DIGIT_TEMPLATES)):
    digit_tok.tokens(captions.digits_caption({"digit": "one", "thickness": "thin", "slant": "leaning left"}, k))


def test_tokenizer_refuses_unknown_words_empty_and_long_prompts(tmp_path, train):
  tok = captions.CaptionTokenizer.fit(train["caption"])
  with pytest.raises(ValueError, match="the word 'purple' is not in"):
    tok.encode(["a purple circle"], length=16)
  with pytest.raises(ValueError, match="empty"):
    tok.encode(["  "], length=16)
  with pytest.raises(ValueError, match="at most 4 fit"):
    tok.encode(["a red circle at the top"], length=4)
  tok.save(tmp_path / "tok.json")
  assert captions.CaptionTokenizer.load(tmp_path / "tok.json").vocabulary == tok.vocabulary


def test_digit_attributes_read_slant_and_thickness():
  upright = np.zeros((8, 8), np.uint8)
  upright[1:7, 3] = 255
  right = np.zeros((8, 8), np.uint8)
  for r in range(1, 7):
    right[r, 7 - r] = 255  # from the bottom left to the top right
  thick = upright.copy()
  thick[1:7, 4] = 255
  assert abs(shapes.slant(upright[None])[0]) < 1e-6 and shapes.slant(right[None])[0] > 0.5
  assert shapes.stroke_thickness(thick[None])[0] == pytest.approx(2 * shapes.stroke_thickness(upright[None])[0])


def test_builders_prepare_offline_and_load(tmp_path, monkeypatch):
  monkeypatch.setattr(shapes, "SPLIT_SIZES", {"train": 40, "test": 20})
  loaded = data.load("shapes", "test", str(tmp_path))
  expected = shapes.generate("test", 20)
  assert loaded["image"].shape == (20, 32, 32, 3) and loaded["image"].dtype == np.uint8
  assert sorted(loaded["caption"].tolist()) == sorted(c.encode() for c in expected["caption"])
  assert {k for k in loaded} == set(expected)
  digits = data.load("digits_captions", "test", str(tmp_path))
  plain = data.load("digits", "test")
  assert digits["image"].shape == (300, 8, 8, 1)
  assert sorted(r.tobytes() for r in digits["image"]) == sorted(r.tobytes() for r in plain["image"])
  assert all(captions.DIGIT_NAMES[l].encode() in c for l, c in zip(digits["label"], digits["caption"]))
