"""The prefix LM: attention's prefix mask against a brute-force one, the GPT's prefix and its cached decoding,
the prefix-LM task's sequences and loss, and the encoder-decoder vs prefix LM table end to end."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python, run_table_smoke
from research.data import number_words
from research.models import attention, gpt2
from research.models.seq2seq import IGNORE
from research.tasks import prefix_lm, seq2seq

TOKENIZER = number_words.NumberWordsTokenizer()


def brute_force(q, k, v, prefix, key_valid):
  """softmax(Q K^T / sqrt(d)) V with every (query, key) pair decided one at a time: key j is visible to query i of
  row b where it is valid and j <= i or j < prefix[b]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, h, d = q.shape
  out = np.zeros_like(q)
  for n in range(b):
    for head in range(h):
      for i in range(t):
        visible = [j for j in range(k.shape[1]) if key_valid[n, j] and (j <= i or j < prefix[n])]
        scores = np.array([q[n, i, head] @ k[n, j, head] / np.sqrt(d) for j in visible])
        weights = np.exp(scores - scores.max())
        out[n, i, head] = (weights / weights.sum()) @ v[n, visible, head]
  return out


def test_prefix_mask_matches_brute_force():
  q, k, v = (jax.random.normal(key, (4, 7, 2, 8)) for key in jax.random.split(jax.random.key(0), 3))
  prefix = np.array([0, 1, 4, 7])  # none, the first key only, a prefix, every key
  key_valid = np.ones((4, 7), bool)
  key_valid[1, 6] = False  # a padding key stays hidden after the prefix
  key_valid[2, 2] = False  # and inside it
  expected = brute_force(q, k, v, prefix, key_valid)
  mask = jnp.asarray(key_valid)
  for implementation in ("reference", "xla", "auto"):
    got = attention.attend(q, k, v, implementation=implementation, causal=True, mask=mask, prefix=jnp.asarray(prefix))
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5, err_msg=implementation)
  # The cache's layout, queries starting part-way (cache slots 3 .. 6 of 7).
  swap = lambda x: jnp.swapaxes(x, 1, 2)
  cached = attention.cached_attention(q[:, 3:], swap(k), swap(v), causal=True, mask=mask, q_start=3,
                                      prefix=jnp.asarray(prefix))
  np.testing.assert_allclose(np.asarray(cached), expected[:, 3:], atol=2e-5)
  # A prefix of 0 is the plain causal mask.
  causal = attention.dot_product_attention(q, k, v, causal=True, mask=mask)
  np.testing.assert_allclose(np.asarray(causal[0]), expected[0], atol=2e-5)
  assert not np.allclose(np.asarray(causal[2]), expected[2], atol=1e-3)
  for implementation in ("dense", "flash"):
    with pytest.raises(ValueError, match="a prefix needs the reference"):
      attention.attend(q, k, v, implementation=implementation, causal=True, prefix=jnp.asarray(prefix))


def _tiny_gpt():
  """The model, its parameters and its forward pass `apply(params, tokens, prefix_length=None)`, compiled (eager
  applies compile every operation again for every new shape)."""
  model = gpt2.GPT2(gpt2.GPT2Config(vocab_size=TOKENIZER.vocab_size, n_positions=24, n_embd=32, n_layer=2, n_head=4))
  params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
  apply = jax.jit(lambda p, tokens, prefix_length=None: model.apply({"params": p}, tokens, prefix_length=prefix_length))
  return model, params, apply


def test_gpt_prefix_is_bidirectional_and_the_rest_causal():
  _, params, apply = _tiny_gpt()
  tokens = np.asarray([[7, 4, 5, 1, 17, 41, 25, 1]])  # "412", its end, "four hundred twelve", its end
  prefix = np.asarray([4])
  logits = lambda t: apply(params, t, prefix)
  base = logits(tokens)
  changed_source = logits(np.where(np.arange(8) == 2, 9, tokens))  # the source's last digit
  changed_target = logits(np.where(np.arange(8) == 5, 30, tokens))  # a target token
  assert not np.allclose(base[0, :2], changed_source[0, :2], atol=1e-4)  # earlier prefix positions see it
  np.testing.assert_allclose(base[0, :5], changed_target[0, :5], atol=1e-6)  # earlier positions never do
  assert not np.allclose(base[0, 5:], changed_target[0, 5:], atol=1e-4)
  causal = apply(params, tokens)  # no prefix: the first position sees itself alone
  assert not np.allclose(base[0, 0], causal[0, 0], atol=1e-4)


