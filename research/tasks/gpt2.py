"""The language models' plug-in for the loop: next-token prediction, evaluation over held-out windows, sampled text.

    task = make_task(config, vocab_size, tokenizer.decode, prompts)   # a research.train.Task
    task = make_finetune_task(config, cfg, num_labels, transformer)   # classification, Radford et al. 2018

config.model picks the network: "gpt" (research/models/gpt2.py) or "lstm"
(research/models/lstm.py); both take token windows and return next-token logits, so the loss,
the evaluation and the samples are the same for both. `make_finetune_task` fine-tunes a GPT on
sequence classification through research/models/gpt_classifier.py's input transformation.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from research import optim
from research.models import gpt2, gpt_classifier, lstm
from research.models.gpt2 import lm_loss
from research.train import Task

MODELS = ("gpt", "lstm")


def make_model(config, vocab_size: int):
  """The network of an experiment config (experiments/gpt2.py): a GPT2 or an LSTM module."""
  if config.model == "lstm":
    return lstm.LSTM(lstm.model_config(config, vocab_size))
  if config.model != "gpt":
    raise ValueError(f"unknown model {config.model!r}; choose one of: {', '.join(MODELS)}")
  return gpt2.GPT2(gpt2.model_config(config, vocab_size))


FINETUNE_METRICS = ("accuracy", "eval_loss", "eval_examples")  # `make_finetune_task`'s evaluation


def lm_metric_names(unit: str = "token") -> tuple[str, ...]:
  """The scalar metrics `make_task`'s evaluation reports for tokens that are `unit`s."""
  return ("val_loss", f"val_bits_per_{unit}", "val_tokens")


def make_task(config, vocab_size: int, decode, prompts: Sequence[Sequence[int]], unit: str = "token"):
  """Language modelling with the GPT or the LSTM as a research.train.Task.

  Args:
    config: an experiment config (experiments/gpt2.py): model and its fields, seq_len, optimizer,
      eval_batch_size, sample_tokens, temperature, top_k.
    vocab_size: the tokenizer's vocabulary size.
    decode: ids -> text, for the samples.
    prompts: token ids of the prompts the samples continue.
    unit: what a token is ("char" for a character-level model), naming `val_bits_per_<unit>`.

  Returns:
    A Task whose loss is the mean next-token cross-entropy of `tokens` windows (B, seq_len + 1)
    with `dropout` (embedding and residual) a traced hyperparameter (Task.hparams),
    whose `evaluate(params, key, windows)` gives `val_loss` (nats per token) and
    `val_bits_per_<unit>` over evaluation windows, and whose `sample` writes continuations.
  """
  model = make_model(config, vocab_size)
  if isinstance(model, gpt2.GPT2) and config.seq_len > model.cfg.n_positions and model.cfg.positions == "learned":
    raise ValueError(f"seq_len {config.seq_len} exceeds n_positions {model.cfg.n_positions}")
  generate = lstm.generate if isinstance(model, lstm.LSTM) else gpt2.generate

  def init(key, batch):
    return model.init(key, batch["tokens"][:, :-1])

  def loss(params, batch, key, train, hparams=None):
    tokens = batch["tokens"]
    rate = config.dropout if hparams is None else hparams["dropout"]
    logits = model.apply(params, tokens[:, :-1], train=train, dropout_rate=rate, rngs={"dropout": key})
    value = lm_loss(logits, tokens[:, 1:])
    return value, {f"bits_per_{unit}": value / math.log(2)}

  def evaluate(params, key, windows, hparams=None):
    # Pure: chunks of eval_batch_size windows in one lax.map (the last padded, its padding masked),
    # so a sweep's members are scored together in one vmapped program. No dropout: hparams are unused.
    del key, hparams
    tokens = windows["tokens"]
    n, length = tokens.shape
    batch = min(config.eval_batch_size, n)
    chunks = -(-n // batch)
    padded = jnp.pad(tokens, ((0, chunks * batch - n), (0, 0))).reshape(chunks, batch, length)
    valid = (jnp.arange(chunks * batch) < n).reshape(chunks, batch)

    def chunk_nll(chunk):
      window, ok = chunk
      mask = jnp.broadcast_to(ok[:, None], (batch, length - 1))
      return lm_loss(model.apply(params, window[:, :-1]), window[:, 1:], mask) * jnp.sum(mask)

    count = n * (length - 1)
    return {"val_loss": jnp.sum(jax.lax.map(chunk_nll, (padded, valid))) / count, "val_tokens": count}

  def summarize(arrays):
    value = float(arrays["val_loss"])
    return {"val_loss": value, f"val_bits_per_{unit}": value / math.log(2), "val_tokens": int(arrays["val_tokens"])}

  def sample(params, key, hparams=None):
    del hparams  # generation has no dropout
    out = generate(model, params["params"], [list(p) for p in prompts], config.sample_tokens, key=key,
                   temperature=config.temperature, top_k=config.top_k)
    return {"samples": [decode(prompt) + " ||| " + decode(o[len(prompt):]) for prompt, o in zip(prompts, out)]}

  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate,
              evaluate_pure=True, summarize=summarize, sample=sample,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps),
              hparams={"dropout": config.dropout})


