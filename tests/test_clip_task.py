"""CLIP's task on the loop: a short run on shapes learns colour words zero-shot, on held-out phrasings."""

import json

import numpy as np
import pytest

from research.data import captions, shapes
from research.models import clip as clip_lib
from research.tasks import clip
from research.train import ConfigError, train


@pytest.mark.slow
def test_a_short_run_on_shapes_lifts_zero_shot_colour_accuracy_well_above_chance(tmp_path, monkeypatch):
  monkeypatch.setattr(shapes, "SPLIT_SIZES", {"train": 600, "test": 200})
  config = clip.default_config()
  clip.smoke(config)
  tokenizer, train_data, eval_data = clip.prepare(config, str(tmp_path / "data"))
  assert set(train_data) == {"image", "input_ids", "attention_mask"}
  # The prompts: every attribute combination in each held-out template, none seen in training.
  assert eval_data["prompt_ids"].shape == (7 * 3 * 2 * 9 * 2, config.context_length)
  first = tokenizer.decode(eval_data["prompt_ids"][0])
  assert first == " ".join(captions.words(captions.SHAPE_TEMPLATES[captions.TRAIN_TEMPLATES["shapes"]].format(
      position="top left", size="small", shape="circle", colour="red")))
  run = train(clip.make_task(config, tokenizer), config, str(tmp_path / "run"), train_data, eval_data)

  results = json.loads((tmp_path / "run" / "results.json").read_text())
  for name in ("colour", "shape", "size", "position"):
    assert 0 <= results[f"{name}_accuracy"] <= 1
  for name in ("image_to_text_recall", "text_to_image_recall"):
    assert 0 <= results[f"{name}@1"] <= results[f"{name}@5"] <= 1
  assert results["colour_accuracy"] > 3 / 7, results  # chance: 1/7
  # CLIP scores: each test image scores higher with its own caption than with its caption's colour changed.
  model = clip_lib.CLIP(clip.model_config(config, tokenizer.vocab_size))
  test = shapes.generate("test", 64)
  names = list(captions.COLOURS)

  def caption(i, colour_shift):
    words = {name: values[test[name][i]] for name, values in shapes.ATTRIBUTES.items()}
    words["colour"] = names[(test["colour"][i] + colour_shift) % 7]
    return captions.shapes_caption(words, int(test["template"][i]))

  wrong = [caption(i, 3) for i in range(64)]
  assert [caption(i, 0) for i in range(64)] == list(test["caption"])
  own = clip.clip_score(model, run.state.params["params"], test["image"], tokenizer, test["caption"])
  other = clip.clip_score(model, run.state.params["params"], test["image"], tokenizer, wrong)
  assert own.shape == (64,) and np.mean(own > other) > 0.75, (own, other)
  with pytest.raises(ValueError, match="the word 'purple'"):
    clip.clip_score(model, run.state.params["params"], test["image"][:1], tokenizer, ["a purple circle"])


def test_bad_fields_are_refused_before_anything_runs():
  config = clip.default_config()
  for field, value, message in (("loss", "hinge", "loss"), ("patch_size", 5, "patch_size 5 does not divide"),
                                ("dataset", "digits", "dataset"), ("text_heads", 3, "text_width 64"),
                                ("prompt_templates", "new", "prompt_templates")):
    bad = clip.default_config()
    bad[field] = value
    with pytest.raises(ConfigError, match=message):
      clip.check_config(bad)
  clip.check_config(config)
