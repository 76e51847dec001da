"""The in-context learning table end to end on its smoke preset (trained on python_docs_tasks); bad configs."""

import json

import pytest

from experiments.tables import in_context
from research.checks import ConfigError
from research.data import tokens
from research.evals import prompting


@pytest.mark.slow
def test_in_context_table_end_to_end(tmp_path):
  config = in_context.get_config("smoke")
  results = in_context.run(config, str(tmp_path))
  for suffix in (".md", ".png"):
    assert (tmp_path / f"in_context{suffix}").stat().st_size > 0, suffix
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["shots"] == [0, 2] and saved["modes"] == list(prompting.MODES)
  assert [r["size"] for r in results["rows"]] == ["1x16x2", "1x24x2"] and len(saved["runs"]["trained"]) == 2
  for row in results["rows"]:
    assert set(row["accuracy"]) == {f"{m}/{t}/{k}" for m in prompting.MODES for t in prompting.TASKS for k in (0, 2)}
    # Accuracies are fractions of the 3 queries.
    assert all(round(3 * a) == 3 * a for a in row["accuracy"].values()), row["accuracy"]
    two_shot = row["examples"]["likelihood/addition/2"]["prompt"]
    assert two_shot.startswith("Add the numbers.\nQ: ") and two_shot.count("Q: ") == 3 and two_shot.endswith("A:")
  text = (tmp_path / "in_context.md").read_text()
  assert "## likelihood: mean accuracy over 5 tasks" in text and "## generate" in text and "| K = 2 |" in text
  # The runs trained on the mixture: its train split holds python_docs and every task's documents.
  train = tokens.read_texts("python_docs_tasks", "train")
  for description in prompting.DESCRIPTIONS.values():
    assert sum(t.startswith(description + "\nQ: ") for t in train) > 0, description
  # A rerun reuses both models.
  again = in_context.run(config, str(tmp_path))
  assert len(again["runs"]["reused"]) == 2 and again["rows"][0]["accuracy"] == results["rows"][0]["accuracy"]


@pytest.mark.parametrize("field, value, words", [
    ("shots", (0, 12), "K = 12: prompts with their answers take up to"),
    ("shots", (0, -1), "shots must be distinct integers >= 0"),
    ("tasks", ("addition", "sums"), "unknown tasks value 'sums'"),
    ("modes", ("sample",), "unknown modes value 'sample'"),
    ("sizes", ("1:16",), "a size must be n_layer:n_embd:n_head"),
    ("count", 0, "count must be > 0"),
])
def test_bad_configs(field, value, words):
  config = in_context.get_config("smoke")
  config[field] = value
  with pytest.raises(ConfigError, match=words):
    in_context.check_config(config)
