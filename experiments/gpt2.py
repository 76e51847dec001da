"""A GPT-2 language model trained by research.train on the bundled Python documentation text.

Run:
  python -m experiments.gpt2 --workdir=/tmp/gpt2
  python -m experiments.gpt2 --workdir=/tmp/gpt2_rope --config.positions=rope
  python -m experiments.gpt2 --workdir=/tmp/gpt2_bpe --config.tokenizer=bpe
  python -m experiments.gpt2 --workdir=/tmp/lstm --config.model=lstm
  python -m experiments.gpt2 --workdir=/tmp/smoke --config=experiments/gpt2.py:smoke
  python -m experiments.sweep --config=experiments/gpt2.py --workdir=/tmp/gpt2_dropout --seeds=2 \\
      --vary=dropout=0,0.1,0.2
  python -m experiments.gpt2 --workdir=/tmp/shakespeare --config.dataset=tiny_shakespeare --config.eval_split=validation
  python -m experiments.gpt2 --workdir=/scratch/runs/gpt2_124m --config=experiments/gpt2.py:124m   # GPU/TPU hosts
  python -m experiments.gpt2 --workdir=/tmp/gpt2_cls --config.mode=finetune --config.init=/tmp/gpt2
  python -m experiments.gpt2 --workdir=/tmp/gpt2_cls_scratch --config.mode=finetune     # no pre-training
  python -m experiments.sweep --config=experiments/gpt2.py --workdir=/tmp/gpt2_lm_weight --seeds=3 \\
      --config.mode=finetune --config.init=/tmp/gpt2 --vary=lm_weight=0,0.5 --metric=accuracy

By default a small character-level GPT (4 layers, 128 wide, context 128) on python_docs (the
English documentation topics shipped with CPython; every 10th topic held out). Each training
example is a random window of seq_len + 1 tokens of the training text. Writes into the workdir:
checkpoints, TensorBoard events (the validation loss every eval_every steps under eval/),
tokenizer.json, samples.txt (continuations of held-out prompts), results.json with
val_loss (nats per token) and val_bits_per_char (val_bits_per_token for BPE), and hf/: the
trained model as transformers' GPT-2 (config.json, generation_config.json, model.safetensors)
with the tokenizer's files (research.data.tokenizers `save_vocab`), which
`AutoTokenizer.from_pretrained` and `AutoModelForCausalLM.from_pretrained` load, and
`research.models.gpt2.load_hf` reads back (a sweep writes member_<i>/hf/). Only GPT-2's own
layout has one: the LSTM, rope or alibi positions and grouped-query attention write no hf/.

`--config.model=lstm` trains an LSTM language model (research/models/lstm.py, sized by the
lstm_* fields) in place of the GPT, by the same loop on the same windows, with the same
optimizer, evaluation and samples; the GPT's fields are then unused.

Any TFDS text dataset works the same way (tiny_shakespeare, lm1b, c4, pg19 from the catalog,
prepared where there is a network): each split is tokenized once into a token stream cached
under the TFDS data directory (research/data/tokens.py), and training windows are drawn from
it. Preset `124m` is GPT-2 small (124M parameters) with GPT-2's own BPE on c4, set as nanoGPT's
124M recipe (about 0.5M tokens per update, 600k updates, AdamW 6e-4 with betas (0.9, 0.95),
weight decay 0.1, warmup 2000, cosine to 6e-5, bf16); it needs GPT-2's vocab.json and
merges.txt in ./gpt2 (or --config.tokenizer=gpt2:DIR) and a prepared c4 (BUILD.md).

mode=finetune fine-tunes the GPT on sequence classification as Radford et al. (2018) do
(research/models/gpt_classifier.py): each paragraph of `task_dataset` (by default the bundled
python_docs_topics, read as experiments.bert reads it: which of 5 parts of the documentation a
paragraph is from) becomes [start] + its first seq_len - 2 tokens + [extract], three new rows of
the token embedding; a linear head on the extract token's final state is trained with the
task's cross-entropy plus `lm_weight` times the LM loss of the same sequences (traced, so
`--vary=lm_weight=...` sweeps it in one program). `init` is a pre-training workdir of this
script: its tokenizer.json and hf/ give the vocabulary and the weights (the model's sizes come
from hf/config.json); empty init starts from a random GPT with the vocabulary pre-training would
fit. Steps, batch size, learning rate and dropout come from the `finetune` fields; results.json
holds the held-out `accuracy`. Only the GPT fine-tunes (not the LSTM).
"""

