"""RLHF on a GPT-2 language model: a gold scorer, ranked preferences, a reward model, PPO with a KL penalty, DPO.

The three steps of Ouyang et al. (2022), with Stiennon et al. (2020) and Ziegler et al. (2019):

1. a pretrained, supervised-fine-tuned language model (research/models/gpt2.py);
2. a reward model learned from rankings of its own samples (`RewardModel`, `ranking_loss`);
3. reinforcement learning against that reward with a KL penalty to the starting model
   (`make_ppo_update`: one rollout + PPO update as one pure function, run by the loop or as a
   whole-training `lax.scan` through `make_ppo_train`), or directly from the preferences with
   DPO (Rafailov et al. 2023; `dpo_loss`).

The plug-ins that train each stage on the loop (`make_sft_task`, `make_reward_task`,
`make_ppo_task`, `make_dpo_task`) are research/tasks/rlhf.py.

Preferences come from a hidden gold scorer (`gold_score`) instead of people, drawn through the
Bradley-Terry / Plackett-Luce model with a temperature, so labels are noisy as human ones are.
The gold scorer only labels and evaluates; nothing trains on it directly.

Layout of every sequence: a prompt of P tokens (no padding) followed by a completion. Preference
data are rankings: `tokens` (M, K, L) with each row's K completions ordered best first and
`completion` (M, K, L) booleans, True at completion tokens (False at the prompt and at any right
padding); all K choose 2 pairs of a ranking are used in the same batch (InstructGPT).

Parameters: a language model's `lm_params` are GPT-2's inner dict (what gpt2.generate takes);
the reward model's and the PPO policy's are flax variable dicts {"params": {"backbone": lm,
"head" | "value_head": ...}}.
"""

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.checks import ConfigError
from research.models import gpt2
from research.rl.losses import clipped_surrogate_loss, entropy, gae, log_prob, value_loss
from research.train.step import apply_gradients

# ---------------------------------------------------------------------------------------
# 1. The gold scorer and the preferences it labels.

# Python's keywords (as of 3.7+; fixed here so scores never depend on the interpreter).
TARGET_WORDS = frozenset((
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "raise", "return", "try", "while", "with", "yield"))
_WORD = re.compile(r"[A-Za-z_]+")


def gold_score(text: str, repeat_penalty: float = 1.0) -> float:
  """The hidden task: use many different Python keywords without repeating any.

  gold = (distinct keywords) - repeat_penalty * (keyword occurrences beyond each one's first).

  Words are maximal runs of letters and underscores, matched case-sensitively against
  TARGET_WORDS ("in" counts, "In" and "inside" do not). A reward model that learns "more
  keywords is better" from ordinary samples (which rarely repeat one) can be exploited by
  repetition, which the gold score punishes: the over-optimisation RLHF has to stay clear of.

  Args:
    text: the completion.
    repeat_penalty: the cost of each repeated keyword.

  Returns:
    The score.
  """
  hits = [w for w in _WORD.findall(text) if w in TARGET_WORDS]
  distinct = len(set(hits))
  return float(distinct - repeat_penalty * (len(hits) - distinct))


def gold_scores(texts: Sequence[str], repeat_penalty: float = 1.0) -> np.ndarray:
  """`gold_score` of each text, as a float64 array."""
  return np.asarray([gold_score(t, repeat_penalty) for t in texts], np.float64)


def preference_probability(score_a, score_b, temperature):
  """Bradley-Terry: P(a preferred to b) = sigmoid((score_a - score_b) / temperature)."""
  return jax.nn.sigmoid((jnp.asarray(score_a) - jnp.asarray(score_b)) / temperature)


