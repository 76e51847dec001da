"""The GPT-2 experiment's hf/ export: transformers loads its tokenizer and model, which equal ours; load_hf reads it back."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trees import assert_trees_equal
from research.data import tokenizers, tokens
from research.models import gpt2
from research.train import Members
from research.train.checkpoint import Checkpointer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# One worker runs this file: its session fixture trains two models.
pytestmark = pytest.mark.xdist_group("gpt2_export")

PROMPT_CHARS, NEW_TOKENS = 12, 8


def _config(tokenizer: str):
  from experiments import gpt2 as experiment  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  config.tokenizer, config.bpe_vocab_size = tokenizer, 300
  config.tokenizer_train_chars = config.max_train_tokens = 50_000  # a quick tokenizer and token stream
  config.n_embd, config.n_head = 24, 3  # 3 heads of 8
  config.vocab_multiple = 64 if tokenizer == "char" else 1  # char: the model has rows no character uses
  return config


def _final_params(workdir):
  checkpoints = Checkpointer(str(workdir), keep=1)
  try:
    _, state = checkpoints.restore_saved()
  finally:
    checkpoints.close()
  return state["params"]["params"]


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def runs(tmp_path_factory):
  """{tokenizer kind: (config, hf directory, final params, tokenizer)} of smoke runs.

  The char run is a sweep of two seeds; its member 1 (exported to member_1/hf) is the one returned.
  """
  from experiments import gpt2 as experiment  # pylint: disable=import-outside-toplevel
  out = {}
  for kind, members in (("char", Members(seeds=(0, 1))), ("bpe", None)):
    config, workdir = _config(kind), tmp_path_factory.mktemp(kind)
    experiment.run(config, str(workdir), members=members)
    params, hf = _final_params(workdir), workdir / "hf"
    if members is not None:
      params, hf = jax.tree.map(lambda x: x[1], params), workdir / "member_1" / "hf"
    out[kind] = config, hf, params, tokenizers.load(str(workdir / "tokenizer.json"))
  return out


@pytest.fixture(scope="module")
def sample_text():
  return "".join(tokens.read_texts("python_docs", "test", max_chars=3000))[:3000]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_transformers_tokenizer_encodes_and_decodes_as_ours(runs, sample_text, tmp_path, kind):
  _, hf, _, ours = runs[kind]
  theirs = transformers.AutoTokenizer.from_pretrained(str(hf))
  ids = ours.encode(sample_text)
  assert len(set(ids)) > 30 and theirs(sample_text)["input_ids"] == ids
  assert theirs.decode(ids) == ours.decode(ids) == sample_text
  if kind == "char":  # an unseen character is the unknown id 0 in both
    assert theirs("a\u2603b")["input_ids"] == ours.encode("a\u2603b") and ours.encode("\u2603") == [0]
  else:  # GPT-2's file layout: ours reads it back as gpt2:<dir>, and the tokenizer.json transformers 5 saves
    assert tokenizers.make(f"gpt2:{hf}").encode(sample_text) == ids
    assert theirs.eos_token_id == ours.end_of_text == 0
    theirs.save_pretrained(str(tmp_path))
    assert not (tmp_path / "vocab.json").exists() and tokenizers.make(f"gpt2:{tmp_path}").encode(sample_text) == ids


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_transformers_model_gives_our_logits_and_greedy_continuation(runs, sample_text, kind):
  config, hf, params, ours = runs[kind]
  hf = str(hf)
  model, loaded = gpt2.load_hf(hf)
  assert_trees_equal(loaded, params)  # the run's final parameters, bit for bit
  vocab = -(-ours.vocab_size // config.vocab_multiple) * config.vocab_multiple
  assert model.cfg.vocab_size == vocab and (vocab > ours.vocab_size) == (kind == "char")
  theirs = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
  assert type(theirs).__name__ == "GPT2LMHeadModel" and theirs.config.vocab_size == vocab
  ids = np.asarray(ours.encode(sample_text)[:config.n_positions])[None]  # (1, n_positions)
  logits = np.asarray(gpt2.GPT2(gpt2.model_config(config, vocab)).apply({"params": params}, jnp.asarray(ids)))
  with torch.no_grad():
    np.testing.assert_allclose(theirs(torch.tensor(ids)).logits.numpy(), logits, atol=1e-4)
  assert float(np.std(logits)) > 0.05
  # Greedy continuation of a prompt tokenized by transformers.
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
  prompt = tokenizer(sample_text[:PROMPT_CHARS], return_tensors="pt")
  with torch.no_grad():
    out = theirs.generate(**prompt, max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist()
  expected = gpt2.generate(model, params, [ours.encode(sample_text[:PROMPT_CHARS])], NEW_TOKENS)[0]
  stop = theirs.generation_config.eos_token_id
  assert stop == ours.end_of_text
  if stop is not None and stop in expected[prompt["input_ids"].shape[1]:]:  # transformers stops at end-of-text
    expected = expected[:expected.index(stop, prompt["input_ids"].shape[1]) + 1]
  assert out == expected and len(out) > prompt["input_ids"].shape[1]


def test_every_sweep_member_is_exported(runs):
  _, hf, params, _ = runs["char"]
  sweep = hf.parent.parent
  _, member_0 = gpt2.load_hf(str(sweep / "member_0" / "hf"))
  assert not np.array_equal(member_0["wte"]["embedding"], params["wte"]["embedding"])  # two seeds
  assert json.loads((sweep / "member_0" / "hf" / "config.json").read_text())["eos_token_id"] is None  # no end-of-text
  assert not (sweep / "hf").exists()


def test_gpt2_files_are_written_back_as_they_encode(tmp_path, sample_text):
  texts = tokens.read_texts("python_docs", "train", max_chars=100_000)
  (tmp_path / "files").mkdir()
  tokenizers.make("bpe", texts, 400).tokenizer.save_model(str(tmp_path / "files"))  # GPT-2's layout
  files = tokenizers.make(f"gpt2:{tmp_path / 'files'}")
  files.save_vocab(str(tmp_path / "hf"))
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  assert theirs(sample_text)["input_ids"] == files.encode(sample_text)
  assert (tmp_path / "hf" / "vocab.json").read_text() == (tmp_path / "files" / "vocab.json").read_text()


@pytest.mark.parametrize("field,value", [("model", "lstm"), ("positions", "rope"), ("num_kv_heads", 1)])
def test_no_transformers_layout_writes_nothing(tmp_path, field, value):
  from experiments import gpt2 as experiment  # pylint: disable=import-outside-toplevel
  config = _config("char")
  config[field] = value
  experiment.export_hf(config, str(tmp_path), tokenizers.make("char", ["ab"]), 64, params=None)
  assert not list(tmp_path.iterdir())


def test_bert_reads_the_tokenizer_json_transformers_saves(tmp_path, sample_text):
  texts = tokens.read_texts("python_docs", "train", max_chars=100_000)
  ours = tokenizers.make("wordpiece", texts, 400)
  ours.save_vocab(str(tmp_path / "vocab"))
  transformers.AutoTokenizer.from_pretrained(str(tmp_path / "vocab")).save_pretrained(str(tmp_path / "saved"))
  assert not (tmp_path / "saved" / "vocab.txt").exists()
  again = tokenizers.make(f"bert:{tmp_path / 'saved'}")
  assert again.encode(sample_text) == ours.encode(sample_text) and again.special_ids() == ours.special_ids()
  (tmp_path / "gpt2").mkdir()
  (tmp_path / "gpt2" / "tokenizer.json").write_text((tmp_path / "saved" / "tokenizer.json").read_text())
  with pytest.raises(ValueError, match="holds a WordPiece tokenizer, not BPE"):
    tokenizers.make(f"gpt2:{tmp_path / 'gpt2'}")
