"""The LSTM language model against torch.nn.LSTM (weights both ways), its state, generation, and its experiment."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import lstm

ODD = dict(vocab_size=37, width=23, n_layer=3)


def _params(cfg, seed=0, scale=1.0):
  """Initial parameters, kernels times `scale`, the embedding at std 1: outputs that vary from token to token."""
  params = nn.unbox(lstm.LSTM(cfg).init(jax.random.key(seed), jnp.zeros((1, 2), jnp.int32)))["params"]
  params = jax.tree.map(lambda x: x * scale if x.ndim == 2 else x, params)
  return {**params, "wte": {"embedding": params["wte"]["embedding"] * 50 / scale}}


def _to_torch(torch, cfg, params):
  """Our parameters in a torch Embedding + nn.LSTM + Linear (the bias in bias_ih, bias_hh zero)."""
  emb = torch.nn.Embedding(cfg.vocab_size, cfg.width)
  rnn = torch.nn.LSTM(cfg.width, cfg.width, cfg.n_layer, batch_first=True)
  head = torch.nn.Linear(cfg.width, cfg.vocab_size, bias=not cfg.tie_embeddings)
  t = lambda x: torch.tensor(np.asarray(x))
  with torch.no_grad():
    emb.weight.copy_(t(params["wte"]["embedding"]))
    for k in range(cfg.n_layer):
      layer = params[f"layer_{k}"]
      getattr(rnn, f"weight_ih_l{k}").copy_(t(layer["input"]["kernel"]).T)
      getattr(rnn, f"weight_hh_l{k}").copy_(t(layer["cell"]["recurrent_kernel"]).T)
      getattr(rnn, f"bias_ih_l{k}").copy_(t(layer["input"]["bias"]))
      getattr(rnn, f"bias_hh_l{k}").zero_()
    if cfg.tie_embeddings:
      head.weight = emb.weight
    else:
      head.weight.copy_(t(params["head"]["kernel"]).T)
      head.bias.copy_(t(params["head"]["bias"]))
  return emb, rnn, head


def _from_torch(cfg, emb, rnn, head):
  """torch's weights as our parameters (its two biases summed)."""
  n = lambda x: x.detach().numpy().copy()
  params = {"wte": {"embedding": n(emb.weight)}}
  for k in range(cfg.n_layer):
    w = lambda name, k=k: n(getattr(rnn, f"{name}_l{k}"))
    params[f"layer_{k}"] = {"input": {"kernel": w("weight_ih").T, "bias": w("bias_ih") + w("bias_hh")},
                            "cell": {"recurrent_kernel": w("weight_hh").T}}
  if not cfg.tie_embeddings:
    params["head"] = {"kernel": n(head.weight).T, "bias": n(head.bias)}
  return params


def _torch_forward(torch, emb, rnn, head, ids):
  with torch.no_grad():
    out, (h, c) = rnn(emb(torch.tensor(np.asarray(ids))))
    return head(out).numpy(), h.numpy(), c.numpy()


@pytest.mark.parametrize("tie", [True, False])
def test_logits_and_state_equal_torch_lstm_with_weights_moved_both_ways(tie):
  torch = pytest.importorskip("torch")
  cfg = lstm.LSTMConfig(**ODD, tie_embeddings=tie)
  model = lstm.LSTM(cfg)
  ids = np.random.default_rng(0).integers(0, 37, (3, 11))
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, state=model.init_state(3)))

  # Theirs -> ours: a torch model with two nonzero biases per layer and weights of std 0.5.
  torch.manual_seed(0)
  emb, rnn, head = _to_torch(torch, cfg, _params(cfg))
  for p in list(emb.parameters()) + list(rnn.parameters()) + list(head.parameters()):
    torch.nn.init.normal_(p, std=0.5)
  theirs, h, c = _torch_forward(torch, emb, rnn, head, ids)
  ours, state = forward(_from_torch(cfg, emb, rnn, head), jnp.asarray(ids))
  assert float(np.std(theirs)) > 0.5  # not a near-constant output that anything would match
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  np.testing.assert_allclose(state.h, h, atol=1e-5)
  np.testing.assert_allclose(state.c, c, atol=1e-5)

  # Ours -> theirs: our initialisation (forget bias 1, orthogonal U), kernels scaled up.
  params = _params(cfg, seed=1, scale=3.0)
  ours, state = forward(params, jnp.asarray(ids))
  theirs, h, c = _torch_forward(torch, *_to_torch(torch, cfg, params), ids)
  assert float(np.std(theirs)) > 0.1
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  np.testing.assert_allclose(state.c, c, atol=1e-5)