def test_cached_decoding_is_greedy_over_full_prefix_lm_passes():
  model, params, apply = _tiny_gpt()
  # Large random weights, so that greedy decoding writes varied tokens (an initialised model writes one).
  def perturb(params):
    leaves, tree = jax.tree.flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.key(2), len(leaves))
    return jax.tree.unflatten(tree, [x + jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  params = jax.jit(perturb)(params)
  prompts = [TOKENIZER.encode("412"), TOKENIZER.encode("90817")]  # different lengths: left-padded in the cache
  decoded = gpt2.generate(model, params, prompts, 6, prompt_visible=True)
  for prompt, row in zip(prompts, decoded):
    tokens = list(prompt)
    for _ in range(6):  # greedy by full passes: every position recomputed, the prompt as the prefix
      # One length for every pass: the zeros after the last token change none of its logits (causal there).
      padded = np.zeros((1, 12), np.int32)
      padded[0, :len(tokens)] = tokens
      out = apply(params, padded, np.asarray([len(prompt)]))
      tokens.append(int(np.argmax(out[0, len(tokens) - 1])))
    assert row == tokens
    assert len(set(row[len(prompt):])) > 1
  assert gpt2.generate(model, params, prompts, 6) != decoded  # a causal prompt gives other tokens


def test_encode_pairs_and_the_loss_ignores_the_source():
  batch = prefix_lm.encode_pairs(TOKENIZER, ["412", "7"], ["four hundred twelve", "seven"], 8, 8)
  source, target = TOKENIZER.encode("412"), TOKENIZER.encode("four hundred twelve")
  assert batch["input_ids"][0].tolist() == source + target + [0] * 8
  assert batch["prefix_length"].tolist() == [4, 2]
  assert batch["labels"][0].tolist() == [IGNORE] * 3 + target + [IGNORE] * 9
  assert batch["labels"][1].tolist() == [IGNORE] + TOKENIZER.encode("seven") + [IGNORE] * 13
  # The same pairs' target side in the encoder-decoder's arrays: the same tokens.
  pairs = seq2seq.encode_pairs(TOKENIZER, ["412", "7"], ["four hundred twelve", "seven"], 8, 8)
  np.testing.assert_array_equal(np.sort(batch["labels"][batch["labels"] != IGNORE]),
                                np.sort(pairs["labels"][pairs["labels"] != IGNORE]))

  from experiments import seq2seq as experiment  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  config.model, config.n_layer, config.n_embd, config.n_head = "gpt", 1, 16, 2
  config.max_source_length = config.max_target_length = 8
  task = prefix_lm.make_task(config, TOKENIZER, {})
  params = task.init(jax.random.key(0), batch)
  loss, metrics = task.loss(params, batch, jax.random.key(1), False)
  model = gpt2.GPT2(prefix_lm.model_config(config, TOKENIZER.vocab_size))
  logits = model.apply(params, batch["input_ids"], prefix_length=batch["prefix_length"])
  logp = np.asarray(jax.nn.log_softmax(logits))
  targets = [(0, i, t) for i, t in enumerate(target, start=3)] + [(1, i, t) for i, t in
                                                                   enumerate(TOKENIZER.encode("seven"), start=1)]
  by_hand = -np.mean([logp[row, i, t] for row, i, t in targets])
  assert float(loss) == pytest.approx(by_hand, rel=1e-5) and float(metrics["nll"]) == pytest.approx(by_hand, rel=1e-5)
  # Nothing flows back from the source's (or the padding's) predictions.
  grad = np.asarray(jax.grad(lambda x: seq2seq.target_metrics(x, batch["labels"], 0.0)[0])(logits))
  counted = batch["labels"] != IGNORE
  assert np.all(grad[~counted] == 0) and np.all(np.abs(grad[counted]).sum(-1) > 0)


@pytest.mark.slow
def test_table_end_to_end(tmp_path):
  # The smoke preset: both models, two seeds each, 6 steps, 6 examples of each split decoded.
  results, text = run_table_smoke("seq2seq_vs_prefix_lm", tmp_path)
  encoder_decoder, gpt = results["rows"]
  assert (encoder_decoder["model"], gpt["model"]) == ("encoder_decoder", "prefix_lm")
  assert (encoder_decoder["params"], gpt["params"]) == (301_440, 304_320)  # t5-tiny and a 6 x 64 GPT
  assert f"| {gpt['params']:,} |" in text and f"| {encoder_decoder['params']:,} |" in text
  for row in results["rows"]:
    assert row["seeds"] == [0, 1]
    for split in ("test", "test_longer"):
      em, bleu = np.asarray(row[f"{split}_exact_match"]), np.asarray(row[f"{split}_bleu"])
      assert em.shape == bleu.shape == (2,) and np.all((0 <= em) & (em <= 1)) and np.all((0 <= bleu) & (bleu <= 100))
      assert row[f"{split}_bleu_mean"] == pytest.approx(bleu.mean())
  assert (tmp_path / "models" / "prefix_lm" / "results.json").exists()


@pytest.mark.parametrize("flags,message", [
    (["--config.gpt=2:64:4"], "the GPT 2:64:4 has 104,384 parameters, -65.4% from the encoder-decoder's 301,440"),
    (["--config.gpt=6:64:5"], "n_embd 64 is not divisible by n_head 5"),
    (["--config.warmup_steps=4000"], "warmup_steps must be in [0, steps 600)"),
])
def test_bad_flags_are_one_line(tmp_path, flags, message):
  proc = run_python(["-m", "experiments.tables.seq2seq_vs_prefix_lm", f"--outdir={tmp_path / 'out'}", *flags])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr[-2000:]
  assert not (tmp_path / "out").exists()
