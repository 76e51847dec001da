"""BERT's plug-ins for the loop: masked-LM pre-training and sequence classification (fine-tuning).

    task = make_pretrain_task(config, cfg, special)          # a research.train.Task
    task = make_classifier_task(config, cfg, encoder)        # from pre-trained "bert" parameters

The models, the masking and the losses are research/models/bert.py.
"""

import jax
import jax.numpy as jnp
import numpy as np

from research import optim
from research.models.bert import (BertConfig, BertForMaskedLM, BertForSequenceClassification, Rates, mask_tokens,
                                  mlm_loss, parse_mix, with_encoder)
from research.train import Task


def traced_rates(cfg: BertConfig) -> dict[str, float]:
  """A BERT task's Task.hparams: its dropout rates under experiments/bert.py's field names.

  `dropout` is hidden_dropout_prob; `attention_dropout` (attention_probs_dropout_prob) is
  traced only where the reference attention, the one implementation that has it, trains:
  when named, or chosen by "auto" for a rate above 0.
  """
  rates = {"dropout": cfg.hidden_dropout_prob}
  if cfg.attention == "reference" or (cfg.attention == "auto" and cfg.attention_probs_dropout_prob > 0):
    rates["attention_dropout"] = cfg.attention_probs_dropout_prob
  return rates


def _rates(hparams) -> Rates:
  """The model's call-time rates from a task's traced `hparams` (None: the config's own)."""
  return Rates() if hparams is None else Rates(hparams["dropout"], hparams.get("attention_dropout"))


MIX_HPARAMS = ("mask_fraction", "same_fraction")  # a traced masking mix: [MASK] and kept shares; random the rest


# The scalar metrics of the tasks' evaluations (the pre-training task's last one with a unigram token).
PRETRAIN_METRICS = ("mlm_loss", "mlm_accuracy", "mlm_predictions", "mlm_best_constant_accuracy", "mlm_unigram_accuracy")
FINETUNE_METRICS = ("accuracy", "eval_loss", "eval_examples")


def make_pretrain_task(config, cfg: BertConfig, special: dict[str, int], traced_mix: bool = False,
                       unigram_token: int | None = None):
  """Masked language modelling as a research.train.Task.

  Args:
    config: an experiment config (experiments/bert.py): mask_rate and eval_mask_rate, mask_mix
      and eval_mask_mix as "MASK/same/random" percentages (see `parse_mix`), eval_batch_size,
      optimizer, steps.
    cfg: the model's config.
    special: ids of "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"; all but [UNK] are never chosen.
    traced_mix: the training mix is read from the traced hparams `mask_fraction` and
      `same_fraction` (fractions of the chosen tokens; the random share is the rest), starting
      at `mask_mix`, so members of one vmapped program can train with different mixes
      (experiments/tables/bert_masking.py).
    unigram_token: the training text's most frequent token (`most_frequent_token`), or None.

  Returns:
    A Task over batches of research.data.encoder sequences whose loss masks each batch from
    the step's key, with the dropout rates traced (`traced_rates`), and whose
    `evaluate(params, key, sequences)` gives `mlm_loss` and `mlm_accuracy` on the chosen
    positions of held-out sequences, masked with a fixed key, `eval_mask_rate` and
    `eval_mask_mix`, so every run and every evaluation scores the same positions. Two baselines blind to context are
    scored at those same positions: `mlm_best_constant_accuracy`, the share of the positions'
    most common original token (the best any single token predicted everywhere could score,
    chosen with hindsight on the held-out positions) and, with `unigram_token`,
    `mlm_unigram_accuracy`: the accuracy of always predicting `unigram_token`, the training
    text's most frequent token.
  """
  model = BertForMaskedLM(cfg)
  never = jnp.asarray([i for token, i in special.items() if token != "[UNK]"], jnp.int32)

  def masked_loss(params, batch, key, rate, mix, train, rates=Rates()):
    ids = batch["input_ids"]
    eligible = batch["attention_mask"].astype(bool) & ~jnp.isin(ids, never)
    k_mask, k_dropout = jax.random.split(key)
    masked = mask_tokens(k_mask, ids, eligible, vocab_size=cfg.vocab_size, mask_id=special["[MASK]"],
                         rate=rate, mix=mix)
    logits = model.apply(params, masked.input_ids, attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"], train=train, dropout_rate=rates.hidden,
                         attention_dropout_rate=rates.attention, rngs={"dropout": k_dropout})
    value, accuracy = mlm_loss(logits, ids, masked.chosen)
    return value, accuracy, masked.chosen

  def init(key, batch):
    return model.init(key, batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"])

  def train_mix(hparams):
    if not traced_mix or hparams is None:
      return parse_mix(config.mask_mix)
    p_mask, p_same = (hparams[name] for name in MIX_HPARAMS)
    return p_mask, p_same, 1.0 - p_mask - p_same

  def loss(params, batch, key, train, hparams=None):
    value, accuracy, _ = masked_loss(params, batch, key, config.mask_rate, train_mix(hparams), train, _rates(hparams))
    return value, {"mlm_accuracy": accuracy}

  @jax.jit
  def batch_sums(params, batch, key):
    value, accuracy, chosen = masked_loss(params, batch, key, config.eval_mask_rate, parse_mix(config.eval_mask_mix),
                                          False)
    count = jnp.sum(chosen)
    unigram = jnp.sum(chosen & (batch["input_ids"] == (-1 if unigram_token is None else unigram_token)))
    targets = jnp.zeros(cfg.vocab_size, jnp.int32).at[batch["input_ids"]].add(chosen.astype(jnp.int32))  # (vocab,)
    return value * count, accuracy * count, count, unigram, targets

  def evaluate(params, key, sequences, hparams=None):
    del key, hparams  # a fixed key: the same held-out positions every time; no dropout
    n = len(sequences["input_ids"])
    nll = correct = count = unigram = 0.0
    targets = np.zeros(cfg.vocab_size, np.int64)
    for i, start in enumerate(range(0, n, config.eval_batch_size)):
      batch = {k: jnp.asarray(v[start:start + config.eval_batch_size]) for k, v in sequences.items()}
      *sums, batch_targets = batch_sums(params, batch, jax.random.fold_in(jax.random.key(0), i))
      nll, correct, count, unigram = (total + float(x) for total, x in zip((nll, correct, count, unigram), sums))
      targets += np.asarray(batch_targets)
    count = max(count, 1.0)
    metrics = {"mlm_loss": nll / count, "mlm_accuracy": correct / count, "mlm_predictions": int(count),
               "mlm_best_constant_accuracy": float(targets.max()) / count}
    if unigram_token is not None:
      metrics["mlm_unigram_accuracy"] = unigram / count
    return metrics

  hparams = traced_rates(cfg)
  if traced_mix:
    hparams.update(zip(MIX_HPARAMS, parse_mix(config.mask_mix)[:2]))
  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps), hparams=hparams)


