"""CLIP against transformers' CLIPModel (logits, weights both ways), its losses and its evaluation."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.models import clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Odd sizes nobody tunes to: a 15-pixel image in 5-pixel patches, widths 30 and 21, 3 heads.
VISION = dict(image_size=15, patch_size=5, hidden_size=30, num_hidden_layers=3, num_attention_heads=3,
              intermediate_size=37)
TEXT = dict(vocab_size=53, max_position_embeddings=11, hidden_size=21, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=29, eos_token_id=1, pad_token_id=0, bos_token_id=2)


def _inputs(eos: int = 1):
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(4, 15, 15, 3)).astype(np.float32)
  ids = rng.integers(3, 50, size=(5, 9)).astype(np.int64)
  mask = np.zeros((5, 9), np.int64)
  for i, length in enumerate((9, 7, 4, 8, 2)):
    ids[i, 0], ids[i, length - 1], ids[i, length:] = 1 if eos == 2 else 2, 52 if eos == 2 else eos, 0
    mask[i, :length] = 1
  return pixels, ids, mask


def _hf_logits(model, pixels, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)),
                attention_mask=torch.tensor(mask))
  return out.logits_per_image.numpy(), out.logits_per_text.numpy()


@pytest.fixture(scope="module", params=[1, 2], ids=["eos_first", "eos_legacy_argmax"])
def reference(request, tmp_path_factory):
  """A random CLIPModel of odd sizes (initializer_factor 3: logits that vary), saved."""
  torch.manual_seed(0)
  text = dict(TEXT, eos_token_id=request.param, bos_token_id=1 if request.param == 2 else 2)
  cfg = transformers.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=13, initializer_factor=3.0)
  model = transformers.CLIPModel(cfg).eval()
  path = tmp_path_factory.mktemp("clip")
  model.save_pretrained(path)
  return model, str(path), request.param


def test_logits_equal_transformers(reference):
  hf_model, path, eos = reference
  pixels, ids, mask = _inputs(eos)
  model, params = clip.load_hf(path, scan_layers=eos == 2)  # the blocks as one nn.scan agree too
  per_image, per_text = jax.jit(model.apply)({"params": params}, pixels, ids, mask)
  ref_image, ref_text = _hf_logits(hf_model, pixels, ids, mask)
  assert ref_image.std() > 0.3  # the test can tell pairs apart
  np.testing.assert_allclose(per_image, ref_image, atol=1e-5, rtol=0)
  np.testing.assert_allclose(per_text, ref_text, atol=1e-5, rtol=0)


def test_weights_round_trip_exactly_and_transformers_loads_ours(reference, tmp_path):
  hf_model, path, eos = reference
  pixels, ids, mask = _inputs(eos)
  model, params = clip.load_hf(path, scan_layers=True)  # stacked blocks are written one by one
  clip.save_hf(model, params, str(tmp_path))
  _, again = clip.load_hf(str(tmp_path), scan_layers=True)
  assert jax.tree.structure(again) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  loaded = transformers.CLIPModel.from_pretrained(str(tmp_path)).eval()
  np.testing.assert_array_equal(_hf_logits(loaded, pixels, ids, mask)[0], _hf_logits(hf_model, pixels, ids, mask)[0])


def test_a_tensor_of_another_shape_is_named(reference, tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  _, path, _ = reference
  tensors = load_file(os.path.join(path, "model.safetensors"))
  tensors["text_model.encoder.layers.1.mlp.fc1.weight"] = np.zeros((5, 21), np.float32)
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with open(os.path.join(path, "config.json")) as f, open(tmp_path / "config.json", "w") as g:
    g.write(f.read())
  with pytest.raises(ValueError, match="tensor text_model.encoder.layers.1.mlp.fc1.weight has shape"):
    clip.load_hf(str(tmp_path))
  with pytest.raises(ValueError, match="config.json is missing"):
    clip.load_hf(str(tmp_path / "nowhere"))


# A small sigmoid-loss model of its own odd sizes: 9 patches of 4 pixels, widths 10 and 12, 3 text heads.
TINY = clip.CLIPConfig(image_size=12, patch_size=4, vision_width=10, vision_layers=1, vision_heads=2, vision_mlp=7,
                       vocab_size=13, context_length=6, text_width=12, text_layers=2, text_heads=3, text_mlp=9,
                       projection_dim=5, loss="sigmoid")


@pytest.fixture(scope="module")
def tiny():
  """(model, params, pixels (6, 12, 12, 3), ids (6, 6), mask): TINY initialised, with captions of 2 to 6 tokens."""
  model = clip.CLIP(TINY)
  rng = np.random.default_rng(0)
  pixels = rng.uniform(-1, 1, size=(6, 12, 12, 3)).astype(np.float32)
  ids = np.zeros((6, 6), np.int32)
  for i, length in enumerate((2, 3, 6, 4, 5, 6)):
    ids[i, :length] = [2, *rng.integers(3, 13, length - 2), 1]
  params = jax.jit(model.init)(jax.random.key(0), pixels, ids, ids > 0)["params"]
  return model, jax.tree.map(np.asarray, nn.unbox(params)), pixels, ids, ids > 0


def test_losses_and_the_clamped_temperature(tiny):
  logits = jax.random.normal(jax.random.key(0), (6, 6)) * 3
  labels = torch.arange(6)
  expected = (torch.nn.functional.cross_entropy(torch.tensor(np.asarray(logits)), labels)
              + torch.nn.functional.cross_entropy(torch.tensor(np.asarray(logits)).T, labels)) / 2
  np.testing.assert_allclose(clip.contrastive_loss(logits), expected.item(), rtol=1e-6)
  z = 2 * np.eye(6) - 1
  direct = -np.sum(np.log(1 / (1 + np.exp(-z * np.asarray(logits, np.float64))))) / 6
  np.testing.assert_allclose(clip.sigmoid_loss(logits), direct, rtol=1e-5)
  model, params, *_ = tiny
  assert float(params["logit_scale"]) == pytest.approx(np.log(10.0)) and float(params["logit_bias"]) == -10.0
  hot = dict(params, logit_scale=np.float32(9.0))  # exp(9) > 100: clamped
  np.testing.assert_allclose(model.apply({"params": hot}, method=model.scale), 100.0, rtol=1e-6)
  assert clip.CLIPConfig().initial_logit_scale == pytest.approx(np.log(1 / 0.07))


def test_ours_saved_is_loaded_by_transformers_with_equal_logits(tiny, tmp_path):
  model, params, pixels, ids, mask = tiny
  ours = np.asarray(jax.jit(model.apply)({"params": params}, pixels, ids, mask)[0])
  clip.to_hf(params, str(tmp_path))  # the config read off the shapes
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["vision_config"]["patch_size"] == 4 and saved["text_config"]["num_attention_heads"] == 3
  theirs, _ = _hf_logits(transformers.CLIPModel.from_pretrained(str(tmp_path)).eval(), pixels, ids.astype(np.int64),
                         mask.astype(np.int64))
  assert ours.std() > 0.1
  # transformers' CLIPModel has no SigLIP bias: its logits are ours less b.
  np.testing.assert_allclose(theirs, ours - params["logit_bias"], atol=1e-5, rtol=0)
  again, loaded = clip.load_hf(str(tmp_path))
  assert again.cfg == TINY and clip.config_from_params(params) == TINY
  for a, b in zip(jax.tree.leaves(clip.from_hf(str(tmp_path))), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert float(loaded["logit_bias"]) == -10.0
  with pytest.raises(ValueError, match="patch size 3 does not divide the image size 8"):
    clip.CLIPConfig(image_size=8, patch_size=3)
  with pytest.raises(ValueError, match="not a CLIP's"):
    clip.config_from_params({"vision_model": {}})


def test_recall_counts_ties_and_groups_and_zero_shot_ensembles_prompts():
  similarity = jnp.asarray([[0.9, 0.1, 0.95], [0.2, 0.5, 0.5], [0.0, 0.1, 0.3]])
  recall = clip.recall_at_k(similarity, (1, 2))
  assert float(recall[1]) == pytest.approx(2 / 3) and float(recall[2]) == 1.0
  groups = jnp.asarray([0, 1, 0])  # item 2 describes query 0 as well as item 0 does
  assert float(clip.recall_at_k(similarity, (1,), groups, groups)[1]) == 1.0
  # Two classes: class 0's prompts point along x and x+y, class 1's along y; the fourth prompt is unused.
  prompts = clip.normalize(jnp.asarray([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]]))
  classes, present = clip.class_embeddings(prompts, jnp.asarray([0, 0, 1, -1]))
  np.testing.assert_allclose(classes[0], clip.normalize(prompts[0] + prompts[1]), rtol=1e-6)
  assert present.tolist() == [True, True, False, False]
  images = clip.normalize(jnp.asarray([[1.0, 0.1], [0.1, 1.0], [-1.0, -0.2]]))
  task = clip.ZeroShot(jnp.asarray([0, 1, 1]), jnp.asarray([0, 0, 1, -1]))
  # Image 2 scores -0.2 with class 1 and 0 with the empty rows of classes 2 and 3, which never win.
  assert float(clip.zero_shot_accuracy(images, prompts, task)) == 1.0


def test_evaluation_is_one_program_over_members(tiny):
  model, params, pixels, ids, mask = tiny
  members = jax.tree.map(lambda x: np.stack([x, x * 0.5]), params)  # two members, one program
  task = clip.ZeroShot(jnp.arange(6) % 3, jnp.arange(6) % 3)

  @jax.jit
  def run(members):
    metrics = jax.vmap(lambda p: clip.evaluate(model, p, pixels, ids, mask, ids, mask, {"thing": task}, ks=(1, 5),
                                               batch_size=4))(members)
    first = jax.tree.map(lambda x: x[0], members)
    logits, _ = model.apply({"params": first}, pixels, ids, mask)
    image = clip.normalize(model.apply({"params": first}, pixels, method=model.image_features))
    text = clip.normalize(model.apply({"params": first}, ids, mask, method=model.text_features))
    return metrics, logits, clip.clip_score(model, first, pixels, ids, mask, batch_size=4), image, text

  metrics, logits, scores, image, text = run(members)
  assert set(metrics) == {"thing_accuracy", "image_to_text_recall@1", "image_to_text_recall@5",
                          "text_to_image_recall@1", "text_to_image_recall@5"}
  assert all(m.shape == (2,) and np.all((m >= 0) & (m <= 1)) for m in metrics.values())
  assert np.all(metrics["image_to_text_recall@5"] >= metrics["image_to_text_recall@1"])
  # Member 0's recall is that of the logits the model returns (same images, same captions), and
  # its zero-shot accuracy that of one prompt per class (each caption names its image's class).
  np.testing.assert_allclose(metrics["image_to_text_recall@1"][0], clip.recall_at_k(logits, (1,))[1], atol=1e-6)
  np.testing.assert_allclose(metrics["text_to_image_recall@1"][0], clip.recall_at_k(logits.T, (1,))[1], atol=1e-6)
  classes = np.stack([clip.normalize(text[i::3].mean(axis=0)) for i in range(3)])
  np.testing.assert_allclose(metrics["thing_accuracy"][0], np.mean(np.argmax(image @ classes.T, 1) == np.arange(6) % 3))
  np.testing.assert_allclose(scores, 100 * np.sum(image * text, axis=1), atol=1e-4)


def test_training_steps_lower_the_sigmoid_loss_on_one_batch(tiny):
  model, params, pixels, ids, mask = tiny
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(lambda p: clip.loss(TINY, model.apply({"params": p}, pixels, ids, mask)[0]))(
        params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, value

  values = []
  for _ in range(20):
    params, state, value = step(params, state)
    values.append(float(value))
  assert values[-1] < 0.5 * values[0], values