def test_init_and_parameter_counts():
  cfg = lstm.LSTMConfig(**ODD)
  params = _params(cfg)
  width = cfg.width
  for k in range(cfg.n_layer):
    bias = np.asarray(params[f"layer_{k}"]["input"]["bias"])  # gates i, f, g, o
    np.testing.assert_array_equal(bias, np.repeat([0.0, 1.0, 0.0, 0.0], width))
    u = np.asarray(params[f"layer_{k}"]["cell"]["recurrent_kernel"]).reshape(width, 4, width)
    for gate in range(4):
      np.testing.assert_allclose(u[:, gate].T @ u[:, gate], np.eye(width), atol=1e-5)
  per_layer = 4 * width * (width + width) + 4 * width
  assert lstm.count_params(cfg, embeddings=False) == 3 * per_layer
  assert lstm.count_params(cfg) == 3 * per_layer + 37 * width
  untied = lstm.LSTMConfig(**ODD, tie_embeddings=False)
  assert lstm.count_params(untied, embeddings=False) == 3 * per_layer
  assert lstm.count_params(untied) == 3 * per_layer + 2 * 37 * width + 37
  for target, layers in [(100_096, 2), (25_472, 2), (3 * per_layer, 3)]:
    width = lstm.width_for(target, layers)
    counts = {w: lstm.count_params(lstm.LSTMConfig(vocab_size=5, width=w, n_layer=layers), False)
              for w in (width - 1, width, width + 1)}
    assert min(counts, key=lambda w: abs(counts[w] - target)) == width
  assert lstm.width_for(3 * per_layer, 3) == 23


def test_state_carries_across_chunks_and_masked_tokens_leave_it_unchanged():
  cfg = lstm.LSTMConfig(**ODD)
  model, params = lstm.LSTM(cfg), _params(cfg, scale=3.0)
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 37, (2, 12)))
  whole = model.apply({"params": params}, ids)
  first, state = model.apply({"params": params}, ids[:, :5], state=model.init_state(2))
  second, _ = model.apply({"params": params}, ids[:, 5:], state=state)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole, atol=1e-5)
  # Three masked tokens in front (left padding): the rest is scored as if they were not there.
  padded = jnp.concatenate([jnp.full((2, 3), 7), ids], axis=1)
  mask = jnp.arange(15)[None] >= 3
  masked = model.apply({"params": params}, padded, mask=jnp.broadcast_to(mask, (2, 15)))
  np.testing.assert_allclose(masked[:, 3:], whole, atol=1e-5)
  assert np.abs(np.asarray(model.apply({"params": params}, padded)[:, 3:] - whole)).max() > 1e-3


def test_greedy_generation_is_the_argmax_of_the_full_forward_step_by_step():
  cfg = lstm.LSTMConfig(**ODD)
  model, params = lstm.LSTM(cfg), _params(cfg, scale=3.0)
  full = jax.jit(lambda x: model.apply({"params": params}, x))
  prompts = [[3, 14, 15, 9, 26, 5], [20, 7], [1, 2, 3]]
  ours = lstm.generate(model, params, prompts, max_new_tokens=10)
  for prompt, out in zip(prompts, ours):
    # The full forward over a fixed buffer of 16 (one program): position t sees tokens 0 .. t only.
    expected = list(prompt)
    for _ in range(10):
      buffer = np.zeros((1, 16), np.int32)
      buffer[0, :len(expected)] = expected
      expected.append(int(np.argmax(full(jnp.asarray(buffer))[0, len(expected) - 1])))
    assert out == expected
    assert lstm.generate(model, params, [prompt], max_new_tokens=10) == [out]  # alone, unpadded in its bucket
  assert len({tuple(o[-10:]) for o in ours}) > 1 and len(set(ours[0][-10:])) > 2  # the outputs vary
  array = lstm.generate(model, params, np.asarray([prompts[0]]), max_new_tokens=10)
  np.testing.assert_array_equal(array, [ours[0]])
  assert lstm.generate(model, params, [[4]], max_new_tokens=0) == [[4]]


