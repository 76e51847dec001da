"""Few-shot prompting: the generated tasks, the prompt format, likelihood and greedy scoring against hand computations,
transformers' GPT-2 and plain generation; padding and batching; bad input."""

import string

import jax
import numpy as np
import pytest

from research.data import number_words, tokenizers
from research.evals import prompting
from research.models import gpt2

# Odd sizes: 3 heads of 7, a vocabulary that is no power of two.
CFG = gpt2.GPT2Config(vocab_size=101, n_positions=160, n_embd=21, n_layer=2, n_head=3)


@pytest.fixture(scope="module")
def lm():
  tokenizer = tokenizers.CharTokenizer(sorted(set(string.ascii_letters + string.digits + string.punctuation + " \n")))
  assert tokenizer.vocab_size <= CFG.vocab_size
  model = gpt2.GPT2(CFG)
  params = model.init(jax.random.key(3), np.zeros((1, 4), np.int32))["params"]
  return model, params, tokenizer


@pytest.fixture(scope="module")
def likelihood(lm):
  """number_words, k = 2, three queries scored in batches of 5 rows (12 rows: 3 batches, the last padded)."""
  model, params, tokenizer = lm
  return prompting.score(model, params, tokenizer, "number_words", 2, count=3, batch_size=5)


def _logprob(model, params, prompt_ids, continuation_ids):
  """Hand computation: the log-softmax of the model's logits for one sequence, summed over the continuation.

  One forward pass per sequence, padded at the end to the whole context (one compiled shape).
  """
  ids = np.zeros((1, CFG.n_positions), np.int32)
  ids[0, :len(prompt_ids) + len(continuation_ids)] = prompt_ids + continuation_ids
  logp = np.asarray(jax.nn.log_softmax(jax.jit(model.apply)({"params": params}, ids)[0]))  # (T, vocab)
  return sum(float(logp[len(prompt_ids) + i - 1, t]) for i, t in enumerate(continuation_ids))


def test_tasks_are_deterministic_and_their_answers_right():
  for task in prompting.TASKS:
    first = prompting.examples(task, 40, seed=5)
    assert first == prompting.examples(task, 40, seed=5), task
    assert first != prompting.examples(task, 40, seed=6), task
    for example in first:
      assert example.answer == example.candidates[0] and len(set(example.candidates)) == len(example.candidates)
      assert len(example.candidates) == prompting.CANDIDATES, example
  for example in prompting.examples("addition", 50):
    a, b = example.query.split(" plus ")
    assert int(example.answer) == int(a) + int(b) and 10 <= int(a) < 1000
  assert {len(e.query.split(" plus ")[0]) for e in prompting.examples("addition", 50)} == {2, 3}
  for example in prompting.examples("number_words", 50):
    assert number_words.to_number(example.answer) == int(example.query)
    assert example.answer == number_words.to_words(int(example.query))
  for example in prompting.examples("reversal", 50):
    assert example.answer == example.query[::-1] and example.query in prompting.WORDS
  for example in prompting.examples("unscramble", 50):
    assert sorted(example.query) == sorted(example.answer) and example.query != example.answer
    assert example.answer in prompting.WORDS
  for example in prompting.examples("cloze", 20):
    assert f"{example.query} {example.answer}." in prompting.cloze_sentences()
  # Demonstrations (train) and queries (test) never share a key.
  for task, key in (("addition", lambda e: e.query), ("reversal", lambda e: e.query),
                    ("unscramble", lambda e: e.answer), ("number_words", lambda e: e.query),
                    ("cloze", lambda e: e.query)):
    train = {key(e) for e in prompting.examples(task, 200, split="train")}
    assert not train & {key(e) for e in prompting.examples(task, 200, split="test")}, task


def test_prompt_format():
  demo = prompting.Example("12 plus 30", "42", ("42",))
  query = prompting.Example("47 plus 38", "85", ("85",))
  assert prompting.prompt("addition", [demo], query, 1) == "Add the numbers.\nQ: 12 plus 30\nA: 42\nQ: 47 plus 38\nA:"
  assert prompting.prompt("addition", [demo], query, 0) == "Add the numbers.\nQ: 47 plus 38\nA:"
  assert prompting.continuation("85") == " 85\n"
  text = prompting.document("reversal", 3, np.random.default_rng(0))
  lines = text.splitlines()
  assert lines[0] == "Reverse the word." and len(lines) == 7
  assert all(a == "A: " + q.removeprefix("Q: ")[::-1] for q, a in zip(lines[1::2], lines[2::2]))


