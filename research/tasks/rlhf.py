"""RLHF's plug-ins for the loop: supervised fine-tuning, the reward model, PPO and DPO, one stage each.

    task = make_sft_task(cfg, lm_params, tx)                       # demonstrations, from a pretrained LM
    task = make_reward_task(cfg, tx, lm_params)                    # rankings, the pairwise loss
    task = make_ppo_task(cfg, settings, tx, lm, ref, rm, hparams)  # a rollout + PPO update per step
    task = make_dpo_task(cfg, lm_params, tx, beta)                 # the preferences directly

The models, losses, the PPO update and the gold scorer are research/rl/rlhf.py (on the GPT-2
of research/models/gpt2.py); experiments/rlhf.py runs the stages one after another.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.checks import ConfigError
from research.models import gpt2
from research.rl.rlhf import (Frozen, PPOHParams, PPOSettings, dpo_loss, init_policy, init_reward_model,
                              make_ppo_update, pair_accuracy, ranked_pairs, ranking_loss, reward_model_scores,
                              sequence_log_probs)
from research.train import Task, TrainState, apply_gradients


def _flat_rankings(batch) -> tuple[jax.Array, jax.Array, tuple[int, int]]:
  tokens, completion = batch["tokens"], batch["completion"]
  b, k, length = tokens.shape
  return tokens.reshape(b * k, length), completion.reshape(b * k, length), (b, k)


def make_sft_task(cfg: gpt2.GPT2Config, lm_params, tx: optax.GradientTransformation, learning_rate=None) -> Task:
  """Supervised fine-tuning on demonstrations, starting from `lm_params`.

  The batch is {"tokens": (B, L), "completion": (B, L)}; the loss is the next-token
  cross-entropy on the completion tokens only (the prompt is given, not imitated).

  Args:
    cfg: the language model's config.
    lm_params: the pretrained parameters the run starts from.
    tx: the optimizer.
    learning_rate: `learning_rate(opt_state, step)` to log, or None.

  Returns:
    A research.train.Task whose params are {"params": lm_params}.
  """
  model = gpt2.GPT2(cfg)

  def loss(params, batch, key, train, hparams):
    del key, train, hparams
    tokens = batch["tokens"]
    logits = model.apply(params, tokens[:, :-1])
    value = gpt2.lm_loss(logits, tokens[:, 1:], batch["completion"][:, 1:])
    return value, {"completion_nll": value}

  return Task(init=lambda key, batch: {"params": lm_params}, tx=tx, loss=loss, learning_rate=learning_rate)


def make_reward_task(cfg: gpt2.GPT2Config, tx: optax.GradientTransformation, lm_params=None, eval_batch: int = 64,
                     learning_rate=None) -> Task:
  """The reward model trained on rankings with the pairwise loss, as a research.train.Task.

  Args:
    cfg: the backbone's config.
    tx: the optimizer.
    lm_params: the language model the backbone starts from (None: a fresh backbone).
    eval_batch: rankings per evaluation batch.
    learning_rate: `learning_rate(opt_state, step)` to log, or None.

  Returns:
    A Task over ranking batches {"tokens": (B, K, L), "completion": (B, K, L)}, best first;
    `evaluate(params, key, rankings)` gives `pair_accuracy` and `pair_loss` over every pair of
    the held-out rankings.
  """

  def init(key, batch):
    return init_reward_model(cfg, key, batch["tokens"].shape[-1], lm_params)

  def rewards(params, batch):
    tokens, completion, (b, k) = _flat_rankings(batch)
    return reward_model_scores(cfg, params, tokens, completion).reshape(b, k)

  def loss(params, batch, key, train, hparams):
    del key, train, hparams
    r = rewards(params, batch)
    return ranking_loss(r), {"pair_accuracy": pair_accuracy(r), "reward_mean": jnp.mean(r)}

  @jax.jit
  def eval_batch_sums(params, batch):
    r = rewards(params, batch)
    pairs = r.shape[0] * len(ranked_pairs(r.shape[1])[0])
    return ranking_loss(r) * pairs, pair_accuracy(r) * pairs, pairs

  def evaluate(params, key, data, hparams):
    del key, hparams
    return _summed_over_batches(eval_batch_sums, params, data, eval_batch, ("pair_loss", "pair_accuracy"))

  return Task(init=init, tx=tx, loss=loss, evaluate=evaluate, learning_rate=learning_rate)


def _summed_over_batches(fn, params, data, batch_size: int, names: Sequence[str]) -> dict[str, float]:
  """Means of per-batch sums (fn returns (sum_1, ..., sum_n, count)) over `data` in batches."""
  size = len(data["tokens"])
  totals, count = np.zeros(len(names)), 0
  for start in range(0, size, batch_size):
    out = fn(params, {k: jnp.asarray(v[start:start + batch_size]) for k, v in data.items()})
    totals += np.asarray([float(x) for x in out[:-1]])
    count += int(out[-1])
  return {name: total / max(count, 1) for name, total in zip(names, totals)}


def make_dpo_task(cfg: gpt2.GPT2Config, lm_params, tx: optax.GradientTransformation, beta: float,
                  eval_batch: int = 64, learning_rate=None) -> Task:
  """DPO on rankings, from `lm_params`, with the frozen reference (the same parameters) as TrainState.extra.

  beta is a traced hyperparameter (Task.hparams {"beta": ...}), so a sweep over it is one
  vmapped program (research.train.Members).

  Args:
    cfg: the language model's config.
    lm_params: the starting (and reference) model.
    tx: the optimizer.
    beta: DPO's KL strength.
    eval_batch: rankings per evaluation batch.
    learning_rate: `learning_rate(opt_state, step)` to log, or None.

  Returns:
    A Task over ranking batches {"tokens": (B, K, L), "completion": (B, K, L)}, best first,
    whose params are {"params": lm}; `evaluate(params, key, rankings)` gives the held-out
    `dpo_loss` at the config's beta and `implicit_reward_accuracy` (pairs whose better
    completion has the higher implicit reward).
  """
  model = gpt2.GPT2(cfg)

  def log_probs(lm, batch):
    tokens, completion, (b, k) = _flat_rankings(batch)
    return sequence_log_probs(model, lm, tokens, completion).reshape(b, k)

  def train_step(state: TrainState, batch, key):
    del key
    ref = jax.lax.stop_gradient(log_probs(state.extra, batch))

    def loss_fn(params):
      value, implicit = dpo_loss(log_probs(params["params"], batch), ref, state.hparams["beta"])
      return value, implicit

    (value, implicit), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state, health = apply_gradients(tx, state.params, state.opt_state, grads)
    metrics = {"loss": value, "implicit_reward_accuracy": pair_accuracy(implicit),
               "implicit_reward_margin": jnp.mean(implicit[:, 0] - implicit[:, -1]), **health}
    return state.replace(params=params, opt_state=opt_state), metrics

  @jax.jit
  def eval_batch_sums(params, ref, batch):
    implicit_loss, implicit = dpo_loss(log_probs(params["params"], batch), log_probs(ref, batch), beta)
    pairs = implicit.shape[0] * len(ranked_pairs(implicit.shape[1])[0])
    return implicit_loss * pairs, pair_accuracy(implicit) * pairs, pairs

  def evaluate(params, key, data, hparams=None):
    del key, hparams  # the held-out loss is at the config's beta, for every member
    return _summed_over_batches(lambda p, b: eval_batch_sums(p, lm_params, b), params, data, eval_batch,
                                ("dpo_loss", "implicit_reward_accuracy"))

  return Task(init=lambda key, batch: {"params": lm_params}, tx=tx, train_step=train_step, evaluate=evaluate,
              init_extra=lambda key, batch: lm_params, hparams={"beta": beta}, learning_rate=learning_rate)


def make_ppo_task(cfg: gpt2.GPT2Config, settings: PPOSettings, tx: optax.GradientTransformation, lm_params,
                  ref_params, rm_params, hparams: dict[str, float], evaluate=None, learning_rate=None) -> Task:
  """PPO on the one training loop: each step is one rollout + update (`make_ppo_update`) on a batch of prompts.

  Args:
    cfg: the GPT-2 config of policy, reference and reward model.
    settings: the static PPO settings.
    tx: the policy's optimizer.
    lm_params: the language model the policy starts from.
    ref_params: the frozen reference (usually the same parameters).
    rm_params: the frozen reward model's variables.
    hparams: {PPOHParams field: value}, traced (TrainState.hparams), so a sweep over kl_coef
      is one vmapped program.
    evaluate: `evaluate(params, key, data) -> metrics`, or None; the PPO hyperparameters the
      loop hands a task's evaluation (Task.evaluate) are not passed on.
    learning_rate: `learning_rate(opt_state, step)` to log, or None.

  Returns:
    A Task over batches {"prompts": (B, P)} whose params are PolicyWithValue variables and
    whose TrainState.extra is a Frozen (reference, reward model, KL controller).
  """
  missing = set(PPOHParams._fields) - set(hparams)
  if missing:
    raise ConfigError(f"ppo hparams lack {', '.join(sorted(missing))}")
  update = make_ppo_update(cfg, settings, tx)

  def train_step(state: TrainState, batch, key):
    hp = PPOHParams(**{name: state.hparams[name] for name in PPOHParams._fields})
    params, opt_state, frozen, metrics, _ = update(state.params, state.opt_state, state.extra, batch["prompts"], key,
                                                   hp)
    return state.replace(params=params, opt_state=opt_state, extra=frozen), metrics._asdict()

  def evaluate_policy(params, key, data, hparams=None):
    del hparams
    return evaluate(params, key, data)

  return Task(init=lambda key, batch: init_policy(cfg, key, lm_params), tx=tx, train_step=train_step,
              evaluate=evaluate_policy if evaluate is not None else None, learning_rate=learning_rate,
              init_extra=lambda key, batch: Frozen(ref_params, rm_params, jnp.ones((), jnp.float32)),
              hparams={name: float(hparams[name]) for name in PPOHParams._fields})
