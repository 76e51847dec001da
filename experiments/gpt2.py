"""A GPT-2 language model trained by research.train on the bundled Python documentation text.

Run:
  python -m experiments.gpt2 --workdir=/tmp/gpt2
  python -m experiments.gpt2 --workdir=/tmp/gpt2_rope --config.positions=rope
  python -m experiments.gpt2 --workdir=/tmp/gpt2_bpe --config.tokenizer=bpe
  python -m experiments.gpt2 --workdir=/tmp/smoke --config=experiments/gpt2.py:smoke

By default a small character-level GPT (4 layers, 128 wide, context 128) on python_docs (the
English documentation topics shipped with CPython; every 10th topic held out). Each training
example is a random window of seq_len + 1 tokens of the training text. Writes into the workdir:
checkpoints, TensorBoard events (the validation loss every eval_every steps under eval/),
tokenizer.json, samples.txt (continuations of held-out prompts) and results.json with
val_loss (nats per token) and val_bits_per_char (val_bits_per_token for BPE).
"""

import os

import ml_collections
import numpy as np

from research import data as data_lib
from research.data import tokenizers
from research.models import gpt2
from research.train import ConfigError, base_config, check_choice, check_common, check_positive, check_workdir
from research.train import cli, train
from research.models import attention as attention_lib

PRESETS = ("smoke",)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (a character-level GPT on python_docs, minutes on 2 CPU cores); preset "smoke" for tests."""
  config = base_config()
  config.dataset = "python_docs"  # a text dataset: python_docs (bundled) or tiny_shakespeare / lm1b (TFDS)
  config.tokenizer = "char"  # char, bpe (byte-level BPE trained on the training text) or gpt2:<dir>
  config.bpe_vocab_size = 2048  # bpe: vocabulary size
  config.n_layer = 4  # transformer blocks
  config.n_embd = 128  # model width
  config.n_head = 4  # attention heads
  config.num_kv_heads = 0  # key/value heads for grouped-query attention; 0: n_head
  config.n_positions = 128  # context of the learned position table
  config.positions = "learned"  # learned (GPT-2), rope or alibi
  config.attention = "reference"  # one of research.models.attention.IMPLEMENTATIONS
  config.dropout = 0.0  # embedding and residual dropout
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
  config.prompt_len = 32  # tokens per prompt
  config.sample_tokens = 96  # new tokens per sample (prompt + sample must fit n_positions for learned positions)
  config.temperature = 0.8  # sampling temperature (0: greedy)
  config.top_k = 0  # top-k sampling; 0: off
  tokens = [t for t in preset.split(",") if t]
  unknown = [t for t in tokens if t not in PRESETS]
  if unknown:
    raise ValueError(f"unknown preset {unknown[0]!r}; choose from: {', '.join(PRESETS)}")
  if "smoke" in tokens:
    config.n_layer, config.n_embd, config.n_head = 1, 32, 2
    config.n_positions = config.seq_len = 32
    config.steps, config.batch_size = 10, 8
    config.optimizer.warmup_steps = 2
    config.log_every = config.eval_every = config.checkpoint_every = 5
    config.eval_windows, config.eval_batch_size = 16, 8
    config.num_prompts, config.prompt_len, config.sample_tokens = 2, 8, 8
  return config


def check_config(config) -> None:
  """Raises ConfigError on a bad field, before anything is loaded, compiled or written."""
  check_common(config)
  check_choice("positions", config.positions, ("learned", "rope", "alibi"))
  check_choice("attention", config.attention, attention_lib.IMPLEMENTATIONS)
  if not (config.tokenizer in ("char", "bpe") or config.tokenizer.startswith("gpt2:")):
    raise ConfigError(f"unknown tokenizer {config.tokenizer!r}; choose one of: {', '.join(tokenizers.KINDS)}")
  for name in ("n_layer", "n_embd", "n_head", "n_positions", "seq_len", "eval_windows", "eval_batch_size",
               "num_prompts", "prompt_len", "sample_tokens", "bpe_vocab_size"):
    check_positive(name, config[name])
  check_positive("temperature", config.temperature, allow_zero=True)
  check_positive("top_k", config.top_k, allow_zero=True)
  if config.n_embd % config.n_head:
    raise ConfigError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
  if config.num_kv_heads and config.n_head % config.num_kv_heads:
    raise ConfigError(f"n_head {config.n_head} is not a multiple of num_kv_heads {config.num_kv_heads}")
  if config.positions == "learned" and config.seq_len > config.n_positions:
    raise ConfigError(f"seq_len {config.seq_len} exceeds n_positions {config.n_positions}")
  if config.positions == "learned" and config.prompt_len + config.sample_tokens > config.n_positions:
    raise ConfigError(f"prompt_len + sample_tokens ({config.prompt_len + config.sample_tokens}) exceeds "
                      f"n_positions {config.n_positions}")
  if not 0.0 <= config.dropout < 1.0:
    raise ConfigError(f"dropout must be in [0, 1), got {config.dropout}")


def _texts(split) -> list[str]:
  return [t.decode() if isinstance(t, bytes) else str(t) for t in split["text"]]


def run(config, workdir: str) -> dict:
  """Trains the GPT described by `config` in `workdir`; returns what results.json holds."""
  check_config(config)
  check_workdir(workdir)
  train_split, test_split = data_lib.load(config.dataset, "train"), data_lib.load(config.dataset, "test")
  if "text" not in train_split:
    raise ConfigError(f"dataset {config.dataset!r} has no text (features: {', '.join(sorted(train_split))})")
  saved = os.path.join(workdir, "tokenizer.json")
  try:
    tokenizer = tokenizers.load(saved) if os.path.exists(saved) else \
        tokenizers.make(config.tokenizer, _texts(train_split), config.bpe_vocab_size)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  os.makedirs(workdir, exist_ok=True)
  tokenizers.save(saved, tokenizer)  # a resumed run decodes with the same vocabulary
  separator = tokenizer.encode("\n\n")
  train_docs = [np.asarray(tokenizer.encode(t) + separator, np.int32) for t in _texts(train_split)]
  test_stream = np.concatenate([np.asarray(tokenizer.encode(t) + separator, np.int32) for t in _texts(test_split)])
  windows = data_lib.TokenWindows(train_docs, config.seq_len)
  # Held-out windows: consecutive, non-overlapping, from the start of the test text.
  span = config.seq_len + 1
  count = min(config.eval_windows, len(test_stream) // span)
  eval_windows = {"tokens": test_stream[:count * span].reshape(count, span)}
  prompts = [test_stream[i * 997 % (len(test_stream) - config.prompt_len):][:config.prompt_len]
             for i in range(config.num_prompts)]
  unit = "char" if config.tokenizer == "char" else "token"
  task = gpt2.make_task(config, tokenizer.vocab_size, tokenizer.decode, prompts, unit)
  return train(task, config, workdir, windows, eval_windows).results


if __name__ == "__main__":
  cli.main(__file__, run)
