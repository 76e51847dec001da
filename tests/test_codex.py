"""experiments.codex: completion truncation, the smoke run end to end, results.json, bad input; the evaluation's parts."""

import json

import numpy as np
import pytest
from conftest import run_python

from experiments import codex as codex_experiment
from experiments.tables import codex as codex_table
from research.data import python_functions, tokenizers, tokens
from research.evals import codex
from research.models import gpt2
from research.train import ConfigError


@pytest.mark.parametrize("completion, body", [
    ("    return n + 5\n\ndef other(x):\n    return x\n", "    return n + 5"),
    ("    return n + 5\n\n\nThe for statement is used to iterate", "    return n + 5"),
    ("    total = 0\n\n    for v in values:\n        total += v\n    return total\nprint(1)",
     "    total = 0\n\n    for v in values:\n        total += v\n    return total"),
    ("    return x<|endoftext|>    return y", "    return x"),
    ("class A:\n    pass", ""),
    ("    return (a +\n            b)\n    \n", "    return (a +\n            b)"),
])
def test_truncate_keeps_the_body(completion, body):
  assert codex.truncate(completion) == body


def test_execute_scores_references_and_syntax_errors():
  problems = python_functions.problems("test")[:2]
  completions = [[problems[0]["solution"], "    return (", "    return None"], [problems[1]["solution"]] * 3]
  results = codex.execute(problems, completions, timeout_s=5.0, workers=2)
  assert [[r.status for r in rs] for rs in results] == [["passed", "error", "failed"], ["passed"] * 3]
  assert results[0][1].message.startswith("SyntaxError")  # found by compiling, no sandbox started
  rates = codex.pass_rates(results, ks=(1, 2, 10))
  assert set(rates) == {"pass@1", "pass@2"}  # k above n = 3 left out
  assert rates["pass@1"] == pytest.approx((1 / 3 + 1) / 2)
  assert rates["pass@2"] == pytest.approx((2 / 3 + 1) / 2)  # 1 - C(2, 2) / C(3, 2) for one correct of three


def test_sample_is_one_shape_and_deterministic():
  texts = tokens.read_texts("python_docs_code", "train")[:50]
  tokenizer = tokenizers.make("bpe", texts, 300)
  problems = python_functions.problems("test")[:3]
  prompts = codex.prompt_ids(tokenizer, problems)
  # Without the prompt's last newline: the model writes the newline and the body's indentation as one token.
  assert all(p["prompt"].endswith('"""\n') for p in problems)
  assert prompts == [tokenizer.encode(p["prompt"][:-1]) for p in problems]
  prompt_tokens, mask = codex.left_padded(prompts)
  assert prompt_tokens.shape[1] == gpt2.bucket(max(map(len, prompts)))
  assert (mask.sum(1) == list(map(len, prompts))).all() and mask[:, -1].all()
  assert all(prompt_tokens[i, -len(p):].tolist() == p for i, p in enumerate(prompts))
  model = gpt2.GPT2(gpt2.GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=prompt_tokens.shape[1] + 8,
                                    n_embd=16, n_layer=1, n_head=2))
  import jax  # pylint: disable=import-outside-toplevel
  params = model.init(jax.random.key(0), prompt_tokens[:1])["params"]
  first = codex.sample(model, params, tokenizer, problems, 5, 1.0, jax.random.key(1), max_new_tokens=8, batch_size=4)
  again = codex.sample(model, params, tokenizer, problems, 5, 1.0, jax.random.key(1), max_new_tokens=8, batch_size=4)
  assert [len(c) for c in first] == [5, 5, 5] and first == again
  assert all(c == codex.truncate(c) for cs in first for c in cs)
  with pytest.raises(ValueError, match="exceed the context"):
    codex.sample(model, params, tokenizer, problems, 2, 1.0, jax.random.key(1), max_new_tokens=9)


def test_python_docs_code_holds_the_train_problems_only():
  train = tokens.read_texts("python_docs_code", "train")
  problems = {s: python_functions.problems(s) for s in ("train", "test")}
  documents = set(train)
  assert all(p["prompt"] + p["solution"] in documents for p in problems["train"])
  assert not any(p["prompt"] in t for p in problems["test"] for t in train if t.startswith("def "))
  assert tokens.read_texts("python_docs_code", "test") == tokens.read_texts("python_docs", "test")


