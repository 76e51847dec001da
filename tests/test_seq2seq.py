"""The encoder-decoder against transformers' T5 (v1.0 and v1.1): logits, weights both ways, loss, greedy and beam
search; sampling; one program for any source length; Vaswani's configuration; bad input."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trees import assert_trees_equal
from research.models import seq2seq

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Odd sizes: 21 wide, 3 heads of 5, 3 encoder and 2 decoder layers, 7 buckets, 37 tokens. The end token is
# one these random models often write, so that rows end at different steps.
ODD = dict(vocab_size=37, d_model=21, d_kv=5, d_ff=19, num_layers=3, num_decoder_layers=2, num_heads=3,
           relative_attention_num_buckets=7, relative_attention_max_distance=11, dropout_rate=0.0,
           pad_token_id=0, decoder_start_token_id=0)
VARIANTS = {"v1.0": dict(feed_forward_proj="relu", eos_token_id=28),
            "v1.1": dict(feed_forward_proj="gated-gelu", eos_token_id=8)}
LIMITS = dict(max_source_length=12, max_target_length=12)


def _reference(variant: str, path: str):
  """A random T5ForConditionalGeneration: v1.0 tied and scaled, v1.1 untied and unscaled (as Google's checkpoints)."""
  torch.manual_seed(0)
  cfg = transformers.T5Config(**ODD, **VARIANTS[variant])
  if variant == "v1.1":
    cfg.tie_word_embeddings, cfg.scale_decoder_outputs = False, False
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  if variant == "v1.1":  # one input embedding, as in Google's checkpoints
    model.encoder.embed_tokens.weight = model.shared.weight
    model.decoder.embed_tokens.weight = model.shared.weight
  model.save_pretrained(path)
  return model


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def references(tmp_path_factory):
  out = {}
  for variant in VARIANTS:
    path = str(tmp_path_factory.mktemp(variant))
    out[variant] = (_reference(variant, path), path)
  return out


def _batch():
  """A right-padded source batch, as T5 reads it: (3, 9) ids and mask."""
  rng = np.random.default_rng(1)
  mask = np.ones((3, 9), np.int64)
  mask[1, 6:], mask[2, 3:] = 0, 0
  return rng.integers(2, 37, (3, 9)) * mask, mask


def _logits(hf_model, ids, mask, decoder_ids):
  with torch.no_grad():
    return hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(decoder_ids)).logits.numpy()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_equal_transformers(references, variant):
  hf_model, path = references[variant]
  model, params = seq2seq.load_hf(path)
  assert (model.cfg.tie_word_embeddings, model.cfg.scale_decoder_outputs) == ((True, True) if variant == "v1.0"
                                                                              else (False, False))
  assert model.cfg.gated == (variant == "v1.1") and model.cfg.decoder_layers == 2
  ids, mask = _batch()
  decoder_ids = np.random.default_rng(2).integers(0, 37, (3, 7))
  ours = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask, decoder_ids))
  np.testing.assert_allclose(ours, _logits(hf_model, ids, mask, decoder_ids), rtol=0, atol=1e-5)
  assert float(np.std(ours)) > 0.5  # not a near-constant output that anything would match


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_weights_round_trip_exactly_and_transformers_loads_ours(references, variant, tmp_path):
  hf_model, path = references[variant]
  model, params = seq2seq.load_hf(path)
  seq2seq.to_hf(params, model.cfg, str(tmp_path))
  again_model, again = seq2seq.from_hf(str(tmp_path))
  assert again_model.cfg == model.cfg
  assert_trees_equal(params, again)
  loaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  ids, mask = _batch()
  decoder_ids = np.arange(15).reshape(3, 5) % 37
  np.testing.assert_array_equal(_logits(loaded, ids, mask, decoder_ids), _logits(hf_model, ids, mask, decoder_ids))


