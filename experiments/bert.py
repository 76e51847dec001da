"""BERT: masked-language-model pre-training on the bundled Python documentation, then fine-tuning.

Run:
  python -m experiments.bert --workdir=/tmp/bert
  python -m experiments.bert --workdir=/tmp/bert_cls --config.mode=finetune --config.init=/tmp/bert
  python -m experiments.bert --workdir=/tmp/bert_hf --config.mode=finetune --config.init=/path/to/bert-base-uncased
  python -m experiments.bert --workdir=/tmp/bert_scratch --config.mode=finetune     # no pre-training
  python -m experiments.bert --workdir=/tmp/sst2 --config.mode=finetune --config.init=/tmp/bert \\
      --config.task_dataset=glue/sst2 --config.task_eval_split=validation             # needs a prepared glue/sst2
  python -m experiments.bert --workdir=/tmp/smoke --config=experiments/bert.py:smoke
  python -m experiments.bert --workdir=/scratch/runs/bert_base --config=experiments/bert.py:base   # GPU/TPU hosts
  python -m experiments.sweep --config=experiments/bert.py --workdir=/tmp/bert_cls3 --seeds=3 \\
      --config.mode=finetune --config.init=/tmp/bert --metric=accuracy                  # 3 seeds, one program
  python -m experiments.sweep --config=experiments/bert.py --workdir=/tmp/bert_dropout --seeds=2 \\
      --config.attention=reference --vary=dropout=0,0.1 --vary=attention_dropout=0,0.1 --metric=mlm_accuracy

mode=pretrain (the default) trains a small BERT (4 layers, 128 wide) by masked language
modelling on python_docs (every 10th documentation topic held out) with a WordPiece vocabulary
of 2,048 fitted here on the training text (research.data.tokenizers.fit_wordpiece: the same
vocabulary in every process). Each example is [CLS] + a random window of the token stream +
[SEP], cut at the end of its document and padded (research/data/encoder.py); 15% of the tokens
are chosen inside the compiled step from the step's key and corrupted by `mask_mix`. The
default spends its budget on updates: 1,500 of 32 sequences of 64 tokens, without dropout
(a model this small predicts little but frequent tokens for its first few hundred updates).
Writes checkpoints, tokenizer.json, results.json and hf/: the trained model as transformers
saves a BertForMaskedLM (config.json, model.safetensors, vocab.txt), which fine-tuning and
transformers both read. results.json holds mlm_accuracy, the held-out accuracy at the chosen
positions (`eval_mask_rate`, `eval_mask_mix`, a fixed key) of eval_sequences held-out windows,
and two baselines blind to context at those same positions: mlm_unigram_accuracy (always
predicting the training text's most frequent token) and mlm_best_constant_accuracy (always
predicting the single token most common at those positions, chosen with hindsight).

mode=finetune trains BertForSequenceClassification on `task_dataset` (the bundled
python_docs_topics: which of 5 parts of the documentation a paragraph is from; 629 paragraphs
to train on, 629 held out), starting from `init`: a pre-training workdir of this script, or
any directory where transformers saved a BERT with its vocab.txt; empty init starts from
random weights (with the vocabulary pre-training would fit). The model's sizes then come from
init's config.json; steps, batch size, learning rate and dropout from the `finetune` fields.
results.json holds the held-out `accuracy`.

The defaults, measured (the fine-tuning as 3-seed sweeps, mean ± standard error over seeds 0-2):

  pre-training               mlm_accuracy 16.0% over 1,437 held-out positions; at the same
                             positions the unigram baseline scores 0.9%, the best constant 7.5%
  fine-tuned from it         accuracy 66.8 ± 0.5%
  fine-tuned from scratch    accuracy 63.2 ± 0.8%  (3.9 standard errors below)
  at 200 updates of peak 1e-4 instead: 59.6 ± 0.4% from pre-training, 33.2 ± 1.7% from scratch

16% is twice the best constant but far from a fluent model: transformers' fill-mask on hf/ still
ranks "the" and "a" first whatever the context, which shows only further down its list.

Both modes are sweepable (experiments/sweep.py): the optimizer's injected hyperparameters and
the dropout rates `dropout` and `attention_dropout` are traced, so a grid over them trains as
one vmapped program (`attention_dropout` where the reference attention trains: named, or
chosen by "auto" for a rate above 0). A pre-training sweep exports each member's model to member_<i>/hf/, which
a fine-tuning run reads as --config.init=<workdir>/member_<i>.
"""

