"""GPT-2 against transformers: logits, weights both ways, greedy generation; the KV cache; bad input."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

import stacking
from trees import assert_trees_equal
from research.models import gpt2
from research.tasks import gpt2 as gpt2_tasks

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ODD = dict(vocab_size=37, n_positions=19, n_embd=48, n_layer=2, n_head=3)  # 3 heads of 16


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def reference(tmp_path_factory):
  """A random transformers GPT2LMHeadModel of odd sizes (init std 0.3: outputs that vary), saved."""
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(**ODD, initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                bos_token_id=0, eos_token_id=0)
  model = transformers.GPT2LMHeadModel(cfg).eval()
  path = tmp_path_factory.mktemp("hf")
  model.save_pretrained(path)
  return model, str(path)


def _logits(hf_model, ids):
  with torch.no_grad():
    return hf_model(torch.tensor(np.asarray(ids))).logits.numpy()


def test_logits_equal_transformers(reference):
  hf_model, path = reference
  model, params = gpt2.load_hf(path)
  assert model.cfg.n_head == 3 and model.cfg.head_dim == 16
  ids = np.random.default_rng(0).integers(0, 37, (3, 19))
  ours = jax.jit(model.apply)({"params": params}, jnp.asarray(ids))
  np.testing.assert_allclose(ours, _logits(hf_model, ids), atol=1e-4)
  assert float(np.std(ours)) > 0.5  # not a near-constant output that anything would match


def test_weights_round_trip_exactly_and_transformers_loads_ours(reference, tmp_path):
  hf_model, path = reference
  model, params = gpt2.load_hf(path)
  gpt2.save_hf(str(tmp_path), model.cfg, params)
  _, again = gpt2.load_hf(str(tmp_path))
  assert_trees_equal(params, again)
  loaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
  ids = np.arange(19)[None] % 37
  np.testing.assert_array_equal(_logits(loaded, ids), _logits(hf_model, ids))


def test_names_without_the_transformer_prefix_load_too(reference, tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  _, path = reference
  tensors = load_file(os.path.join(path, "model.safetensors"))
  save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
  _, a = gpt2.load_hf(path)
  _, b = gpt2.load_hf(str(tmp_path))
  assert_trees_equal(a, b)


def test_greedy_generation_equals_transformers_for_left_padded_prompts(reference):
  hf_model, path = reference
  model, params = gpt2.load_hf(path)
  prompts = [[3, 14, 15, 9, 26, 5], [20, 7], [1, 2, 3]]
  ours = gpt2.generate(model, params, prompts, max_new_tokens=10)
  for prompt, out in zip(prompts, ours):
    with torch.no_grad():
      theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert out == theirs[0].tolist()
    assert gpt2.generate(model, params, [prompt], max_new_tokens=10) == [out]  # alone: batch 1 (run as two rows)
  assert len({tuple(o[-10:]) for o in ours}) > 1 and len(set(ours[0][-10:])) > 2  # the outputs vary



def test_sampling_follows_temperature_top_k_and_top_p(reference):
  """One new token for 4000 copies of a prompt: frequencies against the model's own next-token probabilities."""
  _, path = reference
  model, params = gpt2.load_hf(path)
  prompt = [3, 14, 15, 9]
  logits = np.asarray(model.apply({"params": params}, jnp.asarray([prompt]))[0, -1], np.float64)
  rows, temperature = 4000, 1.7

  def frequencies(**kw):
    out = gpt2.generate(model, params, np.asarray([prompt] * rows), max_new_tokens=1, key=jax.random.key(7), **kw)
    return np.bincount(out[:, -1], minlength=37) / rows

  def probabilities(keep=None):
    p = np.exp(logits / temperature - np.max(logits / temperature))
    p = p if keep is None else np.where(keep, p, 0.0)
    return p / p.sum()

  full = probabilities()
  assert full.max() < 0.6 and np.sort(full)[-4] > 0.02  # several likely tokens: the checks below can fail
  np.testing.assert_allclose(frequencies(temperature=temperature), full, atol=0.03)
  order = np.argsort(-full)
  top3 = np.isin(np.arange(37), order[:3])
  np.testing.assert_allclose(frequencies(temperature=temperature, top_k=3), probabilities(top3), atol=0.03)
  # Nucleus 0.5: the most likely tokens up to and including the one whose cumulative probability reaches 0.5.
  cumulative = np.cumsum(full[order])
  nucleus = np.isin(np.arange(37), order[:int(np.searchsorted(cumulative, 0.5)) + 1])
  assert 1 < nucleus.sum() < 37
  np.testing.assert_allclose(frequencies(temperature=temperature, top_p=0.5), probabilities(nucleus), atol=0.03)
  # The most likely token always stays in the nucleus: top_p 0 is greedy. A top_k above the
  # vocabulary keeps every token (transformers clamps it too): the same draws as no top_k.
  np.testing.assert_array_equal(frequencies(temperature=temperature, top_p=0.0), np.eye(37)[np.argmax(logits)])
  np.testing.assert_array_equal(frequencies(temperature=temperature, top_k=100), frequencies(temperature=temperature))
  # Temperature 0 is greedy with or without a key; a batch of one samples reproducibly from its key.
  assert gpt2.generate(model, params, [prompt], 1, key=jax.random.key(1))[0][-1] == int(np.argmax(logits))
  one = [gpt2.generate(model, params, [prompt], 8, key=jax.random.key(s), temperature=temperature) for s in (1, 1, 2)]
  assert one[0] == one[1] and one[0] != one[2]