import dataclasses
import os

import jax
import ml_collections
import numpy as np

from experiments import bert as bert_experiment
from research import data as data_lib
from research.data import tokenizers, tokens
from research.tasks import gpt2
from research.train import ConfigError, base_config, check_choice, check_common, check_positive, check_workdir
from research.train import cli, train
from research.models import attention as attention_lib
from research.models import gpt2 as gpt2_model
from research.models import gpt_classifier
from research.models import layers

def _smoke(config: ml_collections.ConfigDict) -> None:
  """One tiny block, a few steps and short samples, for tests."""
  config.n_layer, config.n_embd, config.n_head = 1, 32, 2
  config.lstm_width, config.lstm_layers = 32, 2
  config.n_positions = config.seq_len = 32
  config.steps, config.batch_size = 10, 8
  config.optimizer.warmup_steps = 2
  config.log_every = config.eval_every = config.checkpoint_every = 5
  config.eval_windows, config.eval_batch_size = 16, 8
  config.num_prompts, config.prompt_len, config.sample_tokens = 2, 8, 8
  config.finetune.steps, config.finetune.batch_size, config.finetune.warmup_steps = 10, 8, 2


def _124m(config: ml_collections.ConfigDict) -> None:
  """GPT-2 small with GPT-2's BPE on c4, as nanoGPT's 124M recipe (GPU/TPU hosts)."""
  config.dataset, config.eval_split = "c4", "validation"  # TFDS c4/en
  config.max_train_tokens = 10_000_000_000  # a 20 GB stream of uint16 ids, tokenized once
  config.tokenizer = "gpt2:gpt2"  # GPT-2's vocab.json and merges.txt in ./gpt2
  config.vocab_multiple = 64  # 50,257 -> 50,304 rows, as nanoGPT
  config.n_layer, config.n_embd, config.n_head = 12, 768, 12
  config.n_positions = config.seq_len = 1024
  config.dtype = "bfloat16"
  # nanoGPT: 12 windows x 5 microbatches x 8 GPUs = 480 windows (491,520 tokens) per update.
  config.batch_size, config.grad_accum = 480, 5
  config.steps = 600_000
  config.optimizer.learning_rate = 6e-4
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.95
  config.optimizer.warmup_steps = 2000
  config.optimizer.final_lr_fraction = 0.1  # to 6e-5
  config.log_every = 10
  config.eval_every = config.checkpoint_every = 2000
  config.eval_windows, config.eval_batch_size = 1000, 40
  config.num_prompts, config.prompt_len, config.sample_tokens = 4, 32, 256