def sample_rankings(key: jax.Array, scores: jax.Array, temperature: float) -> jax.Array:
  """Noisy rankings of K items by the Plackett-Luce model (Bradley-Terry for K = 2).

  Sorting scores / temperature + Gumbel noise draws a ranking with P(first = i) =
  softmax(scores / temperature)_i, then the next from the rest, and so on; for two items,
  P(a above b) = sigmoid((s_a - s_b) / temperature), the Bradley-Terry probability. A
  temperature of 0 ranks by the scores themselves (ties by index).

  Args:
    key: draws the noise.
    scores: (..., K) gold scores.
    temperature: the labellers' noise; larger is noisier.

  Returns:
    (..., K) int32 item indices, best first.
  """
  scores = jnp.asarray(scores, jnp.float32)
  noisy = scores + temperature * jax.random.gumbel(key, scores.shape)
  return jnp.argsort(-noisy, axis=-1, stable=True).astype(jnp.int32)


def ranked_pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
  """(better, worse) indices of all K choose 2 pairs of a ranking listed best first: better < worse."""
  better, worse = np.triu_indices(k, 1)
  return better.astype(np.int32), worse.astype(np.int32)


# ---------------------------------------------------------------------------------------
# 2. Losses.


def ranking_loss(rewards: jax.Array) -> jax.Array:
  """The reward model's loss over every pair of each ranking: mean of -log sigmoid(r(y_w) - r(y_l)).

  Args:
    rewards: (B, K) rewards of each ranking's completions, best first.

  Returns:
    The scalar loss, averaged over the B * K (K - 1) / 2 pairs (InstructGPT's 1 / (K choose 2)).
  """
  better, worse = ranked_pairs(rewards.shape[-1])
  return -jnp.mean(jax.nn.log_sigmoid(rewards[:, better] - rewards[:, worse]))


def pair_accuracy(rewards: jax.Array) -> jax.Array:
  """Fraction of each ranking's pairs whose better item gets the strictly higher reward; (B, K) -> scalar."""
  better, worse = ranked_pairs(rewards.shape[-1])
  return jnp.mean((rewards[:, better] > rewards[:, worse]).astype(jnp.float32))


def dpo_loss(policy_log_probs: jax.Array, ref_log_probs: jax.Array, beta) -> tuple[jax.Array, jax.Array]:
  """DPO (Rafailov et al. 2023, eq. 7) over every pair of each ranking.

  1. implicit reward r(y) = beta (log pi(y) - log pi_ref(y))
  2. L = -mean log sigmoid(r(y_w) - r(y_l))

  Args:
    policy_log_probs: (B, K) log pi(y | x) of each completion, best first.
    ref_log_probs: (B, K) log pi_ref(y | x).
    beta: the KL strength (a traced scalar).

  Returns:
    (scalar loss, (B, K) implicit rewards).
  """
  implicit = beta * (policy_log_probs - ref_log_probs)  # (B, K)
  return ranking_loss(implicit), implicit


def kl_penalised_rewards(log_probs: jax.Array, ref_log_probs: jax.Array, scores: jax.Array, kl_coef,
                         mask: jax.Array | None = None) -> jax.Array:
  """PPO's per-token reward: -kl_coef (log pi(a_t|s_t) - log pi_ref(a_t|s_t)), plus the score on the last token.

  Args:
    log_probs: (B, N) log pi of the sampled completion tokens.
    ref_log_probs: (B, N) log pi_ref of the same tokens.
    scores: (B,) the reward model's scores of the whole sequences.
    kl_coef: beta.
    mask: (B, N) booleans, True at real tokens (right padding False); None: all real.

  Returns:
    (B, N) rewards; the score lands on each row's last real token.
  """
  rewards = -kl_coef * (log_probs - ref_log_probs)
  if mask is None:
    mask = jnp.ones(rewards.shape, bool)
  last = _last_index(mask)  # (B,)
  rewards = rewards + jax.nn.one_hot(last, rewards.shape[1], dtype=rewards.dtype) * scores[:, None]
  return jnp.where(mask, rewards, 0.0)


def _last_index(mask: jax.Array) -> jax.Array:
  """Index of the last True along the last axis (B, L) -> (B,) (0 for a row without any)."""
  length = mask.shape[-1]
  return length - 1 - jnp.argmax(mask[..., ::-1], axis=-1)


# ---------------------------------------------------------------------------------------
# 3. Models on the GPT-2 backbone.


