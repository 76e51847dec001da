"""BERT against transformers: MLM and classifier logits, weights both ways; the MLM masking; bad input."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stacking
from research.models import bert
from research.tasks import bert as bert_tasks

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# 3 heads of 10, an MLP width that is no multiple of anything, three segment types.
ODD = dict(vocab_size=41, hidden_size=30, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37,
           max_position_embeddings=23, type_vocab_size=3)


def _hf_config(**extra):
  # Init std 0.3: outputs that vary, so agreement is not agreement on near-constants.
  return transformers.BertConfig(**ODD, initializer_range=0.3, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0, **extra)


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def reference(tmp_path_factory):
  """Random transformers BertForMaskedLM and BertForSequenceClassification of odd sizes, saved."""
  torch.manual_seed(0)
  mlm = transformers.BertForMaskedLM(_hf_config()).eval()
  # LayerNorms and biases away from 1 and 0, so a swapped or missed tensor shows.
  with torch.no_grad():
    for name, p in mlm.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(0.2 * torch.randn_like(p))
  classifier = transformers.BertForSequenceClassification(_hf_config(num_labels=5)).eval()
  paths = {}
  for name, model in (("mlm", mlm), ("cls", classifier)):
    paths[name] = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(paths[name])
  return {"mlm": mlm, "cls": classifier}, paths


def _inputs():
  """Three rows of 23 tokens: two segments, and padding of 0, 5 and 19 positions."""
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 41, (3, 23))
  mask = np.ones((3, 23), np.int64)
  mask[1, 18:], mask[2, 4:] = 0, 0
  types = np.zeros((3, 23), np.int64)
  types[0, 11:], types[1, 9:18], types[2, 2:4] = 1, 2, 1
  return ids, mask, types


def _torch_logits(model, ids, mask, types):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(types)).logits.numpy()


@pytest.mark.parametrize("architecture", ["mlm", "cls"])
def test_logits_equal_transformers_with_padding_and_segments(reference, architecture):
  models, paths = reference
  model, params = bert.load_hf(paths[architecture])
  ids, mask, types = _inputs()
  ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                         token_type_ids=jnp.asarray(types)))
  theirs = _torch_logits(models[architecture], ids, mask, types)
  assert ours.shape == theirs.shape == ((3, 23, 41) if architecture == "mlm" else (3, 5))
  # Padded positions included: their queries still attend to the real keys in both.
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
  assert float(np.std(ours)) > 0.3


def test_padding_changes_nothing_at_real_positions(reference):
  _, paths = reference
  model, params = bert.load_hf(paths["mlm"])
  ids, mask, types = _inputs()
  apply = jax.jit(model.apply)
  full = apply({"params": params}, jnp.asarray(ids[2:, :4]), token_type_ids=jnp.asarray(types[2:, :4]))
  padded = apply({"params": params}, jnp.asarray(ids[2:]), attention_mask=jnp.asarray(mask[2:]),
                 token_type_ids=jnp.asarray(types[2:]))
  np.testing.assert_allclose(padded[:, :4], full, atol=1e-5)


@pytest.mark.parametrize("architecture", ["mlm", "cls"])
def test_save_hf_round_trips_exactly_and_transformers_loads_it(reference, tmp_path, architecture):
  models, paths = reference
  model, params = bert.load_hf(paths[architecture])
  name = type(model).__name__
  bert.save_hf(str(tmp_path), model.cfg, params, name)
  _, again = bert.load_hf(str(tmp_path))
  assert jax.tree.structure(again) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  loaded = getattr(transformers, name).from_pretrained(str(tmp_path)).eval()
  ids, mask, types = _inputs()
  np.testing.assert_array_equal(_torch_logits(loaded, ids, mask, types),
                                _torch_logits(models[architecture], ids, mask, types))


def test_parameter_count_equals_transformers_and_published_sizes(reference):
  models, _ = reference
  cfg, _ = bert.read_hf_config(reference[1]["mlm"])
  # transformers counts the tied decoder once, as we do.
  assert bert.count_params(cfg) == sum(p.numel() for p in models["mlm"].parameters())
  cls_cfg, architecture = bert.read_hf_config(reference[1]["cls"])
  assert architecture == "BertForSequenceClassification" and cls_cfg.num_labels == 5
  assert bert.count_params(cls_cfg, architecture) == sum(p.numel() for p in models["cls"].parameters())
  # bert-base MLM: 110M in the paper; 109.5M encoder + the MLM transform and output bias.
  base = bert.config("bert-base-uncased")
  assert (base.num_hidden_layers, base.hidden_size, base.num_attention_heads) == (12, 768, 12)
  assert bert.count_params(base) == sum(p.numel() for p in transformers.BertForMaskedLM(
      transformers.BertConfig()).parameters())
  assert bert.config("large").hidden_size == 1024


def test_parameters_carry_logical_axis_names():
  cfg = bert.BertConfig(**ODD)
  boxed = bert.BertForMaskedLM(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  names = lambda leaf: leaf.names
  assert names(boxed["bert"]["word_embeddings"]["embedding"]) == ("vocab", "embed")
  assert names(boxed["bert"]["layer_0"]["attention"]["query"]["kernel"]) == ("embed", "heads", "head_dim")
  assert names(boxed["bert"]["layer_1"]["intermediate"]["kernel"]) == ("embed", "mlp")
  assert names(boxed["mlm_bias"]) == ("vocab",)


def test_masking_proportions_on_a_million_tokens():
  b, t, vocab, mask_id = 1000, 1000, 30_000, 3
  key_ids, key_mask = jax.random.split(jax.random.key(0))
  ids = jax.random.randint(key_ids, (b, t), 5, vocab)
  eligible = jnp.arange(t)[None] % 10 != 0  # every 10th position "special"
  eligible = eligible & (jnp.arange(b)[:, None] < 900)  # the last 100 rows "padding"
  out, chosen = jax.jit(lambda k: bert.mask_tokens(k, ids, eligible, vocab_size=vocab, mask_id=mask_id))(key_mask)
  out, chosen, ids, eligible = map(np.asarray, (out, chosen, ids, eligible))
  n_eligible = eligible.sum()
  assert not chosen[~eligible].any() and (out[~eligible] == ids[~eligible]).all()
  assert (out[~chosen] == ids[~chosen]).all()
  # Binomial standard errors: 15% of 810,000 -> 0.0004; shares of ~121,500 chosen -> <= 0.0012.
  assert abs(chosen.sum() / n_eligible - 0.15) < 0.002
  masked = (out == mask_id) & chosen
  randomised = (out != ids) & (out != mask_id) & chosen
  same = (out == ids) & chosen
  n = chosen.sum()
  assert abs(masked.sum() / n - 0.8) < 0.005
  assert abs(randomised.sum() / n - 0.1) < 0.004  # a random draw equal to the original: 1 in 30,000
  assert abs(same.sum() / n - 0.1) < 0.004
  # Other mixes, e.g. the ablation's 0/20/80 (MASK/same/random).
  out, chosen = bert.mask_tokens(key_mask, jnp.asarray(ids), jnp.asarray(eligible), vocab_size=vocab,
                                 mask_id=mask_id, mix=(0.0, 0.2, 0.8))
  out, chosen = np.asarray(out), np.asarray(chosen)
  assert ((out == mask_id) & chosen).sum() / chosen.sum() < 0.001  # only random draws of the [MASK] id
  assert abs(((out != ids) & chosen).sum() / chosen.sum() - 0.8) < 0.005


def test_mlm_loss_counts_only_chosen_positions():
  logits = jax.random.normal(jax.random.key(1), (2, 5, 7))
  targets = jnp.asarray([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]])
  chosen = jnp.asarray([[True, False, False, True, False], [False, False, True, False, False]])
  loss, accuracy = bert.mlm_loss(logits, targets, chosen)
  logp = jax.nn.log_softmax(logits)
  picks = [(0, 0), (0, 3), (1, 2)]
  np.testing.assert_allclose(loss, -np.mean([logp[i, j, targets[i, j]] for i, j in picks]), rtol=1e-6)
  np.testing.assert_allclose(accuracy, np.mean([int(jnp.argmax(logits[i, j]) == targets[i, j]) for i, j in picks]))
  # Changing logits at positions not chosen changes nothing.
  np.testing.assert_allclose(bert.mlm_loss(logits.at[0, 1].add(5.0), targets, chosen)[0], loss, rtol=1e-6)


@pytest.mark.parametrize("mix", ["0/0/100", "50/25/25", "100/0/0"])
def test_a_traced_masking_mix_equals_the_configured_one(mix):
  """The masking table's members carry their mix as traced hparams; each equals a run configured with it."""
  from experiments import bert as bert_experiment  # pylint: disable=import-outside-toplevel
  config = bert_experiment.get_config("smoke")
  config.mask_mix = mix
  cfg = bert.BertConfig(**ODD)
  special = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
  ids = np.random.default_rng(3).integers(5, 41, (4, 23))
  batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones((4, 23), jnp.int32),
           "token_type_ids": jnp.zeros((4, 23), jnp.int32)}
  fixed = bert_tasks.make_pretrain_task(config, cfg, special)
  other = config.copy_and_resolve_references()
  other.mask_mix = "80/10/10"  # the traced task starts elsewhere; its hparams carry the mix
  traced = bert_tasks.make_pretrain_task(other, cfg, special, traced_mix=True)
  params = fixed.init(jax.random.key(0), batch)
  hparams = dict(traced.hparams, **dict(zip(bert_tasks.MIX_HPARAMS, map(jnp.float32, bert.parse_mix(mix)[:2]))))
  key = jax.random.key(5)
  want = jax.jit(fixed.loss, static_argnums=3)(params, batch, key, False, fixed.hparams)
  got = jax.jit(traced.loss, static_argnums=3)(params, batch, key, False, hparams)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  assert traced.loss(params, batch, key, False, traced.hparams)[0] != want[0]  # another mix, another loss