def test_a_new_prompt_length_within_the_bucket_compiles_nothing(reference):
  _, path = reference
  model, params = gpt2.load_hf(path)
  traces = []
  original = model.init_cache

  class Counting(gpt2.GPT2):
    def init_cache(self, batch, length):
      traces.append(length)  # runs only while the generation program is traced
      return original(batch, length)

  counting = Counting(model.cfg)
  for length in (3, 5, 7):  # all in the bucket of 8
    gpt2.generate(counting, params, [list(range(1, length + 1))], max_new_tokens=4)
  assert len(traces) == 1
  gpt2.generate(counting, params, [list(range(1, 12))], max_new_tokens=4)  # bucket 16: one more program
  assert len(traces) == 2


@pytest.mark.parametrize("attention", ["reference", "flash"])
def test_kv_cache_decoding_equals_the_full_forward(attention):
  """Prefill then one token at a time; flash prefills through its own kernel on the swapped cache."""
  cfg = gpt2.GPT2Config(**ODD, positions="rope", attention=attention)
  model = gpt2.GPT2(cfg)
  ids = np.random.default_rng(1).integers(0, 37, (2, 12)).astype(np.int32)
  # Compiled: eager applies compile every operation again for every new shape.
  params = jax.jit(lambda key: jax.tree.map(lambda p: p * 5.0, model.init(key, ids)["params"]))(jax.random.key(0))
  full = jax.jit(lambda p, ids: model.apply({"params": p}, ids))(params, ids)
  cache = model.init_cache(2, 12)
  cached = jax.jit(lambda p, ids, cache, index: model.apply({"params": p}, ids, cache=cache, cache_index=index))
  logits, cache = cached(params, ids[:, :8], cache, 0)
  steps = [logits]
  for i in range(8, 12):  # one program for the four one-token steps
    logits, cache = cached(params, ids[:, i:i + 1], cache, i)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-4)


def test_decoding_across_cache_phases_is_greedy_under_the_full_forward(monkeypatch):
  """Left-padded prompts, 40 new tokens in phases of 16 (the cache grows twice): every new token is
  the argmax of the full forward over the finished sequence at the position before it."""
  monkeypatch.setattr(gpt2, "DECODE_PHASE", 16)
  cfg = gpt2.GPT2Config(**{**ODD, "n_positions": 64})
  model = gpt2.GPT2(cfg)
  params = nn.unbox(model.init(jax.random.key(3), jnp.zeros((1, 1), jnp.int32))["params"])
  params = jax.tree.map(lambda p: p * 5.0, params)
  rows = [[3, 14, 15, 9, 26, 5], [20, 7], [1, 2, 3, 4]]
  tokens, mask = np.zeros((3, 8), np.int32), np.zeros((3, 8), bool)
  for i, r in enumerate(rows):
    tokens[i, 8 - len(r):], mask[i, 8 - len(r):] = r, True
  new = np.asarray(jax.jit(lambda p, t, m: gpt2.continue_prompts(model, p, t, m, jax.random.key(0), 40, 0.0))(
      params, tokens, mask))
  full = jax.jit(lambda p, ids: model.apply({"params": p}, ids))  # one compiled forward for the three lengths
  for r, n in zip(rows, new):
    seq = np.asarray(r + n.tolist())
    # The zeros after the finished sequence change none of its logits (causal): one padded length for every row.
    padded = np.zeros((1, 48), np.int32)
    padded[0, :len(seq)] = seq
    logits = np.asarray(full(params, padded)[0, :len(seq)])
    np.testing.assert_array_equal(np.argmax(logits[len(r) - 1:-1], axis=-1), n)
  assert len(set(new[0].tolist())) > 3  # not one repeated token


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi"])
def test_positions_and_kernels(positions):
  cfg = gpt2.GPT2Config(**ODD, positions=positions, num_kv_heads=1 if positions == "alibi" else None)
  ids = jnp.asarray(np.random.default_rng(2).integers(0, 37, (2, 19)))
  model = gpt2.GPT2(cfg)
  params = model.init(jax.random.key(0), ids)["params"]
  ref = jax.jit(model.apply)({"params": params}, ids)
  flash = jax.jit(gpt2.GPT2(gpt2.GPT2Config(**ODD, positions=positions, num_kv_heads=cfg.num_kv_heads,
                                            attention="flash")).apply)({"params": params}, ids)
  np.testing.assert_allclose(flash, ref, atol=2e-5)
  changed = jax.jit(model.apply)({"params": params}, ids.at[:, 10:].set(0))
  np.testing.assert_allclose(changed[:, :10], ref[:, :10], atol=1e-6)  # causal