class RewardModel(nn.Module):
  """GPT-2 with a scalar head on the hidden state of each sequence's last non-padding token."""

  cfg: gpt2.GPT2Config

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """(B, L) tokens, (B, L) booleans (True at real tokens, right-padded) -> (B,) rewards."""
    # Causal attention: right padding never reaches the tokens before it, so no attention mask.
    _, hidden = gpt2.GPT2(self.cfg, name="backbone")(tokens, return_hidden=True)  # (B, L, E)
    last = jnp.take_along_axis(hidden, _last_index(mask)[:, None, None], axis=1)[:, 0]  # (B, E)
    return nn.Dense(1, kernel_init=nn.initializers.normal(0.02), name="head")(last)[:, 0]


class PolicyWithValue(nn.Module):
  """The PPO policy: GPT-2's next-token logits and a value head on the same hidden states."""

  cfg: gpt2.GPT2Config

  @nn.compact
  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, T) tokens -> (logits (B, T, vocab), values (B, T)): V of the state after each token."""
    logits, hidden = gpt2.GPT2(self.cfg, name="backbone")(tokens, return_hidden=True)
    # Zero init: the first advantages are the rewards themselves, not a random baseline.
    value = nn.Dense(1, kernel_init=nn.initializers.zeros, name="value_head")(hidden)
    return logits, value[..., 0]


def with_backbone(variables, lm_params):
  """`variables` ({"params": {"backbone": ..., ...}}) with the backbone replaced by `lm_params`."""
  return {"params": {**variables["params"], "backbone": lm_params}}


def init_reward_model(cfg: gpt2.GPT2Config, key: jax.Array, length: int, lm_params=None):
  """Reward-model variables: a fresh head on `lm_params` (InstructGPT starts from the SFT model), or all fresh."""
  variables = RewardModel(cfg).init(key, jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), bool))
  variables = nn.unbox(variables)
  return variables if lm_params is None else with_backbone(variables, lm_params)


def init_policy(cfg: gpt2.GPT2Config, key: jax.Array, lm_params):
  """PPO policy variables: the language model `lm_params` with a zero value head."""
  variables = nn.unbox(PolicyWithValue(cfg).init(key, jnp.zeros((1, 1), jnp.int32)))
  return with_backbone(variables, lm_params)


def token_log_probs(model: gpt2.GPT2, lm_params, tokens: jax.Array) -> jax.Array:
  """log p(x_t | x_<t) of every token after the first: (B, L) -> (B, L - 1)."""
  logits = model.apply({"params": lm_params}, tokens[:, :-1])  # (B, L - 1, vocab)
  return log_prob(logits, tokens[:, 1:])


def sequence_log_probs(model: gpt2.GPT2, lm_params, tokens: jax.Array, completion: jax.Array) -> jax.Array:
  """log pi(y | x): the summed log-probabilities of the completion tokens; (B, L), (B, L) -> (B,)."""
  return jnp.sum(token_log_probs(model, lm_params, tokens) * completion[:, 1:], axis=-1)


def sequence_kl(logits: jax.Array, ref_logits: jax.Array) -> jax.Array:
  """Sum over positions of KL(pi(.|s_t) || pi_ref(.|s_t)): (B, N, vocab) twice -> (B,).

  With s_t the prefixes of sequences drawn from pi, its mean is KL(pi || pi_ref) between the
  two distributions over whole completions (the chain rule of KL), never negative.
  """
  logp, ref_logp = jax.nn.log_softmax(logits), jax.nn.log_softmax(ref_logits)
  return jnp.sum(jnp.exp(logp) * (logp - ref_logp), axis=(-2, -1))


def reward_model_scores(cfg: gpt2.GPT2Config, rm_params, tokens: jax.Array, completion: jax.Array) -> jax.Array:
  """The reward model's scores of (B, L) sequences whose real tokens end where `completion` ends; (B,)."""
  real = jnp.cumsum(completion[:, ::-1], axis=1)[:, ::-1] > 0  # everything up to the last completion token
  return RewardModel(cfg).apply(rm_params, tokens, real)