def most_frequent_token(stream: np.ndarray, vocab_size: int, special: dict[str, int]) -> int:
  """The id occurring most often in a token stream, special tokens aside (the lowest id of a tie)."""
  counts = np.bincount(np.asarray(stream), minlength=vocab_size)
  counts[list(special.values())] = -1
  return int(np.argmax(counts))


def make_classifier_task(config, cfg: BertConfig, encoder=None):
  """Sequence classification (fine-tuning) as a research.train.Task.

  Args:
    config: an experiment config (experiments/bert.py): optimizer, steps, eval_batch_size.
    cfg: the model's config (num_labels classes).
    encoder: pre-trained "bert" parameters to start from, or None for a random encoder.

  Returns:
    A Task over research.data.encoder sequences with a `label`, whose loss is the mean
    cross-entropy with the dropout rates traced (`traced_rates`), and whose
    `evaluate(params, key, examples)` gives `accuracy` and `eval_loss`.
  """
  model = BertForSequenceClassification(cfg)

  def forward(params, batch, train, key, rates=Rates()):
    return model.apply(params, batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], train=train, dropout_rate=rates.hidden,
                       attention_dropout_rate=rates.attention, rngs={"dropout": key})

  def init(key, batch):
    variables = model.init(key, batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"])
    return variables if encoder is None else with_encoder(variables, encoder)

  def cross_entropy(logits, labels):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]  # (B,)

  def loss(params, batch, key, train, hparams=None):
    logits = forward(params, batch, train, key, _rates(hparams))
    accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
    return jnp.mean(cross_entropy(logits, batch["label"])), {"accuracy": accuracy}

  @jax.jit
  def batch_sums(params, batch):
    logits = forward(params, batch, False, jax.random.key(0))
    return jnp.sum(cross_entropy(logits, batch["label"])), jnp.sum(jnp.argmax(logits, -1) == batch["label"])

  def evaluate(params, key, examples, hparams=None):
    del key, hparams  # no dropout in evaluation
    n = len(examples["label"])
    nll = correct = 0.0
    for start in range(0, n, config.eval_batch_size):
      batch = {k: jnp.asarray(v[start:start + config.eval_batch_size]) for k, v in examples.items()}
      sums = batch_sums(params, batch)
      nll, correct = nll + float(sums[0]), correct + float(sums[1])
    return {"accuracy": correct / n, "eval_loss": nll / n, "eval_examples": n}

  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps), hparams=traced_rates(cfg))
