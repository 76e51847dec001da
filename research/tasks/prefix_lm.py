"""The decoder-only GPT's plug-in for translating (source, target) pairs as a prefix LM (Raffel et al. 2020).

    batch = prefix_lm.encode_pairs(tokenizer, sources, targets, source_len, target_len)
    task = prefix_lm.make_task(config, tokenizer, {"test": ..., "test_longer": ...})

The same pairs as the encoder-decoder's task (research/tasks/seq2seq.py), each made one sequence:
the source's tokens with its end-of-sequence (the separator), then the target's tokens with
theirs, then padding. The source and its separator are the prefix: its positions attend to each
other in both directions and the target's attend causally (GPT2's `prefix_length`). The loss is
the label-smoothed cross-entropy of the target's tokens only (seq2seq.target_metrics), with
dropout and label smoothing traced as there. The evaluation decodes each target greedily after
its prefix with the KV cache (gpt2.generate, `prompt_visible`) and scores it with the
encoder-decoder's own code under its names: `<split>_greedy_exact_match` and `..._bleu`.
"""

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from research import optim
from research.models import gpt2
from research.models.seq2seq import IGNORE
from research.tasks import seq2seq
from research.train import Task

METHODS = ("greedy",)


def encode_pairs(tokenizer, sources: Sequence[str], targets: Sequence[str], source_len: int,
                 target_len: int) -> dict[str, np.ndarray]:
  """Training arrays of length L = source_len + target_len from seq2seq.encode_pairs' padded sides.

  Returns:
    `input_ids` (N, L): source, its end-of-sequence, target, its end-of-sequence, padding;
    `labels` (N, L): the next token where it is a target token (its end-of-sequence included),
    IGNORE elsewhere (the source, the padding); `prefix_length` (N,): the source's tokens with
    its end-of-sequence.

  Raises:
    ValueError: as seq2seq.encode_pairs, for a text longer than its side's length or an unknown token.
  """
  sides = seq2seq.encode_pairs(tokenizer, sources, targets, source_len, target_len)
  source, target_labels = sides["input_ids"], sides["labels"]  # (N, S), (N, T)
  prefix = np.sum(source != seq2seq.PAD, axis=1).astype(np.int32)  # (N,)
  rows = np.arange(len(source))[:, None]
  at = prefix[:, None] + np.arange(target_len)[None]  # (N, T): where each target token goes
  input_ids = np.zeros((len(source), source_len + target_len), np.int32)
  input_ids[:, :source_len] = source
  input_ids[rows, at] = np.where(target_labels == IGNORE, seq2seq.PAD, target_labels)
  labels = np.full(input_ids.shape, IGNORE, np.int32)
  labels[rows, at - 1] = target_labels  # position i predicts token i + 1: the separator predicts the first
  return {"input_ids": input_ids, "labels": labels, "prefix_length": prefix}


def model_config(config, vocab_size: int) -> gpt2.GPT2Config:
  """The GPT of an experiment config (experiments/seq2seq.py, model "gpt"): its shape and the pairs' length."""
  return gpt2.GPT2Config(vocab_size=vocab_size, n_positions=config.max_source_length + config.max_target_length,
                         n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                         attention=config.attention, embd_pdrop=config.dropout, resid_pdrop=config.dropout,
                         dtype=config.dtype)


def decode_split(model: gpt2.GPT2, params, tokenizer, sources: Sequence[str], batch_size: int,
                 max_new_tokens: int) -> list[str]:
  """The greedily decoded targets of `sources`: each source with its end-of-sequence is the prefix."""

  def decode(batch):
    prompts = [tokenizer.encode(s) for s in batch]
    rows = gpt2.generate(model, params, prompts, max_new_tokens, prompt_visible=True)
    return tokenizer.decode_batch(np.asarray([r[len(p):] for r, p in zip(rows, prompts)]))

  return seq2seq.decode_in_batches(decode, sources, batch_size)


def make_task(config, tokenizer, eval_sets: Mapping[str, tuple[Sequence[str], Sequence[str]]],
              sample_count: int = 3) -> Task:
  """Sequence-to-sequence training of a decoder-only GPT as a prefix LM, as a research.train.Task.

  Args:
    config: an experiment config (experiments/seq2seq.py with model "gpt"): n_layer, n_embd,
      n_head, the lengths, dropout, label_smoothing, eval_batch_size, optimizer.
    tokenizer: encodes and decodes both sides (research.data.number_words.NumberWordsTokenizer).
    eval_sets: split name -> (sources, references) decoded and scored by `sample`.
    sample_count: examples of each evaluation split written by `sample`.

  Returns:
    A Task whose loss is the label-smoothed cross-entropy of the target tokens of an
    `encode_pairs` batch, with `dropout` and `label_smoothing` traced (Task.hparams); whose
    `evaluate` gives `<split>_greedy_exact_match` and `<split>_greedy_bleu` for each evaluation
    split; whose `sample` writes "source | greedy | reference" lines.
  """
  model = gpt2.GPT2(model_config(config, tokenizer.vocab_size))

  def init(key, batch):
    return model.init(key, jnp.asarray(batch["input_ids"]), prefix_length=jnp.asarray(batch["prefix_length"]))

  def loss(params, batch, key, train, hparams=None):
    rate = config.dropout if hparams is None else hparams["dropout"]
    smoothing = config.label_smoothing if hparams is None else hparams["label_smoothing"]
    logits = model.apply(params, batch["input_ids"], prefix_length=batch["prefix_length"], train=train,
                         dropout_rate=rate, rngs={"dropout": key})  # (B, L, V)
    return seq2seq.target_metrics(logits, batch["labels"], smoothing)

  def decode_all(params, sources):
    return {"greedy": decode_split(model, params["params"], tokenizer, sources, config.eval_batch_size,
                                   config.max_target_length)}

  def evaluate(params, key, data, hparams=None):
    del key, hparams  # decoding is greedy and has no dropout
    return seq2seq.score_splits(lambda sources: decode_all(params, sources), data, tokenizer.tokens)

  def sample(params, key, hparams=None):
    del key, hparams
    lines = []
    for split, (all_sources, all_references) in eval_sets.items():
      chosen = seq2seq.spread_indices(len(all_sources), sample_count)  # its shortest and its longest examples
      sources, references = [all_sources[i] for i in chosen], [all_references[i] for i in chosen]
      lines += [f"[{split}] {s} | greedy: {g} | reference: {r}"
                for s, g, r in zip(sources, decode_all(params, sources)["greedy"], references)]
    return {"samples": "\n".join(lines)}

  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate,
              sample=sample, learning_rate=optim.learning_rate_fn(config.optimizer, config.steps),
              hparams={"dropout": config.dropout, "label_smoothing": config.label_smoothing})