def test_published_sizes_and_init():
  assert 124.0e6 < gpt2.count_params(gpt2.config("124m")) < 124.7e6  # 124,439,808 with tied embeddings
  assert 353e6 < gpt2.count_params(gpt2.config("gpt2-medium")) < 356e6
  cfg = gpt2.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=8, n_head=4)
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x,
                        gpt2.GPT2(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"],
                        is_leaf=lambda x: hasattr(x, "value"))
  np.testing.assert_allclose(np.std(params["h_0"]["mlp"]["c_fc"]["kernel"]), 0.02, rtol=0.1)
  np.testing.assert_allclose(np.std(params["h_0"]["mlp"]["c_proj"]["kernel"]), 0.02 / np.sqrt(16), rtol=0.1)
  np.testing.assert_allclose(np.std(params["h_0"]["attn"]["out"]["kernel"]), 0.02 / np.sqrt(16), rtol=0.1)


def test_bad_input(reference, tmp_path):
  _, path = reference
  model, params = gpt2.load_hf(path)
  with pytest.raises(ValueError, match="exceeds the context of 19"):
    gpt2.generate(model, params, [list(range(15))], max_new_tokens=10)
  with pytest.raises(ValueError, match="token id 37 is outside the vocabulary of 37"):
    gpt2.generate(model, params, [[1, 37]], max_new_tokens=2)
  for bad, message in [(dict(max_new_tokens=-1), "max_new_tokens must be a non-negative integer, got -1"),
                       (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
                       (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
                       (dict(top_k=-1), "top_k must be a non-negative integer"),
                       (dict(top_p=1.5), r"top_p must be in \[0, 1\]"), (dict(top_p=float("nan")), "top_p must be in")]:
    with pytest.raises(ValueError, match=message):
      gpt2.generate(model, params, [[1, 2]], **{"max_new_tokens": 2, "key": jax.random.key(0), **bad})
  with pytest.raises(ValueError, match="n_embd 50 is not divisible by n_head 3"):
    gpt2.GPT2Config(n_embd=50, n_head=3)
  with pytest.raises(ValueError, match="config.json is missing"):
    gpt2.load_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match="a 'bert' model, not gpt2"):
    gpt2.load_hf(str(tmp_path))
  with pytest.raises(ValueError, match="unknown GPT-2 size"):
    gpt2.config("2b")


def test_tokenizers_round_trip_and_save(tmp_path):
  from research.data import tokenizers  # pylint: disable=import-outside-toplevel
  text = "def f(x):\n    return x ** 2  # square\n" * 20
  char = tokenizers.make("char", [text])
  assert char.decode(char.encode(text)) == text and char.vocab_size == len(set(text)) + 1
  assert char.encode("é") == [0]  # unseen: the unknown id
  bpe = tokenizers.make("bpe", [text], vocab_size=300)
  ids = bpe.encode(text)
  assert bpe.decode(ids) == text and len(ids) < len(text) / 2  # merges learned
  for tok in (char, bpe):
    tokenizers.save(str(tmp_path / "t.json"), tok)
    again = tokenizers.load(str(tmp_path / "t.json"))
    assert again.encode(text) == tok.encode(text)
  with pytest.raises(ValueError, match="unknown tokenizer 'words'"):
    tokenizers.make("words", [text])
  with pytest.raises(ValueError, match="vocab.json is missing"):
    tokenizers.make(f"gpt2:{tmp_path}")


def test_experiment_smoke_run_writes_samples_and_validation_loss(tmp_path):
  from experiments import gpt2 as experiment  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  results = experiment.run(config, str(tmp_path))
  assert results["step"] == 10 and results["val_loss"] < np.log(results["config"]["n_embd"] * 10)
  np.testing.assert_allclose(results["val_bits_per_char"], results["val_loss"] / np.log(2), rtol=1e-9)
  assert (tmp_path / "samples.txt").read_text().count("--- sample") == config.num_prompts
  assert (tmp_path / "tokenizer.json").exists()


@pytest.mark.parametrize("flag,message", [
    ("--config.tokenizer=words", "unknown tokenizer 'words'"),
    ("--config.n_embd=33", "n_embd 33 is not divisible by n_head 2"),
    ("--config.seq_len=64", "seq_len 64 exceeds n_positions 32"),
])
def test_experiment_bad_input_is_one_line(tmp_path, flag, message):
  from conftest import run_python  # pylint: disable=import-outside-toplevel
  proc = run_python(["-m", "experiments.gpt2", f"--workdir={tmp_path / 'w'}", "--config=experiments/gpt2.py:smoke",
                     flag])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr
  assert not (tmp_path / "w").exists()


def test_eval_loss_is_the_tasks_validation_loss_at_the_training_length():
  from experiments import gpt2 as experiment  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  config.positions = "rope"
  task = gpt2_tasks.make_task(config, 37, str, [[1, 2]])
  windows = np.random.default_rng(3).integers(0, 37, (11, config.seq_len + 1))
  variables = jax.jit(lambda key: jax.tree.map(lambda x: x * 4.0, nn.unbox(task.init(key, {"tokens": windows[:2]}))))(
      jax.random.key(0))
  model = gpt2.GPT2(gpt2.model_config(config, 37))
  # Another batch size than the task's: the mean is over predictions, not over batches.
  ours = gpt2.eval_loss(model, variables["params"], windows, batch_size=4)
  # 11 windows in chunks of the task's eval_batch_size: the padded last chunk counts only its real windows.
  theirs = float(jax.jit(task.evaluate)(variables, None, {"tokens": windows})["val_loss"])
  assert ours == pytest.approx(theirs, rel=1e-5)

  # Twice the length, scored from the middle: a direct log-softmax over the full forward.
  long = np.random.default_rng(4).integers(0, 37, (3, 2 * config.seq_len + 1))
  logits = np.asarray(jax.jit(model.apply)(variables, long[:, :-1]), np.float64)
  nll = -np.take_along_axis(log_softmax(logits, axis=-1), long[:, 1:, None], axis=-1)[..., 0]  # (3, 2 T)
  second_half = gpt2.eval_loss(model, variables["params"], long, batch_size=2, from_position=config.seq_len)
  assert second_half == pytest.approx(nll[:, config.seq_len:].mean(), rel=1e-5)
  assert gpt2.eval_loss(model, variables["params"], long) == pytest.approx(nll.mean(), rel=1e-5)
  assert abs(nll[:, config.seq_len:].mean() - nll.mean()) > 1e-3  # the two spans score differently

  learned = gpt2.GPT2(gpt2.GPT2Config(vocab_size=37, n_positions=8, n_embd=32, n_layer=1, n_head=2))
  with pytest.raises(ValueError, match="exceed the learned context of 8"):
    gpt2.eval_loss(learned, {}, np.zeros((1, 10), np.int32))
  with pytest.raises(ValueError, match="from_position 8 is outside"):
    gpt2.eval_loss(model, variables["params"], long[:, :9], from_position=8)


def test_scanned_and_rematerialised_blocks_equal_the_loop():
  """scan_layers x remat: the same loss and gradients from the same (restacked) parameters."""
  ids = jnp.asarray(np.random.default_rng(5).integers(0, 37, (2, 12)))
  build = lambda scan, remat: gpt2.GPT2(gpt2.GPT2Config(**ODD, positions="rope", scan_layers=scan, remat=remat))
  loss = lambda model, p: gpt2.lm_loss(model.apply({"params": p}, ids[:, :-1]), ids[:, 1:])
  stacking.check_scan_and_remat(build, (ids[:, :-1],), loss, name="h", count=ODD["n_layer"])


def test_scanned_blocks_decode_from_a_stacked_cache_and_move_to_and_from_transformers(reference, tmp_path):
  hf_model, path = reference
  model, params = gpt2.load_hf(path, scan_layers=True)
  assert set(params) == {"wte", "wpe", "h", "ln_f"} and params["h"]["attn"]["query"]["kernel"].shape == (2, 48, 3, 16)
  ids = np.random.default_rng(0).integers(0, 37, (3, 19))
  np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, jnp.asarray(ids)), _logits(hf_model, ids),
                             atol=1e-4)
  cache = model.init_cache(3, 19)
  assert cache.k.shape == (2, 3, 3, 19, 16)  # (layers, B, Hkv, S, D)
  prompts = [[3, 14, 15, 9, 26, 5], [20, 7]]
  assert gpt2.generate(model, params, prompts, max_new_tokens=6) == \
      gpt2.generate(*gpt2.load_hf(path), prompts, max_new_tokens=6)
  gpt2.save_hf(str(tmp_path), model.cfg, params)
  loaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
  np.testing.assert_array_equal(_logits(loaded, ids), _logits(hf_model, ids))