def test_sampling_follows_the_key_and_top_k():
  cfg = lstm.LSTMConfig(**ODD)
  model, params = lstm.LSTM(cfg), _params(cfg, scale=3.0)
  prompt = [[3, 14, 15]]
  draw = lambda seed, **kw: lstm.generate(model, params, prompt, 12, key=jax.random.key(seed), temperature=1.5, **kw)
  assert draw(1) == draw(1) and draw(1) != draw(2)
  assert draw(3, top_k=1) == lstm.generate(model, params, prompt, 12)  # one candidate: greedy
  # 2000 one-token draws follow the softmax of the last logits at that temperature.
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(prompt))[0, -1], np.float64) / 1.5
  p = np.exp(logits - logits.max())
  out = lstm.generate(model, params, np.asarray(prompt * 2000), 1, key=jax.random.key(4), temperature=1.5)
  assert np.sort(p / p.sum())[-3] > 0.05  # several likely tokens: the check below can fail
  np.testing.assert_allclose(np.bincount(out[:, -1], minlength=37) / 2000, p / p.sum(), atol=0.03)


def test_bad_input():
  cfg = lstm.LSTMConfig(**ODD)
  model, params = lstm.LSTM(cfg), _params(cfg)
  with pytest.raises(ValueError, match="token id 37 is outside the vocabulary of 37"):
    lstm.generate(model, params, [[1, 37]], max_new_tokens=2)
  with pytest.raises(ValueError, match="every prompt needs at least one token"):
    lstm.generate(model, params, [[]], max_new_tokens=2)
  for bad, message in [(dict(max_new_tokens=-1), "max_new_tokens must be a non-negative integer, got -1"),
                       (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
                       (dict(top_k=-1), "top_k must be a non-negative integer"),
                       (dict(top_p=1.5), r"top_p must be in \[0, 1\]")]:
    with pytest.raises(ValueError, match=message):
      lstm.generate(model, params, [[1, 2]], **{"max_new_tokens": 2, "key": jax.random.key(0), **bad})
  with pytest.raises(ValueError, match="needs a key"):
    lstm.generate(model, params, [[1, 2]], 2, temperature=1.0)
  with pytest.raises(ValueError, match="width must be a positive integer, got 0"):
    lstm.LSTMConfig(width=0)
  with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
    lstm.LSTMConfig(dropout=1.0)


def test_experiment_trains_the_lstm_and_writes_samples(tmp_path):
  from experiments import gpt2 as experiment  # pylint: disable=import-outside-toplevel
  from research.tasks import gpt2 as gpt2_tasks  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  config.model, config.dropout = "lstm", 0.1
  results = experiment.run(config, str(tmp_path))
  assert results["step"] == 10 and results["config"]["model"] == "lstm"
  assert np.isfinite(results["val_loss"]) and results["val_loss"] < np.log(results["config"]["lstm_width"] * 10)
  np.testing.assert_allclose(results["val_bits_per_char"], results["val_loss"] / np.log(2), rtol=1e-9)
  assert (tmp_path / "samples.txt").read_text().count("--- sample") == config.num_prompts
  model = gpt2_tasks.make_model(config, 50)
  assert isinstance(model, lstm.LSTM) and model.cfg.width == 32 and model.cfg.n_layer == 2
  assert model.cfg.dropout == 0.1


def test_experiment_bad_input_is_one_line(tmp_path):
  from conftest import run_python  # pylint: disable=import-outside-toplevel
  proc = run_python(["-m", "experiments.gpt2", f"--workdir={tmp_path / 'w'}", "--config=experiments/gpt2.py:smoke",
                     "--config.model=rnn"])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0] == "error: unknown model 'rnn'; choose one of: gpt, lstm"
  assert not (tmp_path / "w").exists()


def test_the_experiment_checks_the_lstm_fields_and_gives_it_no_context_limit():
  from experiments import gpt2 as experiment  # pylint: disable=import-outside-toplevel
  from research.train import ConfigError  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  config.seq_len = 64  # beyond the GPT's n_positions of 32
  with pytest.raises(ConfigError, match="seq_len 64 exceeds n_positions 32"):
    experiment.check_config(config)
  config.model = "lstm"
  experiment.check_config(config)
  for field, value in (("lstm_width", 0), ("lstm_layers", -1)):
    bad = config.copy_and_resolve_references()
    bad[field] = value
    with pytest.raises(ConfigError, match=f"{field} must be > 0, got {value}"):
      experiment.check_config(bad)
