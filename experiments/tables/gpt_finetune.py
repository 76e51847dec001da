"""GPT fine-tuning (Radford et al. 2018) against the GPT from scratch and BERT, on python_docs_topics.

Radford et al. (2018) pre-train a GPT as a language model and fine-tune it on each task through
input transformations ([start] text [extract], a linear head on the extract token's state) with
an auxiliary LM loss; Devlin et al. (2019) compare BERT with it. Here, on the bundled data and at
one budget for every row:

  1. GPT pre-training: experiments.gpt2 (language modelling on python_docs, a byte-level BPE of
     `vocab_size` fitted on it, `steps` updates of `batch_size` windows of `seq_len` tokens);
  2. BERT pre-training: experiments.bert (masked LM on python_docs, a WordPiece vocabulary of the
     same size, the same width, depth, heads, sequence length, updates and batch);
  3. fine-tuning on python_docs_topics (which of 5 parts of the documentation a paragraph is
     from; 629 paragraphs to train on, 629 held out), `finetune_steps` updates of `batch_size`
     paragraphs at peak learning rate `learning_rate`, each row's `seeds` seeds as members of
     one vmapped program (research.train.Members): the GPT from its pre-training (with
     `lm_weight` times the auxiliary LM loss), the same GPT from random weights, and BERT from
     its pre-training (experiments.bert's mode=finetune: [CLS] pooler and classifier).

Each row is the run `python -m experiments.gpt2 --config.mode=finetune ...` (or experiments.bert)
would make at the table's sizes; results.json lists every member's accuracy, the Markdown the
mean ± standard error over seeds. Pre-training runs once (seed 0) per family.

Run:
  python -m experiments.tables.gpt_finetune --outdir=experiments/tables/results/gpt_finetune
  python -m experiments.tables.gpt_finetune --outdir=/tmp/gpt_finetune --config=experiments/tables/gpt_finetune.py:smoke
"""

import os
import time

import ml_collections
import numpy as np

from experiments import bert as bert_experiment
from experiments import gpt2 as gpt2_experiment
from experiments import harness
from research.train import ConfigError, Members, check_positive, cli

ROWS = ("GPT fine-tuned", "GPT from scratch", "BERT fine-tuned")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two seeds of a tiny model, a few steps of each stage, for tests."""
  config.seeds, config.steps, config.finetune_steps, config.batch_size = 2, 3, 3, 8
  config.width, config.layers, config.heads, config.seq_len, config.vocab_size = 16, 1, 1, 16, 256
  config.eval_sequences = 16


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's budget; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.seeds = 3  # fine-tuning members (seeds) per row, vmapped in one program
  config.steps = 600  # pre-training updates (each family)
  config.finetune_steps = 150  # fine-tuning updates (each row)
  config.batch_size = 32  # sequences per update (pre-training and fine-tuning)
  config.learning_rate = 3e-4  # fine-tuning peak learning rate (each row)
  config.lm_weight = 0.5  # the GPT's auxiliary LM loss weight in fine-tuning (Radford et al.'s lambda)
  config.width = 64  # model width (both families; MLP 4x)
  config.layers = 2  # transformer blocks
  config.heads = 2  # attention heads
  config.seq_len = 64  # tokens per sequence (pre-training windows and fine-tuning inputs, special tokens included)
  config.vocab_size = 2048  # tokenizer vocabulary, fitted on python_docs (GPT: byte-level BPE; BERT: WordPiece)
  config.eval_sequences = 256  # held-out pre-training windows scored (GPT val_loss, BERT mlm_accuracy)
  return cli.apply_presets(config, preset, PRESETS)


def gpt_config(table) -> ml_collections.ConfigDict:
  """experiments.gpt2's pre-training config at the table's sizes."""
  config = gpt2_experiment.get_config()
  config.tokenizer, config.bpe_vocab_size = "bpe", table.vocab_size
  config.n_layer, config.n_embd, config.n_head = table.layers, table.width, table.heads
  config.n_positions = config.seq_len = table.seq_len
  config.steps, config.batch_size = table.steps, table.batch_size
  config.optimizer.warmup_steps = max(1, table.steps // 10)
  config.eval_windows, config.eval_batch_size = table.eval_sequences, 64
  config.prompt_len, config.sample_tokens = min(8, table.seq_len // 2), table.seq_len // 2
  config.num_prompts = 2
  config.log_every = config.eval_every = config.checkpoint_every = max(1, table.steps // 4)
  config.finetune.steps, config.finetune.batch_size = table.finetune_steps, table.batch_size
  config.finetune.learning_rate = table.learning_rate
  config.finetune.warmup_steps = max(1, table.finetune_steps // 10)
  config.lm_weight = table.lm_weight
  return config


def bert_config(table) -> ml_collections.ConfigDict:
  """experiments.bert's pre-training config at the table's sizes."""
  config = bert_experiment.get_config()
  config.vocab_size = table.vocab_size
  config.hidden_size, config.num_hidden_layers, config.num_attention_heads = table.width, table.layers, table.heads
  config.intermediate_size = 4 * table.width
  config.max_position_embeddings = config.seq_len = table.seq_len
  config.steps, config.batch_size = table.steps, table.batch_size
  config.optimizer.warmup_steps = max(1, table.steps // 10)
  config.eval_sequences, config.eval_batch_size = table.eval_sequences, 64
  config.log_every = config.eval_every = config.checkpoint_every = max(1, table.steps // 4)
  config.finetune.steps, config.finetune.batch_size = table.finetune_steps, table.batch_size
  config.finetune.learning_rate = table.learning_rate
  config.finetune.warmup_steps = max(1, table.finetune_steps // 10)
  return config


def finetuned(config, **fields) -> ml_collections.ConfigDict:
  """`config` in mode finetune with `fields` set."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.mode = "finetune"
  for name, value in fields.items():
    config[name] = value
  return config