import dataclasses
import os

import jax
import ml_collections
import numpy as np

from research import data as data_lib
from research.data import encoder as encoder_data
from research.data import tokenizers, tokens
from research.models import attention as attention_lib
from research.models import bert
from research.models import layers
from research.tasks import bert as bert_tasks
from research.train import ConfigError, base_config, check_choice, check_common, check_positive, check_workdir
from research.train import cli, train

MODES = ("pretrain", "finetune")
# The text feature of sentence-classification datasets; others use "text".
SENTENCE_FEATURES = {"glue/sst2": "sentence", "glue/cola": "sentence"}


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A one-block model, a small vocabulary and a few steps of both modes, for tests."""
  config.vocab_size = 512
  config.tokenizer_train_chars = 100_000
  config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size = 32, 1, 2, 64
  config.max_position_embeddings = config.seq_len = 32
  config.steps, config.batch_size = 10, 8
  config.optimizer.warmup_steps = 2
  config.finetune.steps, config.finetune.batch_size, config.finetune.warmup_steps = 10, 8, 2
  config.log_every = config.eval_every = config.checkpoint_every = 5
  config.eval_sequences, config.eval_batch_size = 16, 8


def _base(config: ml_collections.ConfigDict) -> None:
  """BERT-base pre-training as Devlin et al. (2019) ran it: phase 1 of the paper's schedule (GPU/TPU hosts).

  12 layers, 768 wide, 12 heads, a 3,072-unit MLP, 512 positions, a WordPiece vocabulary of
  30,522 (the paper's size, fitted here on the pre-training text; 110M parameters), 256
  sequences of 128 tokens per update, Adam (decoupled weight decay 0.01, beta2 0.999, epsilon
  1e-6) at 1e-4 after 10,000 warmup updates, dropout 0.1, 1M updates. The paper trains 90% of
  its updates at 128 tokens and the last 10% at 512; this is the 128-token phase, priced at
  all 1M updates (the 512-token phase is --config.seq_len=512, over 4x the FLOPs per update).
  It decays the rate linearly to 0; here a cosine does. Masked LM only: the paper's
  next-sentence task is not this experiment's. Aims at the paper's BERT-base: GLUE score 79.6
  (Table 1) after fine-tuning, a fine-tuning step this experiment's finetune mode runs per task.
  English Wikipedia stands for the paper's BooksCorpus + Wikipedia (no BooksCorpus in TFDS).
  """
  config.dataset = "wikipedia/20230601.en"
  config.train_split, config.eval_split = "train[:99%]", "train[99%:]"
  config.max_train_tokens = 3_300_000_000  # the paper's 3.3B words, about as many word pieces
  config.vocab_size = 30_522
  config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size = 768, 12, 12, 3072
  config.max_position_embeddings = 512
  config.seq_len = 128
  config.dropout = config.attention_dropout = 0.1
  config.dtype = "bfloat16"
  config.steps, config.batch_size = 1_000_000, 256
  config.optimizer.learning_rate = 1e-4
  config.optimizer.b2, config.optimizer.eps = 0.999, 1e-6
  config.optimizer.warmup_steps = 10_000
  config.log_every = 100
  config.eval_every = config.checkpoint_every = 10_000
  config.eval_sequences, config.eval_batch_size = 8192, 256


PRESETS = {"smoke": _smoke, "base": _base}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (MLM pre-training of a small BERT on python_docs, minutes on 2 CPU cores).

  Presets: "smoke" for tests; "base" is BERT-base pre-training at the paper's scale (GPU/TPU
  hosts; `python -m launch plan bert` prices it).
  """
  config = base_config()
  config.mode = "pretrain"  # pretrain (masked LM) or finetune (sequence classification)
  config.init = ""  # finetune: a pre-training workdir of this script or a transformers BERT directory; "": random
  config.dataset = "python_docs"  # pre-training text (a bundled or TFDS catalog text dataset)
  config.train_split = "train"  # TFDS split pre-trained on
  config.eval_split = "test"  # TFDS split of the held-out MLM accuracy
  config.max_train_tokens = 0  # tokens of the training split used, tokenized once (0: the whole split)
  config.vocab_size = 2048  # WordPiece vocabulary trained on the pre-training text (when not read from init)
  config.tokenizer_train_chars = 20_000_000  # the WordPiece vocabulary is fitted on this many leading characters
  config.hidden_size = 128  # model width
  config.num_hidden_layers = 4  # encoder blocks
  config.num_attention_heads = 4  # attention heads
  config.intermediate_size = 512  # MLP width
  config.max_position_embeddings = 128  # rows of the learned position table
  config.type_vocab_size = 2  # segment types
  config.attention = "auto"  # one of research.models.attention.IMPLEMENTATIONS ("auto": dense on CPU, cuDNN/XLA on GPU)
  config.scan_layers = False  # the blocks as one nn.scan (one block compiled; parameters stacked on a layer axis)
  config.remat = "none"  # recompute activations in the backward pass: none, block or dots
  config.dropout = 0.0  # hidden_dropout_prob in pre-training: none, which learns faster in a short run
  config.attention_dropout = 0.0  # attention_probs_dropout_prob (reference attention); BERT's 0.1: ~12% slower steps
  config.seq_len = 64  # tokens per sequence, [CLS] and [SEP] included: half the cost of 128, twice the steps
  config.mask_rate = 0.15  # fraction of non-special, non-padding tokens chosen for the MLM loss
  config.mask_mix = "80/10/10"  # chosen tokens made [MASK] / kept / made random, in percent (Table 8's columns)
  config.eval_mask_rate = 0.15  # the held-out accuracy's chosen fraction: BERT's, alike for every run
  config.eval_mask_mix = "100/0/0"  # the held-out accuracy's mix: predicting [MASK]ed tokens, alike for every run
  config.eval_sequences = 512  # held-out sequences (consecutive windows of the eval split) scored
  config.eval_batch_size = 64  # sequences per evaluation batch
  config.task_dataset = "python_docs_topics"  # finetune: a sentence-classification dataset with text and label
  config.task_train_split = "train"  # finetune: TFDS split trained on
  config.task_eval_split = "test"  # finetune: TFDS split of the held-out accuracy
  config.steps = 1500  # optimizer updates (pretrain)
  config.batch_size = 32  # sequences per update (pretrain)
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-3  # peak, after warmup (pretrain)
  config.optimizer.b2 = 0.98  # as RoBERTa's small-batch settings
  config.optimizer.weight_decay = 0.01  # BERT's
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = 100  # pretrain
  config.optimizer.final_lr_fraction = 0.0
  config.optimizer.grad_clip_norm = 1.0
  config.finetune = ml_collections.ConfigDict()
  config.finetune.steps = 300  # finetune: optimizer updates (about 15 epochs of python_docs_topics' 629)
  config.finetune.batch_size = 32  # finetune: examples per update
  config.finetune.learning_rate = 3e-4  # finetune: peak learning rate (from scratch trains better here than at 1e-4)
  config.finetune.warmup_steps = 30  # finetune: linear warmup
  config.finetune.dropout = 0.1  # finetune: hidden_dropout_prob (BERT's)
  config.log_every = 100  # metrics and a progress line every this many steps
  config.eval_every = 250  # held-out evaluation every this many steps
  config.checkpoint_every = 250  # save a checkpoint every this many steps (and at the end)
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  """Raises ConfigError on a bad field, before anything is loaded, compiled or written."""
  check_choice("mode", config.mode, MODES)
  check_common(config)
  check_choice("attention", config.attention, attention_lib.IMPLEMENTATIONS)
  check_choice("remat", config.remat, layers.REMATS)
  for name in ("vocab_size", "tokenizer_train_chars", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "max_position_embeddings", "type_vocab_size", "eval_sequences",
               "eval_batch_size"):
    check_positive(name, config[name])
  for name in ("steps", "batch_size", "learning_rate", "warmup_steps"):
    check_positive(f"finetune.{name}", config.finetune[name], allow_zero=name in ("steps", "warmup_steps"))
  if not 0.0 <= config.finetune.dropout < 1.0:
    raise ConfigError(f"finetune.dropout must be in [0, 1), got {config.finetune.dropout}")
  check_positive("max_train_tokens", config.max_train_tokens, allow_zero=True)
  if config.seq_len < 3:
    raise ConfigError(f"seq_len must be >= 3 ([CLS], a token, [SEP]), got {config.seq_len}")
  for name in ("mask_mix", "eval_mask_mix"):
    try:
      bert.parse_mix(config[name])
    except ValueError as e:
      raise ConfigError(f"{name}: {e}") from None
  for name in ("mask_rate", "eval_mask_rate"):
    if not 0.0 < config[name] < 1.0:
      raise ConfigError(f"{name} must be in (0, 1), got {config[name]}")
  for name in ("dropout", "attention_dropout"):
    if not 0.0 <= config[name] < 1.0:
      raise ConfigError(f"{name} must be in [0, 1), got {config[name]}")
  if config.attention_dropout > 0 and config.attention not in ("reference", "auto"):
    raise ConfigError(f"attention_dropout {config.attention_dropout} needs attention=reference (or auto), the one "
                      f"implementation that forms the probabilities it drops; set --config.attention_dropout=0 for "
                      f"{config.attention!r}")
  if config.mode == "pretrain" and config.init:
    raise ConfigError("init is for mode=finetune; pre-training starts from random weights")
  if not config.init:
    if config.hidden_size % config.num_attention_heads:
      raise ConfigError(f"hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                        f"{config.num_attention_heads}")
    if config.seq_len > config.max_position_embeddings:
      raise ConfigError(f"seq_len {config.seq_len} exceeds max_position_embeddings {config.max_position_embeddings}")


def model_config(config, vocab_size: int, **overrides) -> bert.BertConfig:
  """The BertConfig of an experiment config's model fields."""
  return bert.BertConfig(vocab_size=vocab_size, hidden_size=config.hidden_size,
                         num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                         intermediate_size=config.intermediate_size,
                         max_position_embeddings=config.max_position_embeddings,
                         type_vocab_size=config.type_vocab_size, hidden_dropout_prob=config.dropout,
                         attention_probs_dropout_prob=config.attention_dropout, attention=config.attention,
                         scan_layers=config.scan_layers, remat=config.remat, dtype=config.dtype, **overrides)


def plan_inputs(config):
  """The task and one step's batch of `config` for `python -m launch plan`: shapes only, no text, no tokenizer files.

  The vocabulary is `vocab_size` (what a fitted WordPiece has), its special tokens the first
  ids as research.data.tokenizers.WordPieceTokenizer puts them; the batch is full sequences
  ([CLS] + seq_len - 2 tokens + [SEP], no padding) as research.data.encoder gives them.
  """
  if config.mode != "pretrain":
    raise ConfigError("launch plan covers pre-training (mode=pretrain); a fine-tuning run is its model's size")
  special = {token: i for i, token in enumerate(tokenizers.WordPieceTokenizer.SPECIAL)}
  cfg = model_config(config, config.vocab_size, pad_token_id=special["[PAD]"])
  task = bert_tasks.make_pretrain_task(config, cfg, special)
  shape = (config.batch_size, config.seq_len)
  return task, {"input_ids": np.full(shape, len(special), np.int32), "attention_mask": np.ones(shape, np.int32),
                "token_type_ids": np.zeros(shape, np.int32)}


def train_tokenizer(config):
  """WordPiece with vocab_size entries fitted on the leading tokenizer_train_chars of the pre-training text."""
  texts = tokens.read_texts(config.dataset, config.train_split, max_chars=config.tokenizer_train_chars)
  return tokenizers.make("wordpiece", texts, config.vocab_size)


def _init_dir(path: str) -> str:
  """The transformers directory of `init`: the directory itself, or a pre-training workdir's hf/."""
  for candidate in (path, os.path.join(path, "hf")):
    if os.path.exists(os.path.join(candidate, "config.json")):
      return candidate
  raise ConfigError(f"--config.init {path} is neither a transformers BERT directory (config.json) nor a "
                    "pre-training workdir of experiments.bert (hf/config.json)")


def mlm_data(config, tokenizer, special) -> tuple[encoder_data.EncoderWindows, dict[str, np.ndarray]]:
  """(training windows, held-out sequences): the pre-training split's random windows, and
  consecutive windows from the start of the evaluation split (eval_sequences of them at most)."""
  width = config.seq_len - 2
  train_stream = tokens.token_stream(config.dataset, config.train_split, tokenizer, [special["[SEP]"]],
                                     config.max_train_tokens)
  eval_stream = tokens.token_stream(config.dataset, config.eval_split, tokenizer, [special["[SEP]"]],
                                    config.eval_sequences * width)
  try:
    windows = encoder_data.EncoderWindows(train_stream, config.seq_len, special)
  except ValueError as e:
    raise ConfigError(f"dataset {config.dataset!r} split {config.train_split!r}: {e}") from None
  count = min(config.eval_sequences, len(eval_stream) // width)
  if count < 1:
    raise ConfigError(f"split {config.eval_split!r} of {config.dataset!r} has {len(eval_stream)} tokens, fewer "
                      f"than one sequence of {width}")
  held_out = encoder_data.EncoderWindows(eval_stream, config.seq_len, special).__getitems__(np.arange(count) * width)
  return windows, held_out


def pretrain(config, workdir: str, members=None) -> dict:
  """MLM pre-training; returns what results.json holds and exports the model to workdir/hf.

  A sweep (`members`) exports member i's model to workdir/member_<i>/hf.
  """
  data_lib.check_name(config.dataset)
  saved = os.path.join(workdir, "tokenizer.json")
  try:
    tokenizer = tokenizers.load(saved) if os.path.exists(saved) else train_tokenizer(config)
    special = tokenizer.special_ids()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  windows, eval_sequences = mlm_data(config, tokenizer, special)
  cfg = model_config(config, tokenizer.vocab_size, pad_token_id=special["[PAD]"])
  os.makedirs(workdir, exist_ok=True)
  tokenizers.save(saved, tokenizer)  # a resumed run uses the same vocabulary
  unigram = bert_tasks.most_frequent_token(windows.stream, tokenizer.vocab_size, special)
  task = bert_tasks.make_pretrain_task(config, cfg, special, unigram_token=unigram)
  run = train(task, config, workdir, windows, eval_sequences, members)
  params = run.state.params["params"]
  if members is None:
    exports = {"hf": params}
  else:  # the member axis leads every leaf
    exports = {os.path.join(f"member_{i}", "hf"): jax.tree.map(lambda x: x[i], params) for i in range(members.count)}
  for directory, member_params in exports.items():
    bert.save_hf(os.path.join(workdir, directory), cfg, member_params)
    tokenizer.save_vocab(os.path.join(workdir, directory))
  return run.results


def finetune_config(config) -> ml_collections.ConfigDict:
  """The config the loop runs in finetune mode: steps, batch size, learning rate and dropout from `finetune`."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.steps, config.batch_size = config.finetune.steps, config.finetune.batch_size
  config.dropout = config.finetune.dropout
  config.optimizer.learning_rate = config.finetune.learning_rate
  config.optimizer.warmup_steps = config.finetune.warmup_steps
  return config


def classification_texts(config, split: str) -> tuple[list[str], np.ndarray]:
  """(texts, int32 labels) of a split of config.task_dataset, a sentence-classification dataset.

  Shared with experiments/gpt2.py's fine-tuning, so both families read the same examples.
  """
  rows = data_lib.load(config.task_dataset, split)
  feature = SENTENCE_FEATURES.get(config.task_dataset, "text")
  if feature not in rows or "label" not in rows:
    raise ConfigError(f"dataset {config.task_dataset!r} has no {feature!r} and 'label' features "
                      f"(features: {', '.join(sorted(rows))})")
  texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in rows[feature]]
  return texts, np.asarray(rows["label"], np.int32)


def classification_examples(config, split: str, tokenizer, special) -> dict[str, np.ndarray]:
  """A classification split as encoder inputs plus `label`."""
  texts, labels = classification_texts(config, split)
  examples = encoder_data.frame(tokenizer.encode_batch(texts), config.seq_len, special)
  return {**examples, "label": labels}


def finetune(config, workdir: str, members=None) -> dict:
  """Sequence classification from `init`; returns what results.json holds."""
  config = finetune_config(config)
  data_lib.check_name(config.task_dataset)
  encoder = None
  try:
    if config.init:
      path = _init_dir(config.init)
      cfg, _ = bert.read_hf_config(path)
      tokenizer = tokenizers.make(f"bert:{path}")
      if config.seq_len > cfg.max_position_embeddings:
        raise ConfigError(f"seq_len {config.seq_len} exceeds max_position_embeddings {cfg.max_position_embeddings} "
                          f"of {path}")
    else:
      data_lib.check_name(config.dataset)
      tokenizer, cfg = train_tokenizer(config), None
    special = tokenizer.special_ids()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  train_examples = classification_examples(config, config.task_train_split, tokenizer, special)
  eval_examples = classification_examples(config, config.task_eval_split, tokenizer, special)
  num_labels = int(train_examples["label"].max()) + 1
  if cfg is None:
    cfg = model_config(config, tokenizer.vocab_size, pad_token_id=special["[PAD]"], num_labels=num_labels)
  else:
    cfg = dataclasses.replace(cfg, num_labels=num_labels, hidden_dropout_prob=config.dropout,
                              attention_probs_dropout_prob=config.attention_dropout, attention=config.attention,
                              scan_layers=config.scan_layers, remat=config.remat, dtype=config.dtype)
    encoder = bert.load_hf(path, scan_layers=cfg.scan_layers)[1]["bert"]
  task = bert_tasks.make_classifier_task(config, cfg, encoder)
  return train(task, config, workdir, train_examples, eval_examples, members).results


# What experiments.sample / experiments.evaluate may change in a finished run (they train nothing).
SAMPLING_FIELDS = ()


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  if config.mode == "finetune":
    return bert_tasks.FINETUNE_METRICS
  return bert_tasks.PRETRAIN_METRICS


def run(config, workdir: str, members=None) -> dict:
  """Pre-trains or fine-tunes the BERT described by `config` in `workdir`; returns what results.json holds.

  `members` (research.train.Members) trains a sweep of runs as one program (experiments/sweep.py).
  """
  check_config(config)
  check_workdir(workdir)
  mode = pretrain if config.mode == "pretrain" else finetune
  return mode(config, workdir, members)


if __name__ == "__main__":
  cli.main(__file__, run)