def test_the_output_head_settings_are_read_each_from_its_own_field(references, tmp_path):
  """transformers 5 writes scale_decoder_outputs beside tie_word_embeddings; an older config has only the latter."""
  _, path = references["v1.0"]
  model, params = seq2seq.load_hf(path)
  for fields, expected in (({"scale_decoder_outputs": False}, False), ({"tie_word_embeddings": False}, False),
                           ({}, True)):
    seq2seq.save_hf(model, params, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.pop("scale_decoder_outputs")
    (tmp_path / "config.json").write_text(json.dumps({**saved, **fields}))
    cfg = seq2seq.load_hf(str(tmp_path))[0].cfg
    assert (cfg.scale_decoder_outputs, cfg.tie_word_embeddings) == (expected, True)  # no lm_head: tied


def test_a_missing_or_misshapen_tensor_is_named(references, tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  _, path = references["v1.1"]
  tensors = load_file(os.path.join(path, "model.safetensors"))
  (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
  name = "decoder.block.1.layer.1.EncDecAttention.k.weight"
  cases = [({k: v for k, v in tensors.items() if k != name}, f"tensor {name} is missing"),
           ({**tensors, name: tensors[name][:, :-1]}, f"tensor {name} has shape"),
           ({**tensors, "encoder.embed_tokens.weight": tensors["shared.weight"] + 1},
            "tensor encoder.embed_tokens.weight")]
  for broken, message in cases:
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=message):
      seq2seq.load_hf(str(tmp_path))


def test_loss_equals_transformers_with_labels_shifted_right(references):
  hf_model, path = references["v1.1"]
  model, params = seq2seq.load_hf(path)
  ids, mask = _batch()
  labels = np.random.default_rng(3).integers(1, 37, (3, 6))
  labels[1, 4:], labels[2, 2:] = seq2seq.IGNORE, seq2seq.IGNORE
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels)).loss
  ours = jax.jit(lambda *a: seq2seq.loss(model, *a))(params, ids, mask, labels)
  np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)
  np.testing.assert_array_equal(seq2seq.shift_right(jnp.asarray(labels), 0, 0)[:, 1:],
                                np.where(labels[:, :-1] == seq2seq.IGNORE, 0, labels[:, :-1]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_and_beam_search_equal_transformers_generate_on_a_padded_batch(references, variant):
  hf_model, path = references[variant]
  model, params = seq2seq.load_hf(path, **LIMITS)
  ids, mask = _batch()
  for beams in (1, 4):
    with torch.no_grad():
      theirs = hf_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=10,
                                 num_beams=beams, do_sample=False).numpy()
    ours = seq2seq.generate(model, params, ids, mask, max_new_tokens=10, num_beams=beams)
    np.testing.assert_array_equal(ours, theirs, err_msg=f"num_beams={beams}")
    if beams == 1:
      ended = [row[1:].tolist().index(model.cfg.eos_token_id) if model.cfg.eos_token_id in row[1:] else None
               for row in ours]
      assert any(e is not None and e + 2 < ours.shape[1] for e in ended), ended  # a row ended early: padding after
      assert len(set(ended)) > 1, ended  # rows of different lengths


def test_one_program_serves_every_source_length(references):
  _, path = references["v1.1"]
  model, params = seq2seq.load_hf(path, **LIMITS)
  ids, mask = _batch()
  for length in (9, 2, 12):
    seq2seq.generate(model, params, np.resize(ids, (3, length)), np.ones((3, length)), max_new_tokens=10)
  # pylint: disable-next=protected-access
  assert seq2seq._compiled_generate(model, 10, 1, 0, True, False)._cache_size() == 1


def test_sampling_is_a_function_of_the_key(references):
  _, path = references["v1.1"]
  model, params = seq2seq.load_hf(path, **LIMITS)
  ids, mask = _batch()
  draw = lambda seed: seq2seq.generate(model, params, ids, mask, max_new_tokens=10, key=jax.random.key(seed),
                                       temperature=1.5)
  a, b, c = draw(0), draw(0), draw(1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a[:, :c.shape[1]], c[:, :a.shape[1]])
  assert (a[:, 0] == 0).all() and a.min() >= 0 and a.max() < 37
  for row in a:  # pad after the end token
    if model.cfg.eos_token_id in row[1:]:
      assert (row[row[1:].tolist().index(model.cfg.eos_token_id) + 2:] == model.cfg.pad_token_id).all()


def _vaswani(**overrides):
  return seq2seq.config("transformer-tiny", vocab_size=29, d_model=18, d_kv=6, d_ff=22, num_heads=3, num_layers=2,
                        num_decoder_layers=1, max_source_length=8, max_target_length=8, **overrides)


def test_vaswani_configuration_is_post_norm_sinusoidal_and_causal():
  cfg = _vaswani()
  model = seq2seq.Seq2Seq(cfg)
  rng = np.random.default_rng(0)
  ids, decoder_ids = rng.integers(2, 29, (2, 7)), rng.integers(2, 29, (2, 5))
  mask = np.ones((2, 7), bool)
  mask[1, 4:] = False
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, mask, decoder_ids))["params"]
  assert "relative_attention_bias" not in params["encoder"] and "final_norm" not in params["encoder"]
  assert "bias" in params["encoder"]["layer_0"]["attention"]["query"]
  forward = jax.jit(model.apply)
  logits = forward({"params": params}, ids, mask, decoder_ids)
  assert logits.shape == (2, 5, 29) and np.isfinite(logits).all()
  # Causal: a later target token changes nothing before it.
  changed = decoder_ids.copy()
  changed[:, 3] = (changed[:, 3] + 1) % 29
  np.testing.assert_allclose(forward({"params": params}, ids, mask, changed)[:, :3], logits[:, :3], atol=1e-6)
  # Positions: the embedding times sqrt(d_model) plus sin(p / 10000^(2i/d)) and cos at the odd widths.
  p, i = np.arange(5)[:, None], np.arange(9)[None]
  table = np.zeros((5, 18))
  table[:, 0::2], table[:, 1::2] = np.sin(p / 10000 ** (2 * i / 18)), np.cos(p / 10000 ** (2 * i / 18))
  embedded = jax.jit(lambda x: model.apply({"params": params}, x, method=seq2seq.Seq2Seq._embed))(decoder_ids)
  np.testing.assert_allclose(embedded, params["shared"]["embedding"][decoder_ids] * np.sqrt(18) + table, atol=1e-5)
  # Decoding token by token through the KV caches equals the whole forward.
  encoded = jax.jit(lambda *a: model.apply({"params": params}, *a, method=seq2seq.Seq2Seq.encode))(ids, mask)
  step = jax.jit(lambda tokens, state, t: model.apply({"params": params}, tokens, encoded, mask, state=state,
                                                      cache_index=t, method=seq2seq.Seq2Seq.decode))
  state, steps = model.init_state(2, 5), []
  for t in range(5):
    out, state = step(jnp.asarray(decoder_ids[:, t:t + 1]), state, t)
    steps.append(out[:, 0])
  np.testing.assert_allclose(np.stack(steps, axis=1), logits, atol=1e-5)
  with pytest.raises(ValueError, match="only T5 configurations"):
    seq2seq.save_hf(model, params, "unused")