PRESETS = {"smoke": _smoke, "124m": _124m}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (a character-level GPT on python_docs, minutes on 2 CPU cores); preset "smoke" for tests."""
  config = base_config()
  config.mode = "pretrain"  # pretrain (language modelling) or finetune (sequence classification)
  config.init = ""  # finetune: a pre-training workdir of this script (tokenizer.json, hf/); "": a random GPT
  config.dataset = "python_docs"  # a text dataset: python_docs (bundled) or a TFDS catalog one (c4, lm1b, ...)
  config.train_split = "train"  # TFDS split trained on
  config.eval_split = "test"  # TFDS split of the validation loss and the sample prompts
  config.max_train_tokens = 0  # tokens of the training split used, tokenized once (0: the whole split)
  config.tokenizer = "char"  # char, bpe (byte-level BPE trained on the training text) or gpt2:<dir>
  config.bpe_vocab_size = 2048  # bpe: vocabulary size
  config.tokenizer_train_chars = 20_000_000  # char / bpe: fitted on this many leading characters of the train split
  config.vocab_multiple = 1  # the model's vocabulary is rounded up to a multiple of this (64: faster matmuls)
  config.model = "gpt"  # the network: gpt (research/models/gpt2.py) or lstm (research/models/lstm.py)
  config.n_layer = 4  # transformer blocks
  config.n_embd = 128  # model width
  config.n_head = 4  # attention heads
  config.num_kv_heads = 0  # key/value heads for grouped-query attention; 0: n_head
  config.n_positions = 128  # context of the learned position table
  config.positions = "learned"  # learned (GPT-2), rope or alibi
  config.attention = "auto"  # one of research.models.attention.IMPLEMENTATIONS ("auto": dense on CPU, cuDNN/XLA on GPU)
  config.scan_layers = False  # the blocks as one nn.scan (one block compiled; parameters stacked on a layer axis)
  config.remat = "none"  # recompute activations in the backward pass: none, block or dots
  config.lstm_width = 256  # lstm: embedding and hidden width
  config.lstm_layers = 2  # lstm: stacked LSTM layers
  config.lstm_tie_embeddings = True  # lstm: the output projection is the token embedding's transpose
  config.dropout = 0.0  # gpt: embedding and residual dropout; lstm: on each layer's input and the last output (traced)
  config.seq_len = 128  # tokens per training window (the model sees seq_len, predicts the next of each)
  config.steps = 1500  # optimizer updates
  config.batch_size = 16  # windows per update
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3  # peak, after warmup
  config.optimizer.b2 = 0.99  # as nanoGPT's small character models
  config.optimizer.weight_decay = 0.1  # kernels only (research.optim.decay_mask)
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = 100
  config.optimizer.final_lr_fraction = 0.1
  config.optimizer.grad_clip_norm = 1.0
  config.log_every = 100  # metrics and a progress line every this many steps
  config.eval_every = 500  # validation loss every this many steps
  config.checkpoint_every = 500  # save a checkpoint every this many steps (and at the end)
  config.eval_windows = 256  # held-out windows (non-overlapping, from the start of the test split) scored
  config.eval_batch_size = 64  # windows per evaluation batch
  config.num_prompts = 4  # held-out prompts continued in samples.txt
  config.prompt = ""  # a text every sample continues instead of the held-out prompts ("": those)
  config.prompt_len = 32  # tokens per prompt
  config.sample_tokens = 96  # new tokens per sample (prompt + sample must fit n_positions for learned positions)
  config.temperature = 0.8  # sampling temperature (0: greedy)
  config.top_k = 0  # top-k sampling; 0: off
  config.task_dataset = "python_docs_topics"  # finetune: a sentence-classification dataset with text and label
  config.task_train_split = "train"  # finetune: TFDS split trained on
  config.task_eval_split = "test"  # finetune: TFDS split of the held-out accuracy
  config.lm_weight = 0.5  # finetune: weight of the auxiliary LM loss (Radford et al. 2018's lambda; traced)
  config.finetune = ml_collections.ConfigDict()
  config.finetune.steps = 300  # finetune: optimizer updates (experiments.bert's budget)
  config.finetune.batch_size = 32  # finetune: examples per update
  config.finetune.learning_rate = 3e-4  # finetune: peak learning rate
  config.finetune.warmup_steps = 30  # finetune: linear warmup
  config.finetune.dropout = 0.1  # finetune: embedding and residual dropout (GPT's 0.1)
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  """Raises ConfigError on a bad field, before anything is loaded, compiled or written."""
  check_choice("mode", config.mode, MODES)
  check_common(config)
  check_choice("model", config.model, gpt2.MODELS)
  check_choice("positions", config.positions, ("learned", "rope", "alibi"))
  check_choice("attention", config.attention, attention_lib.IMPLEMENTATIONS)
  check_choice("remat", config.remat, layers.REMATS)
  if not (config.tokenizer in ("char", "bpe") or config.tokenizer.startswith("gpt2:")):
    raise ConfigError(f"unknown tokenizer {config.tokenizer!r}; choose one of: {', '.join(tokenizers.KINDS)}")
  for name in ("n_layer", "n_embd", "n_head", "n_positions", "seq_len", "eval_windows", "eval_batch_size",
               "num_prompts", "prompt_len", "sample_tokens", "bpe_vocab_size", "tokenizer_train_chars",
               "vocab_multiple", "lstm_width", "lstm_layers"):
    check_positive(name, config[name])
  check_positive("max_train_tokens", config.max_train_tokens, allow_zero=True)
  check_positive("temperature", config.temperature, allow_zero=True)
  check_positive("top_k", config.top_k, allow_zero=True)
  if config.n_embd % config.n_head:
    raise ConfigError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
  if config.num_kv_heads and config.n_head % config.num_kv_heads:
    raise ConfigError(f"n_head {config.n_head} is not a multiple of num_kv_heads {config.num_kv_heads}")
  context = config.model == "gpt" and config.positions == "learned"  # an LSTM has no context limit
  if context and config.seq_len > config.n_positions:
    raise ConfigError(f"seq_len {config.seq_len} exceeds n_positions {config.n_positions}")
  if context and config.prompt_len + config.sample_tokens > config.n_positions:
    raise ConfigError(f"prompt_len + sample_tokens ({config.prompt_len + config.sample_tokens}) exceeds "
                      f"n_positions {config.n_positions}")
  if not 0.0 <= config.dropout < 1.0:
    raise ConfigError(f"dropout must be in [0, 1), got {config.dropout}")
  if config.mode == "pretrain" and config.init:
    raise ConfigError("init is for mode=finetune; pre-training starts from random weights")
  if config.mode == "finetune":
    if config.model != "gpt":
      raise ConfigError(f"mode=finetune fine-tunes the GPT, not model={config.model!r}")
    if not (isinstance(config.lm_weight, (int, float)) and config.lm_weight >= 0):
      raise ConfigError(f"lm_weight must be a number >= 0, got {config.lm_weight!r}")
    for name in ("steps", "batch_size", "learning_rate", "warmup_steps"):
      check_positive(f"finetune.{name}", config.finetune[name], allow_zero=name in ("steps", "warmup_steps"))
    if not 0.0 <= config.finetune.dropout < 1.0:
      raise ConfigError(f"finetune.dropout must be in [0, 1), got {config.finetune.dropout}")
    if config.seq_len < 3:
      raise ConfigError(f"seq_len must be >= 3 (start, a token, extract), got {config.seq_len}")


def _encode_prompt(config, tokenizer) -> np.ndarray:
  """config.prompt's token ids, checked against the tokenizer and the model's context."""
  try:
    ids = tokenizer.encode(config.prompt)
  except (KeyError, ValueError) as e:
    raise ConfigError(f"prompt {config.prompt!r} cannot be encoded by the run's tokenizer: {e}") from None
  if not ids:
    raise ConfigError(f"prompt {config.prompt!r} encodes to no tokens")
  if config.model == "gpt" and config.positions == "learned" and len(ids) + config.sample_tokens > config.n_positions:
    raise ConfigError(f"prompt ({len(ids)} tokens) + sample_tokens ({config.sample_tokens}) exceeds n_positions "
                      f"{config.n_positions}")
  return np.asarray(ids, np.int32)


def plan_inputs(config):
  """The task and one step's batch of `config` for `python -m launch plan`: shapes only, no text, no tokenizer files.

  The vocabulary is GPT-2's 50,257 for `gpt2:` tokenizers, bpe_vocab_size for `bpe` and 256 for
  `char` (a character vocabulary's size depends on the text; 256 bounds it), padded to
  vocab_multiple as a run pads it.
  """
  if config.mode != "pretrain":
    raise ConfigError("launch plan covers pre-training (mode=pretrain); a fine-tuning run is its model's size")
  vocab = 50_257 if config.tokenizer.startswith("gpt2:") else config.bpe_vocab_size if config.tokenizer == "bpe" \
      else 256
  vocab_size = -(-vocab // config.vocab_multiple) * config.vocab_multiple
  task = gpt2.make_task(config, vocab_size, lambda ids: "", [], "char" if config.tokenizer == "char" else "token")
  return task, {"tokens": np.zeros((config.batch_size, config.seq_len + 1), np.int32)}


def _separator(tokenizer) -> list[int]:
  """Ids put after every document: GPT-2's <|endoftext|> for its own vocabulary, else a blank line."""
  end_of_text = tokenizer.tokenizer.token_to_id("<|endoftext|>") if tokenizer.kind == "gpt2" else None
  return [end_of_text] if end_of_text is not None else tokenizer.encode("\n\n")


MODES = ("pretrain", "finetune")

# What experiments.sample / experiments.evaluate may change in a finished run (they train nothing).
SAMPLING_FIELDS = ("eval_windows", "eval_batch_size", "num_prompts", "prompt_len", "prompt", "sample_tokens",
                   "temperature", "top_k")


def _tokenizer(config, saved: str):
  """The run's tokenizer: the one saved in `saved` (a resumed run's), else the config's, fitted on the training text."""
  try:
    if os.path.exists(saved):
      return tokenizers.load(saved)
    if config.tokenizer in ("char", "bpe"):
      texts = tokens.read_texts(config.dataset, config.train_split, max_chars=config.tokenizer_train_chars)
      return tokenizers.make(config.tokenizer, texts, config.bpe_vocab_size)
    return tokenizers.make(config.tokenizer)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  if config.mode == "finetune":
    return gpt2.FINETUNE_METRICS
  return gpt2.lm_metric_names(_unit(config))


def _unit(config) -> str:
  """What one token of the run's tokenizer is, naming val_bits_per_<unit>."""
  return "char" if config.tokenizer == "char" else "token"


def run(config, workdir: str, members=None) -> dict:
  """Trains (mode pretrain) or fine-tunes (mode finetune) the GPT described by `config` in `workdir`.

  Returns what results.json holds. `members` (research.train.Members) trains a sweep of runs as
  one program (experiments/sweep.py).
  """
  check_config(config)
  check_workdir(workdir)
  if config.mode == "finetune":
    return finetune(config, workdir, members)
  data_lib.check_name(config.dataset)
  saved = os.path.join(workdir, "tokenizer.json")
  tokenizer = _tokenizer(config, saved)
  separator = _separator(tokenizer)
  span = config.seq_len + 1
  train_stream = tokens.token_stream(config.dataset, config.train_split, tokenizer, separator,
                                     config.max_train_tokens)
  # Held-out windows: consecutive, non-overlapping, from the start of the evaluation split.
  eval_stream = tokens.token_stream(config.dataset, config.eval_split, tokenizer, separator,
                                    config.eval_windows * span + config.prompt_len)
  try:
    windows = data_lib.TokenWindows(train_stream, config.seq_len)
  except ValueError as e:
    raise ConfigError(f"dataset {config.dataset!r} split {config.train_split!r}: {e}") from None
  count = min(config.eval_windows, len(eval_stream) // span)
  if count < 1:
    raise ConfigError(f"split {config.eval_split!r} of {config.dataset!r} has {len(eval_stream)} tokens, fewer "
                      f"than one window of seq_len + 1 = {span}")
  eval_windows = {"tokens": np.asarray(eval_stream[:count * span], np.int32).reshape(count, span)}
  prompts = [np.asarray(eval_stream[i * 997 % (len(eval_stream) - config.prompt_len):][:config.prompt_len],
                        np.int32) for i in range(config.num_prompts)]
  if config.prompt:
    prompts = [_encode_prompt(config, tokenizer)] * config.num_prompts
  os.makedirs(workdir, exist_ok=True)
  tokenizers.save(saved, tokenizer)  # a resumed run decodes with the same vocabulary
  vocab_size = -(-tokenizer.vocab_size // config.vocab_multiple) * config.vocab_multiple
  task = gpt2.make_task(config, vocab_size, tokenizer.decode, prompts, _unit(config))
  run = train(task, config, workdir, windows, eval_windows, members)
  export_hf(config, workdir, tokenizer, vocab_size, run.state.params["params"], members)
  return run.results


def export_hf(config, workdir: str, tokenizer, vocab_size: int, params, members=None) -> None:
  """Writes workdir/hf (member i of a sweep: workdir/member_<i>/hf): transformers' GPT-2 and tokenizer files.

  config.json's vocab_size is the model's (the tokenizer's rounded up to vocab_multiple).
  Nothing is written for a model without a transformers layout (the LSTM; rope, alibi, grouped-query attention).
  """
  if config.model != "gpt":
    return
  cfg = gpt2_model.model_config(config, vocab_size)
  if cfg.positions != "learned" or cfg.kv_heads != cfg.n_head:
    return
  if members is None:
    exports = {"hf": params}
  else:  # the member axis leads every leaf
    exports = {os.path.join(f"member_{i}", "hf"): jax.tree.map(lambda x: x[i], params) for i in range(members.count)}
  for directory, member_params in exports.items():
    gpt2_model.save_hf(os.path.join(workdir, directory), cfg, member_params, tokenizer.end_of_text)
    tokenizer.save_vocab(os.path.join(workdir, directory))


# The config the loop runs in finetune mode: BERT's rule (steps, batch, learning rate, warmup, dropout from `finetune`).
finetune_config = bert_experiment.finetune_config


def _pretrained(config):
  """(tokenizer, GPT2Config, parameters) of the pre-training workdir `init`."""
  saved, hf_dir = os.path.join(config.init, "tokenizer.json"), os.path.join(config.init, "hf")
  if not (os.path.exists(saved) and os.path.exists(os.path.join(hf_dir, "config.json"))):
    raise ConfigError(f"--config.init {config.init} is not a pre-training workdir of experiments.gpt2 "
                      "(tokenizer.json and hf/config.json)")
  try:
    model, params = gpt2_model.load_hf(hf_dir, attention=config.attention, scan_layers=config.scan_layers,
                                       remat=config.remat, dtype=config.dtype)
    tokenizer = tokenizers.load(saved)
  except ValueError as e:
    raise ConfigError(f"--config.init {config.init}: {e}") from None
  if config.seq_len > model.cfg.n_positions:
    raise ConfigError(f"seq_len {config.seq_len} exceeds n_positions {model.cfg.n_positions} of {config.init}")
  return tokenizer, model.cfg, params


def classification_batch(config, split: str, tokenizer, special: gpt_classifier.SpecialTokens) -> dict[str, np.ndarray]:
  """A split of task_dataset as padded [start] text [extract] sequences (seq_len tokens) with their labels."""
  texts, labels = bert_experiment.classification_texts(config, split)
  rows = [gpt_classifier.classification_input(ids[:config.seq_len - 2], special)
          for ids in tokenizer.encode_batch(texts)]
  return {**gpt_classifier.pad(rows, config.seq_len)._asdict(), "label": labels}


def finetune(config, workdir: str, members=None) -> dict:
  """Sequence classification by the GPT, from `init` or from scratch; returns what results.json holds."""
  config = finetune_config(config)
  data_lib.check_name(config.task_dataset)
  transformer = None
  if config.init:
    tokenizer, cfg, transformer = _pretrained(config)
    cfg = dataclasses.replace(cfg, embd_pdrop=config.dropout, resid_pdrop=config.dropout)
  else:
    data_lib.check_name(config.dataset)
    tokenizer = _tokenizer(config, os.path.join(workdir, "tokenizer.json"))
    vocab_size = -(-tokenizer.vocab_size // config.vocab_multiple) * config.vocab_multiple
    cfg = gpt2_model.model_config(config, vocab_size)
  special = gpt_classifier.special_tokens(cfg.vocab_size)
  train_examples = classification_batch(config, config.task_train_split, tokenizer, special)
  eval_examples = classification_batch(config, config.task_eval_split, tokenizer, special)
  num_labels = int(train_examples["label"].max()) + 1
  cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size + gpt_classifier.NUM_SPECIAL)
  os.makedirs(workdir, exist_ok=True)
  tokenizers.save(os.path.join(workdir, "tokenizer.json"), tokenizer)
  task = gpt2.make_finetune_task(config, cfg, num_labels, transformer)
  return train(task, config, workdir, train_examples, eval_examples, members).results


if __name__ == "__main__":
  cli.main(__file__, run)
