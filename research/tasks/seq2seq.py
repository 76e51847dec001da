"""The encoder-decoder's plug-in for the loop: translation of (source, target) pairs, scored by decoding.

    pairs = seq2seq.pairs(number_words.generate("train"), "numbers_to_words")   # (sources, targets)
    batch = seq2seq.encode_pairs(tokenizer, *pairs, source_len, target_len)     # input_ids, labels
    task = seq2seq.make_task(config, tokenizer, {"test": ..., "test_longer": ...})

Training is teacher forcing: the decoder reads the target shifted right behind the start token
and predicts every target token (research.models.seq2seq.shift_right), with label smoothing and
dropout as traced hyperparameters. The evaluation decodes each evaluation split greedily and by
beam search (config.num_beams) and scores the decoded strings against the references: exact
match and corpus BLEU per split and method.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import optim
from research.metrics import bleu, exact_match
from research.models import seq2seq
from research.train import Task

DIRECTIONS = ("numbers_to_words", "words_to_numbers")
MODELS = tuple(seq2seq.CONFIGS)
METHODS = ("greedy", "beam")
PAD = 0  # the pad id of the tokenizer and the model (T5's convention, as NumberWordsTokenizer's)


def pairs(split: Mapping[str, Sequence[str]], direction: str) -> tuple[list[str], list[str]]:
  """(sources, targets) of a number_words split ({"number", "words"} of str or bytes) read in `direction`."""
  if direction not in DIRECTIONS:
    raise ValueError(f"unknown direction {direction!r}; choose one of: {', '.join(DIRECTIONS)}")
  text = lambda xs: [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in xs]
  numbers, words = text(split["number"]), text(split["words"])
  return (numbers, words) if direction == "numbers_to_words" else (words, numbers)


def encode_pairs(tokenizer, sources: Sequence[str], targets: Sequence[str], source_len: int,
                 target_len: int) -> dict[str, np.ndarray]:
  """Training arrays: `input_ids` (N, source_len) padded with the pad id, `labels` (N, target_len) with
  seq2seq.IGNORE after each target's end-of-sequence (both end with it).

  Raises:
    ValueError: for a text longer than its side's length, or an unknown token.
  """
  input_ids = tokenizer.encode_batch(sources, source_len)
  targets = tokenizer.encode_batch(targets, target_len)
  return {"input_ids": input_ids, "labels": np.where(targets == PAD, seq2seq.IGNORE, targets)}


def model_config(config, vocab_size: int) -> seq2seq.Seq2SeqConfig:
  """The encoder-decoder of an experiment config (experiments/seq2seq.py): a named size with its lengths."""
  return seq2seq.config(config.model, vocab_size=vocab_size, max_source_length=config.max_source_length,
                        max_target_length=config.max_target_length, dropout_rate=config.dropout,
                        attention=config.attention, dtype=config.dtype)


def smoothed_loss(logits, labels, smoothing):
  """Cross-entropy against the one-hot target mixed with the uniform distribution (weight `smoothing`),
  over labels that are not IGNORE: (B, T, V), (B, T) -> scalar. smoothing=0 is seq2seq.target_loss."""
  counted = labels != seq2seq.IGNORE  # (B, T)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))  # (B, T, V)
  nll = -jnp.take_along_axis(logp, jnp.where(counted, labels, 0)[..., None], axis=-1)[..., 0]  # (B, T)
  uniform = -jnp.mean(logp, axis=-1)  # (B, T): cross-entropy against the uniform distribution
  per_token = (1.0 - smoothing) * nll + smoothing * uniform
  return jnp.sum(per_token * counted) / jnp.maximum(jnp.sum(counted), 1)


def target_metrics(logits, labels, smoothing) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(the label-smoothed loss, {nll, token_accuracy}) of the target tokens: the labels that are not IGNORE."""
  counted = labels != seq2seq.IGNORE
  correct = (jnp.argmax(logits, -1) == labels) & counted
  return smoothed_loss(logits, labels, smoothing), {
      "nll": seq2seq.target_loss(logits, labels),
      "token_accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(counted), 1)}


def decode_in_batches(decode, sources: Sequence[str], batch_size: int) -> list[str]:
  """`decode(batch of sources) -> decoded strings` over `sources` in batches of `batch_size`, the last padded
  with copies of the first source so that one compiled program serves every batch."""
  out = []
  for start in range(0, len(sources), batch_size):
    chunk = list(sources[start:start + batch_size])
    out += decode(chunk + [chunk[0]] * (batch_size - len(chunk)))[:len(chunk)]
  return out


def decode_split(model, params, tokenizer, sources: Sequence[str], batch_size: int, max_new_tokens: int,
                 num_beams: int) -> list[str]:
  """The decoded strings of `sources`, greedy (num_beams=1) or by beam search, in batches of `batch_size`."""

  def decode(batch):
    ids = tokenizer.encode_batch(batch, model.cfg.max_source_length)  # (batch, max_source_length)
    tokens = seq2seq.generate(model, params, ids, ids != PAD, max_new_tokens, num_beams)
    return tokenizer.decode_batch(tokens[:, 1:])  # the start token left out

  return decode_in_batches(decode, sources, batch_size)


def score(hypotheses: Sequence[str], references: Sequence[str], tokens=str.split) -> dict[str, float]:
  """Exact match (fraction of strings equal) and corpus BLEU (0 .. 100) of decoded strings, BLEU over the
  tokens that `tokens` splits a string into (the tokenizer's: a number's digits one by one, so that a
  number has n-grams as its words do)."""
  spaced = lambda texts: [" ".join(tokens(t)) for t in texts]
  return {"exact_match": exact_match.exact_match(hypotheses, references),
          "bleu": bleu.corpus_bleu(spaced(hypotheses), spaced(references))}


SCORES = ("exact_match", "bleu")  # `score`'s keys


def metric_names(splits: Sequence[str], methods: Sequence[str] = METHODS) -> tuple[str, ...]:
  """The scalar metrics of `score_splits` (`make_task`'s evaluation) for evaluation sets named `splits`
  decoded by `methods`."""
  return tuple(f"{split}_{method}_{name}" for split in splits for method in methods for name in SCORES)


def score_splits(decode_all, data: Mapping[str, tuple[Sequence[str], Sequence[str]]], tokens=str.split
                 ) -> dict[str, float]:
  """`<split>_<method>_<exact_match|bleu>` of every split of `data` ({split: (sources, references)}), where
  `decode_all(sources)` gives {method: decoded strings}."""
  metrics = {}
  for split, (sources, references) in data.items():
    for method, hypotheses in decode_all(sources).items():
      for name, value in score(hypotheses, references, tokens).items():
        metrics[f"{split}_{method}_{name}"] = value
  return metrics


def spread_indices(count: int, sample_count: int) -> np.ndarray:
  """`sample_count` indices evenly spaced over `count` items (the first and the last among them)."""
  return np.round(np.linspace(0, count - 1, min(sample_count, count))).astype(int)


def make_task(config, tokenizer, eval_sets: Mapping[str, tuple[Sequence[str], Sequence[str]]],
              sample_count: int = 3) -> Task:
  """Sequence-to-sequence training with the encoder-decoder as a research.train.Task.

  Args:
    config: an experiment config (experiments/seq2seq.py): model and its lengths, dropout,
      label_smoothing, num_beams, eval_batch_size, optimizer.
    tokenizer: encodes and decodes both sides (research.data.number_words.NumberWordsTokenizer).
    eval_sets: split name -> (sources, references) decoded and scored by `evaluate`.
    sample_count: examples of each evaluation split written by `sample`.

  Returns:
    A Task whose loss is the label-smoothed token cross-entropy of `labels` given `input_ids`
    (batch of `encode_pairs`), with `dropout` and `label_smoothing` traced (Task.hparams); whose
    `evaluate` gives `<split>_<greedy|beam>_exact_match` and `..._bleu` for each evaluation split;
    whose `sample` writes "source | greedy | beam | reference" lines.
  """
  model = seq2seq.Seq2Seq(model_config(config, tokenizer.vocab_size))

  def init(key, batch):
    ids = jnp.asarray(batch["input_ids"])
    return model.init(key, ids, ids != PAD, jnp.zeros_like(batch["labels"]))

  def loss(params, batch, key, train, hparams=None):
    ids, labels = batch["input_ids"], batch["labels"]
    rate = config.dropout if hparams is None else hparams["dropout"]
    smoothing = config.label_smoothing if hparams is None else hparams["label_smoothing"]
    decoder_ids = seq2seq.shift_right(labels, model.cfg.decoder_start_token_id, model.cfg.pad_token_id)
    logits = model.apply(params, ids, ids != PAD, decoder_ids, train=train, dropout_rate=rate,
                         rngs={"dropout": key})  # (B, T, V)
    return target_metrics(logits, labels, smoothing)

  def decode_all(params, sources):
    return {method: decode_split(model, params["params"], tokenizer, sources, config.eval_batch_size,
                                 config.max_target_length, 1 if method == "greedy" else config.num_beams)
            for method in METHODS}

  def evaluate(params, key, data, hparams=None):
    del key, hparams  # decoding is deterministic and has no dropout
    return score_splits(lambda sources: decode_all(params, sources), data, tokenizer.tokens)

  def sample(params, key, hparams=None):
    del key, hparams
    lines = []
    for split, (all_sources, all_references) in eval_sets.items():
      # Evenly spaced over the split (sorted by number): its shortest and its longest examples.
      chosen = spread_indices(len(all_sources), sample_count)
      sources, references = [all_sources[i] for i in chosen], [all_references[i] for i in chosen]
      decoded = decode_all(params, sources)
      lines += [f"[{split}] {s} | greedy: {g} | beam: {b} | reference: {r}"
                for s, g, b, r in zip(sources, decoded["greedy"], decoded["beam"], references)]
    return {"samples": "\n".join(lines)}

  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate,
              sample=sample, learning_rate=optim.learning_rate_fn(config.optimizer, config.steps),
              hparams={"dropout": config.dropout, "label_smoothing": config.label_smoothing})