def test_bad_input(reference, tmp_path):
  _, paths = reference
  model, params = bert.load_hf(paths["mlm"])
  ids = jnp.zeros((2, 24), jnp.int32)
  with pytest.raises(ValueError, match="a sequence of 24 tokens is longer than max_position_embeddings 23"):
    model.apply({"params": params}, ids)
  with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\); input_ids have \(2, 6\)"):
    model.apply({"params": params}, ids[:, :6], attention_mask=jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="hidden_size 50 is not divisible by num_attention_heads 3"):
    bert.BertConfig(hidden_size=50, num_attention_heads=3)
  with pytest.raises(ValueError, match="config.json is missing"):
    bert.load_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
  with pytest.raises(ValueError, match="a 'gpt2' model, not bert"):
    bert.load_hf(str(tmp_path))
  with pytest.raises(ValueError, match="unknown BERT size"):
    bert.config("huge")


def test_a_mismatched_tensor_is_named(reference, tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  _, paths = reference
  tensors = load_file(f"{paths['mlm']}/model.safetensors")
  (tmp_path / "config.json").write_text(open(f"{paths['mlm']}/config.json").read())
  shrunk = dict(tensors, **{"bert.encoder.layer.1.intermediate.dense.weight": np.zeros((36, 30), np.float32)})
  save_file(shrunk, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match=r"tensor bert.encoder.layer.1.intermediate.dense.weight has shape \(36, 30\)"):
    bert.load_hf(str(tmp_path))
  del tensors["cls.predictions.bias"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match="tensor cls.predictions.bias is missing"):
    bert.load_hf(str(tmp_path))


def test_dropout_rates_are_read_and_written_under_transformers_names(reference, tmp_path):
  models, paths = reference
  model, params = bert.load_hf(paths["mlm"])
  assert (model.cfg.hidden_dropout_prob, model.cfg.attention_probs_dropout_prob) == (0.0, 0.0)
  cfg = dataclasses.replace(model.cfg, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
  bert.save_hf(str(tmp_path), cfg, params)
  assert bert.read_hf_config(str(tmp_path))[0] == cfg
  theirs = transformers.BertConfig.from_pretrained(str(tmp_path))
  assert (theirs.hidden_dropout_prob, theirs.attention_probs_dropout_prob) == (0.2, 0.3)
  # Evaluation ignores the rates: the logits still equal transformers'.
  ids, mask, types = _inputs()
  ours = bert.BertForMaskedLM(cfg).apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                         token_type_ids=jnp.asarray(types))
  np.testing.assert_allclose(ours, _torch_logits(models["mlm"], ids, mask, types), atol=1e-4)


def test_scanned_and_rematerialised_layers_equal_the_loop():
  """scan_layers x remat: the same loss and gradients from the same (restacked) parameters."""
  ids, mask, types = (jnp.asarray(a) for a in _inputs())
  build = lambda scan, remat: bert.BertForMaskedLM(bert.BertConfig(**ODD, scan_layers=scan, remat=remat))
  loss = lambda model, p: jnp.sum(jnp.sin(model.apply({"params": p}, ids, attention_mask=mask, token_type_ids=types)))
  stacking.check_scan_and_remat(build, (ids,), loss, name="layer", count=ODD["num_hidden_layers"], where=("bert",))


@pytest.mark.parametrize("architecture", ["mlm", "cls"])
def test_scanned_layers_move_to_and_from_transformers(reference, tmp_path, architecture):
  models, paths = reference
  model, params = bert.load_hf(paths[architecture], scan_layers=True)
  assert "layer" in params["bert"] and params["bert"]["layer"]["attention"]["query"]["kernel"].shape == (2, 30, 3, 10)
  ids, mask, types = _inputs()
  ours = jax.jit(model.apply)({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                              token_type_ids=jnp.asarray(types))
  np.testing.assert_allclose(ours, _torch_logits(models[architecture], ids, mask, types), atol=1e-4)
  bert.save_hf(str(tmp_path), model.cfg, params, type(model).__name__)
  _, again = bert.load_hf(str(tmp_path), scan_layers=True)
  assert jax.tree.structure(again) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_auto_attention_traces_attention_dropout_only_where_it_trains_the_reference():
  assert bert.BertConfig(**ODD).attention == "auto"
  assert bert_tasks.traced_rates(bert.BertConfig(**ODD)) == {"dropout": 0.0}
  assert bert_tasks.traced_rates(bert.BertConfig(**ODD, attention_probs_dropout_prob=0.1)) == {
      "dropout": 0.0, "attention_dropout": 0.1}
  assert "attention_dropout" in bert_tasks.traced_rates(bert.BertConfig(**ODD, attention="reference"))
  assert "attention_dropout" not in bert_tasks.traced_rates(bert.BertConfig(**ODD, attention="dense",
                                                                      attention_probs_dropout_prob=0.1))
  with pytest.raises(ValueError, match="unknown remat 'layers'"):
    bert.BertConfig(**ODD, remat="layers")


def test_held_out_mlm_scores_the_context_blind_baselines_at_the_same_positions():
  from experiments import bert as bert_experiment  # pylint: disable=import-outside-toplevel
  config = bert_experiment.get_config("smoke")
  cfg = bert.BertConfig(**ODD)
  special = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
  ids = np.full((10, 23), 7)
  ids[:, 1:17] = 9  # the most common token held out: 16 of the 22 eligible positions of each row
  ids[:, 0] = 2
  sequences = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
  stream = np.concatenate([np.full(5, 7), np.full(3, 9), np.full(9, 3)])  # [SEP] is never the baseline
  assert bert_tasks.most_frequent_token(stream, cfg.vocab_size, special) == 7
  task = bert_tasks.make_pretrain_task(config, cfg, special, unigram_token=7)
  params = task.init(jax.random.key(0), {k: jnp.asarray(v[:2]) for k, v in sequences.items()})
  scores = task.evaluate(params, None, sequences)
  chosen_9 = scores["mlm_best_constant_accuracy"]  # the share of 9 at the chosen positions, about 16/22
  assert 0.55 < chosen_9 < 0.9 and scores["mlm_unigram_accuracy"] == pytest.approx(1.0 - chosen_9)
  assert "mlm_unigram_accuracy" not in bert_tasks.make_pretrain_task(config, cfg, special).evaluate(
      params, None, sequences)