def test_test_problems_take_one_template_at_a_time():
  chosen = codex_experiment.test_problems(29)
  assert len({p["template"] for p in chosen}) == 29
  assert len(codex_experiment.test_problems(0)) == len(python_functions.problems("test"))


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
  config = codex_experiment.get_config("smoke")
  results = codex_experiment.run(config, str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["num_problems"] == 3 and saved["samples_per_problem"] == 4 and saved["temperatures"] == [0.5, 1.0]
  for name in ("t0.5", "t1"):
    scores = saved["pass_at_k"][name]
    assert set(scores) >= {"pass@1", "statuses", "correct"} and "pass@10" not in scores  # k <= n = 4 only
    assert sum(scores["statuses"].values()) == 3 * 4 and 0.0 <= scores["pass@1"] <= 1.0
  assert set(saved["best_temperature"]) == {"pass@1"} and np.isfinite(saved["val_loss"])
  text = (tmp_path / "samples.txt").read_text()
  assert text.count("######## temperature") == 2 and text.count("==== ") == 6 and "---- FAILED (" in text
  assert (tmp_path / "pretrain" / "hf" / "config.json").exists()
  # A rerun trains nothing and samples nothing: the same numbers from the kept stage and evaluation.
  again = codex_experiment.run(config, str(tmp_path))
  assert again["pass_at_k"] == results["pass_at_k"]


@pytest.mark.parametrize("field, value, words", [
    ("temperatures", (0.2, 0.0), "temperatures must be numbers in"),
    ("temperatures", (0.5, 0.5), "temperatures must be distinct"),
    ("samples_per_problem", 0, "samples_per_problem must be > 0"),
    ("tokenizer", "char", "tokenizer 'char' cannot encode"),
    ("mode", "finetune", "mode must be 'pretrain'"),
    ("top_p", 0.0, "top_p must be in"),
    ("max_new_tokens", 200, "leaves no room for a prompt"),
])
def test_bad_configs(field, value, words):
  config = codex_experiment.get_config("smoke")
  config[field] = value
  with pytest.raises(ConfigError, match=words):
    codex_experiment.check_config(config)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
  out = run_python(["-m", "experiments.codex", f"--workdir={tmp_path / 'run'}", "--config=experiments/codex.py:smoke",
                    "--config.samples_per_problem=0"])
  assert out.returncode == 2 and out.stderr.strip().splitlines() == ["error: samples_per_problem must be > 0, got 0"]
  assert not (tmp_path / "run").exists()


def _fake_run(rates: dict, seed: int) -> dict:
  """A row member's metrics as experiments.codex.evaluate returns them: {temperature: (pass@1, pass@10)}."""
  return {"seed": seed, "val_loss": 3.0 + seed, "num_problems": 5, "best_temperature": {},
          "pass_at_k": {f"t{t:g}": {"pass@1": p1, "pass@10": p10} for t, (p1, p10) in rates.items()}}


def test_table_report_picks_each_k_its_best_temperature():
  table = codex_table.get_config("smoke")
  config = codex_table.run_config(table, "python_docs_code")
  config.samples_per_problem = 10
  rows = {"text + code": [_fake_run({0.2: (0.30, 0.40), 0.8: (0.20, 0.60)}, s) for s in (0, 1)],
          "text only": [_fake_run({0.2: (0.0, 0.0), 0.8: (0.01, 0.05)}, s) for s in (0, 1)]}
  text = codex_table.markdown(rows, table, config, [0.2, 0.8], [1, 10], 60.0)
  assert "| 0.2 | 30.0 ± 0.0 | 40.0 ± 0.0 |" in text and "|  | best T = 0.2 | best T = 0.8 |" in text
  assert "| text + code | 3.500 ± 0.500 | 30.0 ± 0.0 (T = 0.2; 30.0, 30.0) | 60.0 ± 0.0 (T = 0.8; 60.0, 60.0) |" in text
  assert "| text only | 3.500 ± 0.500 | 1.0 ± 0.0 (T = 0.8; 1.0, 1.0) | 5.0 ± 0.0 (T = 0.8; 5.0, 5.0) |" in text
  figure = codex_table.figure(rows, [0.2, 0.8], [1, 10])
  assert len(figure.axes) == 2 and len(figure.axes[1].patches) == 4  # two bars (pass@1, pass@10) per row


@pytest.mark.parametrize("field, value, words", [
    ("seeds", 0, "seeds must be > 0"),
    ("preset", "tiny", "unknown preset 'tiny'"),
    ("temperatures", (0.5, 3.0), "temperatures must be numbers in"),
])
def test_table_bad_configs(field, value, words):
  table = codex_table.get_config("smoke")
  table[field] = value
  with pytest.raises(ConfigError, match=words):
    codex_table.check_config(table)