def test_likelihood_equals_a_hand_computation_and_batching_changes_nothing(lm, likelihood):
  model, params, tokenizer = lm
  result = likelihood
  assert result["count"] == 3 and result["mode"] == "likelihood"
  for record in result["records"]:
    prompt_ids = tokenizer.encode(record["prompt"])
    hand = [_logprob(model, params, prompt_ids, tokenizer.encode(prompting.continuation(c)))
            for c in record["candidates"]]
    np.testing.assert_allclose(record["logprobs"], hand, rtol=1e-5, atol=1e-4)
    assert record["prediction"] == record["candidates"][int(np.argmax(hand))]
    assert record["correct"] == (record["prediction"] == record["answer"])
  assert result["accuracy"] == np.mean([r["correct"] for r in result["records"]])
  # The first query alone, in batches of one row, at another padded length: the same numbers.
  alone = prompting.score(model, params, tokenizer, "number_words", 2, count=1, batch_size=1, length=150)
  assert alone["records"][0]["prompt"] == result["records"][0]["prompt"]
  np.testing.assert_allclose(alone["records"][0]["logprobs"], result["records"][0]["logprobs"], rtol=1e-5, atol=1e-5)


def test_likelihood_equals_transformers(lm, likelihood, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model, params, tokenizer = lm
  gpt2.save_hf(str(tmp_path), CFG, params)
  theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
  for record in likelihood["records"]:
    prompt_ids = tokenizer.encode(record["prompt"])
    expected = []
    for candidate in record["candidates"]:
      ids = prompt_ids + tokenizer.encode(prompting.continuation(candidate))
      with torch.no_grad():
        logp = torch.log_softmax(theirs(torch.tensor([ids])).logits[0], -1).numpy()
      expected.append(sum(float(logp[i - 1, ids[i]]) for i in range(len(prompt_ids), len(ids))))
    np.testing.assert_allclose(record["logprobs"], expected, rtol=1e-5, atol=1e-4)


def test_generate_mode_equals_plain_generate(lm):
  model, params, tokenizer = lm
  result = prompting.score(model, params, tokenizer, "reversal", 1, mode="generate", count=3, batch_size=2,
                           max_new_tokens=6)
  for record in result["records"]:
    prompt_ids = tokenizer.encode(record["prompt"])
    plain = gpt2.generate(model, params, [prompt_ids], 6)[0][len(prompt_ids):]
    assert record["tokens"] == plain
    assert record["prediction"] == tokenizer.decode(plain).split("\n")[0].strip()
    assert record["correct"] == (record["prediction"] == record["answer"])


def test_bad_input(lm):
  model, params, tokenizer = lm
  with pytest.raises(ValueError, match="unknown task 'sums'; choose one of: addition"):
    prompting.score(model, params, tokenizer, "sums", 1)
  with pytest.raises(ValueError, match="k .* must be >= 0, got -1"):
    prompting.score(model, params, tokenizer, "addition", -1)
  with pytest.raises(ValueError, match="unknown mode 'sample'"):
    prompting.score(model, params, tokenizer, "addition", 1, mode="sample")
  with pytest.raises(ValueError, match="task number_words with k = 8: .* more than the model's context of 160"):
    prompting.score(model, params, tokenizer, "number_words", 8, count=2)
  with pytest.raises(ValueError, match="task cloze with k = 8: .* context of 160"):
    prompting.score(model, params, tokenizer, "cloze", 8, count=2, mode="generate")
  with pytest.raises(ValueError, match="length 200 must lie between .* and the context \\(160\\)"):
    prompting.score(model, params, tokenizer, "addition", 1, count=2, length=200)
  with pytest.raises(ValueError, match="unknown split"):
    prompting.examples("addition", 3, split="validation")
  with pytest.raises(ValueError, match="k = 3 demonstrations asked for, 1 given"):
    prompting.prompt("addition", prompting.examples("addition", 1), prompting.examples("addition", 1)[0], 3)