def check_config(table: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field, then on the experiments' own checks of the table's models."""
  for name in ("seeds", "steps", "finetune_steps", "batch_size", "width", "layers", "heads", "seq_len",
               "vocab_size", "eval_sequences", "learning_rate"):
    check_positive(name, table[name])
  if not table.lm_weight >= 0:
    raise ConfigError(f"lm_weight must be a number >= 0, got {table.lm_weight!r}")
  if table.seq_len < 3:
    raise ConfigError(f"seq_len must be >= 3, got {table.seq_len}")
  gpt2_experiment.check_config(gpt_config(table))
  gpt2_experiment.check_config(finetuned(gpt_config(table)))
  bert_experiment.check_config(bert_config(table))


def markdown(rows: dict, table, wall_s: float, pretraining: dict) -> str:
  """The report: the budget, then one line per row with mean ± s.e. and every seed."""
  lines = [(name, harness.pm(harness.mean_se(values), 1, 100.0), ", ".join(f"{100 * v:.1f}" for v in values))
           for name, values in rows.items()]
  return harness.document(
      "GPT fine-tuning (Radford et al. 2018) vs the GPT from scratch and BERT: python_docs_topics accuracy",
      f"Both families: {table.layers} blocks, {table.width} wide, {table.heads} head(s), MLP {4 * table.width}, "
      f"sequences of {table.seq_len} tokens, a vocabulary of {table.vocab_size} fitted on python_docs (GPT: "
      f"byte-level BPE; BERT: WordPiece). Pre-training: {table.steps} updates of {table.batch_size} sequences on "
      f"python_docs (GPT: next-token prediction, held-out val_loss {pretraining['gpt_val_loss']:.3f} nats per "
      f"token; BERT: masked LM, held-out mlm_accuracy {100 * pretraining['bert_mlm_accuracy']:.1f}%). "
      f"Fine-tuning: {table.finetune_steps} updates of {table.batch_size} paragraphs at peak learning rate "
      f"{table.learning_rate:g} on python_docs_topics (5 classes, chance 20%); the GPT reads [start] text "
      f"[extract] with an auxiliary LM loss of weight {table.lm_weight:g}, BERT [CLS] text [SEP]. "
      f"{table.seeds} seeds per row as members of one vmapped program; mean ± standard error (percent), then every "
      f"seed's value. Total wall time {wall_s / 60:.1f} min.",
      harness.table(["row", "held-out accuracy (%)", "per seed"], lines, align="lrl"))


def run(table: ml_collections.ConfigDict, outdir: str) -> dict:
  """Pre-trains both families, fine-tunes the three rows; writes results.json and gpt_finetune.md."""
  check_config(table)
  start = time.perf_counter()
  members = Members(seeds=tuple(range(table.seeds)))
  gpt, bert = gpt_config(table), bert_config(table)
  gpt_dir, bert_dir = os.path.join(outdir, "gpt_pretrain"), os.path.join(outdir, "bert_pretrain")
  pretraining = {"gpt_val_loss": gpt2_experiment.run(gpt, gpt_dir)["val_loss"],
                 "bert_mlm_accuracy": bert_experiment.run(bert, bert_dir)["mlm_accuracy"]}
  runs = {"GPT fine-tuned": (gpt2_experiment, finetuned(gpt, init=gpt_dir), "gpt_finetuned"),
          "GPT from scratch": (gpt2_experiment, finetuned(gpt), "gpt_scratch"),
          "BERT fine-tuned": (bert_experiment, finetuned(bert, init=bert_dir), "bert_finetuned")}
  rows = {}
  for name, (experiment, config, directory) in runs.items():
    results = experiment.run(config, os.path.join(outdir, directory), members=members)
    rows[name] = [float(m["accuracy"]) for m in results["members"]]
    print(f"{name}: accuracy {harness.pm(harness.mean_se(rows[name]), 1, 100.0)}%", flush=True)
  wall = time.perf_counter() - start
  text = markdown(rows, table, wall, pretraining)
  print(text)
  metrics = {"rows": rows, "seeds": list(members.seeds), "pretraining": pretraining,
             "means": {name: float(np.mean(values)) for name, values in rows.items()}}
  return harness.write_report(outdir, "gpt_finetune", metrics, text, config=table, wall_time_s=wall)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
