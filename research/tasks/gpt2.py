"""The language models' plug-in for the loop: next-token prediction, evaluation over held-out windows, sampled text.

    task = make_task(config, vocab_size, tokenizer.decode, prompts)   # a research.train.Task

config.model picks the network: "gpt" (research/models/gpt2.py) or "lstm"
(research/models/lstm.py); both take token windows and return next-token logits, so the loss,
the evaluation and the samples are the same for both.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from research import optim
from research.models import gpt2, lstm
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