def test_scanned_layers_load_decode_with_beams_and_save(references, tmp_path):
  """Also beam search's other settings: a length penalty, and stopping once a source holds its beams' count."""
  hf_model, path = references["v1.1"]
  model, params = seq2seq.load_hf(path, scan_layers=True, **LIMITS)
  assert params["decoder"]["layer"]["mlp"]["wo"]["kernel"].shape == (2, 19, 21)  # (layers, d_ff, d_model)
  ids, mask = _batch()
  settings = dict(max_new_tokens=8, num_beams=3, length_penalty=0.6, early_stopping=True)
  with torch.no_grad():
    theirs = hf_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                               **settings).numpy()
  np.testing.assert_array_equal(seq2seq.generate(model, params, ids, mask, **settings), theirs)
  seq2seq.save_hf(model, params, str(tmp_path))
  assert_trees_equal(seq2seq.load_hf(str(tmp_path))[1], seq2seq.load_hf(path)[1])


def test_cross_attention_maps_are_distributions_over_the_real_source(references):
  _, path = references["v1.0"]
  model, params = seq2seq.load_hf(path)
  ids, mask = _batch()
  maps = np.asarray(jax.jit(lambda *a: seq2seq.cross_attention_maps(model, *a))(params, ids, mask,
                                                                               np.zeros((3, 4), np.int64)))
  assert maps.shape == (2, 3, 3, 4, 9)
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  assert (maps[:, 1, ..., 6:] == 0).all() and (maps[:, 2, ..., 3:] == 0).all()


def test_presets_and_bad_input(references):
  # t5-small's published size: 60,506,624 parameters (the head tied to the shared embedding).
  assert seq2seq.count_params(seq2seq.config("t5-small")) == 60_506_624
  assert seq2seq.config("t5-v1_1-small").gated and not seq2seq.config("t5-v1_1-small").tie_word_embeddings
  with pytest.raises(ValueError, match="unknown encoder-decoder 't6'"):
    seq2seq.config("t6")
  with pytest.raises(ValueError, match="unknown feed_forward_proj"):
    seq2seq.config("t5-tiny", feed_forward_proj="gated-gated-relu")
  _, path = references["v1.1"]
  model, params = seq2seq.load_hf(path, **LIMITS)
  ids, mask = _batch()
  bad = [(dict(input_ids=np.ones((1, 13), np.int64)), "source of 13 tokens is longer than max_source_length 12"),
         (dict(num_beams=0), "num_beams must be an integer >= 1"),
         (dict(max_new_tokens=13), "max_new_tokens must be an integer in"),
         (dict(input_ids=ids + 40), "outside the vocabulary"),
         (dict(temperature=1.0), "needs a key")]
  for change, message in bad:
    args = {**dict(input_ids=ids, attention_mask=mask, max_new_tokens=4), **change}
    if args["input_ids"].shape != ids.shape:
      args["attention_mask"] = None
    with pytest.raises(ValueError, match=message) as error:
      seq2seq.generate(model, params, **args)
    assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match="is not a saved T5"):
    seq2seq.load_hf("/nonexistent")