# ---------------------------------------------------------------------------------------
# 4. PPO for language models.


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """What fixes the PPO program's shapes and structure (the traced values are in PPOHParams).

  Attributes:
    new_tokens: N, completion tokens sampled per prompt.
    update_epochs: passes over each rollout.
    num_minibatches: minibatches (of whole sequences) per pass; divides the rollout's prompts.
    clip_value_loss: clip the value loss with clip_eps, as PPO's reference code.
    kl_target: the adaptive KL controller's target (mean KL per sequence, nats); 0 keeps beta fixed.
    kl_horizon: the controller's horizon in sequences (Ziegler et al.: 10,000).
    reward_model: the reward model's GPT-2 config (None: the policy's).
  """

  new_tokens: int
  update_epochs: int = 4
  num_minibatches: int = 4
  clip_value_loss: bool = True
  kl_target: float = 0.0
  kl_horizon: float = 10_000.0
  reward_model: gpt2.GPT2Config | None = None

  def check(self, batch_size: int) -> None:
    """Raises ConfigError on a bad field, or a rollout of `batch_size` prompts the minibatches do not divide."""
    for name in ("new_tokens", "update_epochs", "num_minibatches"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"ppo {name} must be a positive integer, got {value!r}")
    if batch_size % self.num_minibatches:
      raise ConfigError(f"ppo batch_size {batch_size} is not divisible by num_minibatches {self.num_minibatches}")
    if self.kl_target < 0 or self.kl_horizon <= 0:
      raise ConfigError(f"ppo kl_target must be >= 0 and kl_horizon > 0, got {self.kl_target}, {self.kl_horizon}")


class PPOHParams(NamedTuple):
  """PPO's traced hyperparameters: one compiled program serves every value (vmap over beta, say)."""

  kl_coef: jax.Array  # beta of the per-token KL penalty (the adaptive controller scales it)
  clip_eps: jax.Array  # the surrogate's (and the value loss's) clipping range
  vf_coef: jax.Array  # value loss weight
  ent_coef: jax.Array  # entropy bonus weight
  gamma: jax.Array  # discount over tokens
  gae_lambda: jax.Array  # GAE lambda


def ppo_hparams(kl_coef=0.05, clip_eps=0.2, vf_coef=0.1, ent_coef=0.0, gamma=1.0, gae_lambda=0.95) -> PPOHParams:
  """PPOHParams as float32 arrays (any may be a (members,) array for a vmapped sweep)."""
  values = dict(kl_coef=kl_coef, clip_eps=clip_eps, vf_coef=vf_coef, ent_coef=ent_coef, gamma=gamma,
                gae_lambda=gae_lambda)
  return PPOHParams(**{k: jnp.asarray(v, jnp.float32) for k, v in values.items()})


class Frozen(NamedTuple):
  """What PPO carries but does not train: the reference and reward models, and the KL controller."""

  ref_params: Any  # the reference language model (lm_params)
  rm_params: Any  # the reward model's variables
  kl_scale: jax.Array  # the adaptive controller's multiplier on kl_coef (1 when beta is fixed)


class Rollout(NamedTuple):
  """One batch of sampled completions and what the update needs of them; (B, ...)."""

  tokens: jax.Array  # (B, P + N) prompt and completion
  log_prob: jax.Array  # (B, N) log pi_old of the completion tokens
  ref_log_prob: jax.Array  # (B, N) log pi_ref of them
  value: jax.Array  # (B, N) V_old of the state before each completion token
  score: jax.Array  # (B,) the reward model's score
  reward: jax.Array  # (B, N) KL-penalised per-token rewards
  advantage: jax.Array  # (B, N) GAE
  target: jax.Array  # (B, N) value targets