def make_finetune_task(config, cfg: gpt2.GPT2Config, num_labels: int, transformer=None):
  """Sequence classification by a GPT with an auxiliary LM loss (Radford et al. 2018) as a research.train.Task.

  Args:
    config: an experiment config (experiments/gpt2.py in mode finetune): dropout, lm_weight,
      optimizer, steps, eval_batch_size.
    cfg: the GPT's config, its vocabulary including the three special tokens.
    num_labels: the classes.
    transformer: pre-trained GPT2 parameters (vocabulary extended by
      gpt_classifier.with_new_tokens) to start from, or None for a random GPT.

  Returns:
    A Task over batches of `input_ids` (B, T) transformed by
    gpt_classifier.classification_input and padded, `extract` (B,), `mask` (B, T) and `label`
    (B,), whose loss is gpt_classifier.finetune_loss with `lm_weight` and `dropout` traced
    (Task.hparams), and whose pure `evaluate(params, key, examples)` gives `accuracy` and
    `eval_loss` (the task's cross-entropy) over held-out examples.
  """
  model = gpt_classifier.GPTClassifier(cfg, num_labels)

  def init(key, batch):
    variables = model.init(key, batch["input_ids"], batch["extract"])
    return variables if transformer is None else gpt_classifier.with_transformer(variables, transformer)

  def loss(params, batch, key, train, hparams=None):
    rate, weight = (config.dropout, config.lm_weight) if hparams is None else (hparams["dropout"],
                                                                                 hparams["lm_weight"])
    logits, lm_logits = model.apply(params, batch["input_ids"], batch["extract"], train=train, dropout_rate=rate,
                                    rngs={"dropout": key})
    total, task, lm = gpt_classifier.finetune_loss(logits, batch["label"], lm_logits, batch["input_ids"],
                                                   batch["mask"], weight)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
    return total, {"task_loss": task, "lm_loss": lm, "accuracy": accuracy}

  def evaluate(params, key, examples, hparams=None):
    # Pure: chunks of eval_batch_size examples in one lax.map (the last padded, its padding
    # masked), so a sweep's members are scored together in one vmapped program. No dropout.
    del key, hparams
    n = len(examples["label"])
    batch = min(config.eval_batch_size, n)
    chunks = -(-n // batch)
    pad = lambda x: jnp.pad(x, [(0, chunks * batch - n)] + [(0, 0)] * (x.ndim - 1))
    padded = {k: pad(examples[k]).reshape((chunks, batch) + examples[k].shape[1:])
              for k in ("input_ids", "extract", "label")}
    valid = (jnp.arange(chunks * batch) < n).reshape(chunks, batch)

    def chunk_sums(chunk):
      part, ok = chunk
      logits, _ = model.apply(params, part["input_ids"], part["extract"])
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), part["label"][:, None], axis=-1)[:, 0]  # (batch,)
      return jnp.sum(nll * ok), jnp.sum((jnp.argmax(logits, -1) == part["label"]) & ok)

    nll, correct = jax.lax.map(chunk_sums, (padded, valid))
    return {"accuracy": jnp.sum(correct) / n, "eval_loss": jnp.sum(nll) / n, "eval_examples": n}

  def summarize(arrays):
    return {"accuracy": float(arrays["accuracy"]), "eval_loss": float(arrays["eval_loss"]),
            "eval_examples": int(arrays["eval_examples"])}

  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate,
              evaluate_pure=True, summarize=summarize,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps),
              hparams={"dropout": config.dropout, "lm_weight": config.lm_weight})