def test_the_batch_of_one_decoding_trick_is_taken_on_cpus_only(reference, monkeypatch):
  """Off CPUs a batch of one decodes as itself (no doubled rows); greedy tokens are the same either way."""
  _, path = reference
  model, params = gpt2.load_hf(path)
  prompt = np.asarray([[3, 14, 15, 9, 26, 5, 1, 2]])
  mask = np.ones_like(prompt, bool)
  run = lambda: jax.jit(lambda p: gpt2.continue_prompts(model, p, prompt, mask, jax.random.key(0), 5, 0.0))
  batch_rows = lambda: {int(eq.outvars[0].aval.shape[0]) for eq in run().trace(params).jaxpr.eqns
                        if eq.primitive.name == "scan"}
  on_cpu = np.asarray(run()(params))
  assert batch_rows() == {2}  # the decoding scan carries two rows
  monkeypatch.setattr(gpt2.layers, "on_cpu", lambda: False)
  assert batch_rows() == {1}
  np.testing.assert_array_equal(np.asarray(run()(params)), on_cpu)


def test_auto_attention_is_the_dense_kernel_on_cpu_and_activations_carry_logical_axes():
  from research.train import parallel  # pylint: disable=import-outside-toplevel
  ids = jnp.asarray(np.random.default_rng(2).integers(0, 37, (2, 19)))
  auto = gpt2.GPT2(gpt2.GPT2Config(**ODD))
  assert auto.cfg.attention == "auto"
  params = auto.init(jax.random.key(0), ids)["params"]
  dense = gpt2.GPT2(gpt2.GPT2Config(**ODD, attention="dense"))
  np.testing.assert_array_equal(jax.jit(auto.apply)({"params": params}, ids), jax.jit(dense.apply)({"params": params},
                                                                                                   ids))
  # Under the rules and a (data 2, fsdp 2, tensor 2) mesh, the residual stream is split over the
  # batch axes, the heads and MLP units over tensor; outside them there are no constraints.
  plain = str(jax.make_jaxpr(auto.apply)({"params": params}, ids))
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2, 2, 2), parallel.MESH_AXES)), \
      nn.logical_axis_rules(parallel.RULES):
    jaxpr = jax.make_jaxpr(auto.apply)({"params": params}, ids)
  specs = [str(eq.params["sharding"].spec) for eq in jaxpr.jaxpr.eqns if eq.primitive.name == "sharding_constraint"]
  for sub in jaxpr.jaxpr.eqns:  # the constraints inside the blocks' sub-programs
    for inner in sub.params.values():
      if hasattr(inner, "jaxpr"):
        specs += [str(e.params["sharding"].spec) for e in getattr(inner, "jaxpr", inner).eqns
                  if e.primitive.name == "sharding_constraint"]
  assert "sharding_constraint" not in plain
  assert "P(('data', 'fsdp'), None, None)" in specs  # (B, T, E)
  assert "P(('data', 'fsdp'), None, 'tensor', None)" in specs  # (B, T, H, D)
  assert "P(('data', 'fsdp'), None, 'tensor')" in specs  # (B, T, 4E)


def test_parameter_layout_is_the_one_of_earlier_checkpoints():
  params = nn.unbox(jax.eval_shape(lambda: gpt2.GPT2(gpt2.GPT2Config(**ODD)).init(jax.random.key(0),
                                                                                   jnp.zeros((1, 1), jnp.int32))))
  shapes = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(params["params"])[0]}
  assert {k: v for k, v in shapes.items() if k.startswith("['h_0']['attn']")} == {
      "['h_0']['attn']['key']['bias']": (3, 16), "['h_0']['attn']['key']['kernel']": (48, 3, 16),
      "['h_0']['attn']['out']['bias']": (48,), "['h_0']['attn']['out']['kernel']": (3, 16, 48),
      "['h_0']['attn']['query']['bias']": (3, 16), "['h_0']['attn']['query']['kernel']": (48, 3, 16),
      "['h_0']['attn']['value']['bias']": (3, 16), "['h_0']['attn']['value']['kernel']": (48, 3, 16)}
  assert len(shapes) == 2 + 2 * 16 + 2  # wte, wpe; 16 per block; ln_f