class PPOMetrics(NamedTuple):
  """One update's diagnostics (means over its gradient steps for the losses)."""

  loss: jax.Array
  score: jax.Array  # mean reward-model score of the rollout (the proxy reward)
  kl: jax.Array  # mean per-sequence sum of log pi - log pi_ref over the sampled tokens
  kl_coef: jax.Array  # the beta this rollout was penalised with
  reward: jax.Array  # mean per-sequence total reward: score - beta * kl
  policy_loss: jax.Array
  value_loss: jax.Array
  entropy: jax.Array
  approx_kl: jax.Array  # KL(old || new) estimate of the update
  clip_fraction: jax.Array
  grad_norm: jax.Array
  param_norm: jax.Array
  update_norm: jax.Array


def make_rollout(cfg: gpt2.GPT2Config, settings: PPOSettings) -> Callable[..., Rollout]:
  """`rollout(params, frozen, prompts, key, hparams) -> Rollout`: sample, score and compute advantages.

  The completions are drawn from the policy itself (temperature 1, no top-k) with the KV-cache
  sampler, so the recorded log-probabilities are the ones the samples came from.
  """
  lm, policy, n = gpt2.GPT2(cfg), PolicyWithValue(cfg), settings.new_tokens

  def rollout(params, frozen: Frozen, prompts: jax.Array, key: jax.Array, hparams: PPOHParams) -> Rollout:
    b, p = prompts.shape
    new = gpt2.continue_prompts(lm, params["params"]["backbone"], prompts, jnp.ones((b, p), bool), key, n)
    tokens = jnp.concatenate([prompts, new], axis=1)  # (B, P + N)
    logits, values = policy.apply(params, tokens[:, :-1])  # predictions of tokens 1 .. P + N - 1
    old_log_prob = log_prob(logits[:, p - 1:], new)  # (B, N)
    values = values[:, p - 1:]  # V of the state each completion token is chosen in
    ref_log_prob = token_log_probs(lm, frozen.ref_params, tokens)[:, p - 1:]
    completion = jnp.concatenate([jnp.zeros((b, p), bool), jnp.ones((b, n), bool)], axis=1)
    score = reward_model_scores(settings.reward_model or cfg, frozen.rm_params, tokens, completion)
    rewards = kl_penalised_rewards(old_log_prob, ref_log_prob, score, hparams.kl_coef * frozen.kl_scale)
    # Time-major for GAE; the completion ends (terminally) at its last token.
    end = jnp.zeros((n, b)).at[-1].set(1.0)
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros((b, 1))], axis=1)
    advantages, targets = gae(rewards.T, values.T, next_values.T, end, end, hparams.gamma, hparams.gae_lambda)
    return Rollout(tokens=tokens, log_prob=old_log_prob, ref_log_prob=ref_log_prob, value=values, score=score,
                   reward=rewards, advantage=advantages.T, target=targets.T)

  return rollout


def make_ppo_update(cfg: gpt2.GPT2Config, settings: PPOSettings, tx: optax.GradientTransformation):
  """One PPO iteration for a language model: a rollout, then epochs of minibatch updates.

  Args:
    cfg: the policy's (and reference's) GPT-2 config; the reward model shares it.
    settings: the static PPO settings.
    tx: the policy's optimizer.

  Returns:
    `update(params, opt_state, frozen, prompts, key, hparams) -> (params, opt_state, frozen,
    PPOMetrics, Rollout)`, pure and jit- / vmap-able; `prompts` is (B, P) int32 and `hparams` a
    PPOHParams. With settings.kl_target > 0 the returned `frozen.kl_scale` is the adaptive
    controller's next value (Ziegler et al. 2019, section 2.2).
  """
  policy, n = PolicyWithValue(cfg), settings.new_tokens
  rollout_fn = make_rollout(cfg, settings)

  def loss_fn(params, batch: Rollout, hparams: PPOHParams):
    p = batch.tokens.shape[1] - n
    logits, values = policy.apply(params, batch.tokens[:, :-1])
    logits, values = logits[:, p - 1:], values[:, p - 1:]  # (mb, N, vocab), (mb, N)
    actions = batch.tokens[:, p:]
    new_log_prob = log_prob(logits, actions)
    advantages = batch.advantage.reshape(-1)
    # Whitened per minibatch, as research/rl/ppo.py: the step's scale does not follow the reward's.
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss = clipped_surrogate_loss(new_log_prob.reshape(-1), batch.log_prob.reshape(-1), advantages,
                                         hparams.clip_eps)
    v_loss = value_loss(values.reshape(-1), batch.value.reshape(-1), batch.target.reshape(-1),
                        hparams.clip_eps if settings.clip_value_loss else None)
    ent = jnp.mean(entropy(logits))
    total = policy_loss + hparams.vf_coef * v_loss - hparams.ent_coef * ent
    log_ratio = new_log_prob - batch.log_prob
    ratio = jnp.exp(log_ratio)
    stats = {"loss": total, "policy_loss": policy_loss, "value_loss": v_loss, "entropy": ent,
             "approx_kl": jnp.mean(ratio - 1.0 - log_ratio),
             "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > hparams.clip_eps).astype(jnp.float32))}
    return total, stats

  def update(params, opt_state, frozen: Frozen, prompts, key, hparams: PPOHParams):
    k_rollout, k_shuffle = jax.random.split(key)
    batch = rollout_fn(params, frozen, prompts, k_rollout, hparams)
    b = prompts.shape[0]

    def gradient_step(carry, minibatch):
      params, opt_state = carry
      grads, stats = jax.grad(loss_fn, has_aux=True)(params, minibatch, hparams)
      params, opt_state, health = apply_gradients(tx, params, opt_state, grads)
      return (params, opt_state), {**stats, **health}

    def epoch(carry, key):
      order = jax.random.permutation(key, b)
      minibatches = jax.tree.map(  # (num_minibatches, B / num_minibatches, ...)
          lambda x: x[order].reshape((settings.num_minibatches, -1) + x.shape[1:]), batch)
      return jax.lax.scan(gradient_step, carry, minibatches)

    (params, opt_state), stats = jax.lax.scan(epoch, (params, opt_state),
                                              jax.random.split(k_shuffle, settings.update_epochs))
    stats = jax.tree.map(jnp.mean, stats)
    kl = jnp.mean(jnp.sum(batch.log_prob - batch.ref_log_prob, axis=1))
    kl_coef = hparams.kl_coef * frozen.kl_scale
    if settings.kl_target > 0:
      error = jnp.clip(kl / settings.kl_target - 1.0, -0.2, 0.2)
      frozen = frozen._replace(kl_scale=frozen.kl_scale * (1.0 + error * b / settings.kl_horizon))
    metrics = PPOMetrics(score=jnp.mean(batch.score), kl=kl, kl_coef=kl_coef,
                         reward=jnp.mean(jnp.sum(batch.reward, axis=1)), **stats)
    return params, opt_state, frozen, metrics, batch

  return update


class PPOOutput(NamedTuple):
  """What `make_ppo_train`'s `train` returns."""

  params: Any  # the final policy (PolicyWithValue variables)
  metrics: PPOMetrics  # leaves (num_updates,)
  completions: jax.Array  # (num_updates, B, N) the completions each update sampled (for gold scores along training)
  prompt_index: jax.Array  # (num_updates, B) rows of `prompts` they continue


def make_ppo_train(cfg: gpt2.GPT2Config, settings: PPOSettings, tx: optax.GradientTransformation,
                   prompts: jax.Array, batch_size: int, num_updates: int):
  """The whole PPO training as one pure function (PureJaxRL style): a `lax.scan` over updates.

    train = make_ppo_train(cfg, settings, optax.adam(1e-4), prompts, 32, 100)
    out = jax.jit(jax.vmap(train, in_axes=(None, None, None, None, rlhf.PPOHParams(0, *[None] * 5))))(
        key, lm_params, lm_params, rm_params, ppo_hparams(kl_coef=jnp.array([0.01, 0.1])))

  Args:
    cfg: the GPT-2 config of policy, reference and reward model.
    settings: the static PPO settings.
    tx: the policy's optimizer.
    prompts: (M, P) int32 prompts; each update draws `batch_size` rows uniformly.
    batch_size: prompts per rollout.
    num_updates: rollout + update iterations.

  Returns:
    `train(key, lm_params, ref_params, rm_params, hparams) -> PPOOutput`, jit- and vmap-able
    over the key and any PPOHParams field.
  """
  settings.check(batch_size)
  update = make_ppo_update(cfg, settings, tx)
  prompts = jnp.asarray(prompts, jnp.int32)
  p = prompts.shape[1]

  def train(key, lm_params, ref_params, rm_params, hparams: PPOHParams) -> PPOOutput:
    hparams = PPOHParams(*(jnp.asarray(h, jnp.float32) for h in hparams))
    k_init, k_updates = jax.random.split(key)
    params = init_policy(cfg, k_init, lm_params)
    frozen = Frozen(ref_params, rm_params, jnp.ones((), jnp.float32))

    def body(carry, key):
      params, opt_state, frozen = carry
      k_prompts, k_update = jax.random.split(key)
      index = jax.random.randint(k_prompts, (batch_size,), 0, prompts.shape[0])
      params, opt_state, frozen, metrics, batch = update(params, opt_state, frozen, prompts[index], k_update, hparams)
      return (params, opt_state, frozen), (metrics, batch.tokens[:, p:], index)

    (params, _, _), (metrics, completions, index) = jax.lax.scan(
        body, (params, tx.init(params), frozen), jax.random.split(k_updates, num_updates))
    return PPOOutput(params=params, metrics=metrics, completions=completions, prompt_index=index)

  return train


# ---------------------------------------------------------------------------------------
# 5. Evaluation of a policy against the reference and the reward model.


class PolicySamples(NamedTuple):
  """Completions of a policy and their proxy score and KL to the reference; (M, ...)."""

  completions: np.ndarray  # (M, N) int32
  proxy: np.ndarray  # (M,) reward-model scores
  kl: np.ndarray  # (M,) summed per-position KL(pi || pi_ref) along each completion


def sample_policy(cfg: gpt2.GPT2Config, lm_params, ref_params, rm_params, prompts, key: jax.Array, new_tokens: int,
                  batch_size: int = 64, rm_cfg: gpt2.GPT2Config | None = None) -> PolicySamples:
  """Samples completions of `prompts` from a policy (temperature 1) and scores them with the reward model.

  Args:
    cfg: the GPT-2 config of the policy, reference and reward model.
    lm_params: the policy's language model.
    ref_params: the reference language model.
    rm_params: the reward model's variables.
    prompts: (M, P) prompt ids.
    key: the sampling key (batch i uses fold_in(key, i)).
    new_tokens: N.
    batch_size: prompts per compiled call.
    rm_cfg: the reward model's config (None: `cfg`).

  Returns:
    PolicySamples.
  """
  prompts = np.asarray(prompts, np.int32)
  outs = [_sample_and_score(cfg, rm_cfg or cfg, new_tokens, lm_params, ref_params, rm_params,
                            jnp.asarray(prompts[start:start + batch_size]), jax.random.fold_in(key, i))
          for i, start in enumerate(range(0, len(prompts), batch_size))]
  return PolicySamples(*(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(3)))


@functools.partial(jax.jit, static_argnames=("cfg", "rm_cfg", "new_tokens"))
def _sample_and_score(cfg, rm_cfg, new_tokens, lm_params, ref_params, rm_params, prompts, key):
  lm = gpt2.GPT2(cfg)
  b, p = prompts.shape
  new = gpt2.continue_prompts(lm, lm_params, prompts, jnp.ones((b, p), bool), key, new_tokens)
  tokens = jnp.concatenate([prompts, new], axis=1)
  logits = lm.apply({"params": lm_params}, tokens[:, :-1])[:, p - 1:]
  ref_logits = lm.apply({"params": ref_params}, tokens[:, :-1])[:, p - 1:]
  completion = jnp.concatenate([jnp.zeros((b, p), bool), jnp.ones((b, new_tokens), bool)], axis=1)
  return new, reward_model_scores(rm_cfg, rm_params, tokens, completion), sequence_kl(logits, ref_logits)
