"""RLHF (research/rl/rlhf.py): the gold scorer and preference labels, closed forms of the losses, PPO's
per-token rewards and GAE against direct loops, a reward model that learns a known linear preference,
DPO's implicit rewards, and a short run of each stage."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import optim
from research.models import gpt2
from research.rl import rlhf
from research.tasks import rlhf as rlhf_tasks
from research.train import base_config, train

TINY = gpt2.GPT2Config(vocab_size=6, n_positions=16, n_embd=16, n_layer=1, n_head=2)


def _softplus(x: float) -> float:
  return math.log1p(math.exp(x))


def test_gold_score_counts_distinct_keywords_and_penalises_repeats():
  assert rlhf.gold_score("") == 0.0
  assert rlhf.gold_score("for x in range(3): return None") == 4.0  # for, in, return, None
  assert rlhf.gold_score("in in in") == 1.0 - 2.0
  assert rlhf.gold_score("in in in", repeat_penalty=0.5) == 0.0
  assert rlhf.gold_score("In inside if_ Nonesuch") == 0.0  # case-sensitive, whole words only
  np.testing.assert_array_equal(rlhf.gold_scores(["if", "if if", "if else"]), [1.0, 0.0, 2.0])


def test_rankings_follow_bradley_terry_and_plackett_luce():
  n = 20_000
  k_two, k_three = jax.random.split(jax.random.key(0))
  # K = 2: the better item is ranked first with the Bradley-Terry probability sigmoid((s_a - s_b) / T).
  order = np.asarray(rlhf.sample_rankings(k_two, jnp.tile(jnp.array([[1.0, 0.0]]), (n, 1)), 0.5))
  expected = float(rlhf.preference_probability(1.0, 0.0, 0.5))
  assert expected == pytest.approx(1.0 / (1.0 + math.exp(-2.0)))
  assert np.mean(order[:, 0] == 0) == pytest.approx(expected, abs=0.012)  # 5 standard errors
  # K = 3: the first place follows softmax(s / T) (Plackett-Luce).
  scores = jnp.array([2.0, 1.0, 0.0])
  order = np.asarray(rlhf.sample_rankings(k_three, jnp.tile(scores, (n, 1)), 1.0))
  np.testing.assert_allclose(np.bincount(order[:, 0], minlength=3) / n, jax.nn.softmax(scores), atol=0.015)
  assert sorted(order[0].tolist()) == [0, 1, 2]
  # Temperature 0: the exact ranking.
  np.testing.assert_array_equal(rlhf.sample_rankings(k_two, jnp.array([[0.0, 3.0, 1.0]]), 0.0), [[1, 2, 0]])


def test_ranking_and_dpo_losses_closed_forms():
  better, worse = rlhf.ranked_pairs(4)
  np.testing.assert_array_equal(better, [0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(worse, [1, 2, 3, 2, 3, 3])
  r = jnp.array([[2.0, 0.5, -1.0]])
  expected = np.mean([_softplus(-1.5), _softplus(-3.0), _softplus(-1.5)])  # -log sigmoid(r_w - r_l)
  assert float(rlhf.ranking_loss(r)) == pytest.approx(expected, rel=1e-6)
  assert float(rlhf.pair_accuracy(jnp.array([[0.0, 1.0, -1.0]]))) == pytest.approx(2.0 / 3.0)
  # DPO: implicit rewards beta (log pi - log pi_ref) = (0.5, -0.5); loss -log sigmoid(1).
  loss, implicit = rlhf.dpo_loss(jnp.array([[-1.0, -3.0]]), jnp.array([[-2.0, -2.0]]), 0.5)
  np.testing.assert_allclose(implicit, [[0.5, -0.5]])
  assert float(loss) == pytest.approx(_softplus(-1.0), rel=1e-6)
  # The policy equal to the reference: every implicit reward 0, loss log 2 at any beta.
  same = jnp.array([[-4.0, -2.0, -7.0]])
  assert float(rlhf.dpo_loss(same, same, 3.0)[0]) == pytest.approx(math.log(2.0), rel=1e-6)


def test_kl_penalised_rewards_match_a_direct_loop():
  rng = np.random.default_rng(0)
  log_probs, ref_log_probs = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
  scores = rng.normal(size=3)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  out = np.asarray(rlhf.kl_penalised_rewards(jnp.asarray(log_probs), jnp.asarray(ref_log_probs), jnp.asarray(scores),
                                             0.3, jnp.asarray(mask)))
  expected = np.zeros((3, 5))
  for b in range(3):
    length = int(mask[b].sum())
    for t in range(length):
      expected[b, t] = -0.3 * (log_probs[b, t] - ref_log_probs[b, t]) + (scores[b] if t == length - 1 else 0.0)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


class Models(NamedTuple):
  lm: dict  # the policy's language model
  ref: dict  # a different reference language model
  rm: dict  # a reward model
  policy: dict  # the policy's variables: lm with a random (not zero) value head


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def models() -> Models:
  """Tiny models, built in one compiled call (eager initialisation costs more than compiling it)."""

  @jax.jit
  def build(key):
    k_lm, k_ref, k_rm, k_value = jax.random.split(key, 4)
    dummy = jnp.zeros((1, 4), jnp.int32)
    lm = gpt2.GPT2(TINY).init(k_lm, dummy)["params"]
    ref = gpt2.GPT2(TINY).init(k_ref, dummy)["params"]
    policy = rlhf.init_policy(TINY, k_value, lm)
    head = policy["params"]["value_head"]
    head = {"kernel": jax.random.normal(k_value, head["kernel"].shape), "bias": head["bias"] + 0.3}
    return Models(lm, ref, rlhf.init_reward_model(TINY, k_rm, 8), {"params": {**policy["params"], "value_head": head}})

  return build(jax.random.key(1))


@pytest.mark.slow
def test_ppo_update_rollout_rewards_gae_and_kl_controller_match_direct_loops(models):
  lm, ref, rm, policy = models
  b, p, n = 4, 3, 5
  settings = rlhf.PPOSettings(new_tokens=n, update_epochs=2, num_minibatches=2, kl_target=0.5, kl_horizon=10.0)
  tx = optax.adam(1e-2)
  update = rlhf.make_ppo_update(TINY, settings, tx)
  prompts = jax.random.randint(jax.random.key(2), (b, p), 0, TINY.vocab_size)
  frozen = rlhf.Frozen(ref, rm, jnp.ones(()))
  hparams = rlhf.ppo_hparams(kl_coef=jnp.array([0.1, 1.0]), gamma=0.9, gae_lambda=0.8)
  axes = rlhf.PPOHParams(0, None, None, None, None, None)  # one program for both betas
  new_params, _, new_frozen, metrics, batch = jax.jit(jax.vmap(update, in_axes=(None, None, None, None, None, axes)))(
      policy, tx.init(policy), frozen, prompts, jax.random.key(3), hparams)

  # Same samples for both betas (same key and policy).
  np.testing.assert_array_equal(batch.tokens[0], batch.tokens[1])
  tokens = np.asarray(batch.tokens[0])
  np.testing.assert_array_equal(tokens[:, :p], prompts)
  assert tokens.min() >= 0 and tokens.max() < TINY.vocab_size

  @jax.jit
  def recompute(tokens):
    """Log-probabilities under the pre-update policy and the reference, the score and the values."""
    model = gpt2.GPT2(TINY)
    values = rlhf.PolicyWithValue(TINY).apply(policy, tokens[:, :-1])[1]
    return (rlhf.token_log_probs(model, lm, tokens)[:, p - 1:], rlhf.token_log_probs(model, ref, tokens)[:, p - 1:],
            rlhf.RewardModel(TINY).apply(rm, tokens, jnp.ones(tokens.shape, bool)), values[:, p - 1:])

  lp, ref_lp, score, values = (np.asarray(x, np.float64) for x in recompute(jnp.asarray(tokens)))
  for m, beta in enumerate([0.1, 1.0]):
    np.testing.assert_allclose(batch.log_prob[m], lp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch.ref_log_prob[m], ref_lp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch.score[m], score, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch.value[m], values, rtol=1e-4, atol=1e-5)
    # Per-token rewards and GAE, token by token.
    rewards, advantages = np.zeros((b, n)), np.zeros((b, n))
    for i in range(b):
      for t in range(n):
        rewards[i, t] = -beta * (lp[i, t] - ref_lp[i, t]) + (score[i] if t == n - 1 else 0.0)
      next_advantage = 0.0
      for t in reversed(range(n)):
        next_value = values[i, t + 1] if t + 1 < n else 0.0
        delta = rewards[i, t] + 0.9 * next_value - values[i, t]
        next_advantage = delta + 0.9 * 0.8 * next_advantage
        advantages[i, t] = next_advantage
    np.testing.assert_allclose(batch.reward[m], rewards, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch.advantage[m], advantages, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch.target[m], advantages + values, rtol=1e-4, atol=1e-5)
    # Ziegler et al.'s controller: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * B / horizon.
    kl = float(np.mean(np.sum(lp - ref_lp, axis=1)))
    assert float(metrics.kl[m]) == pytest.approx(kl, rel=1e-4, abs=1e-5)
    assert float(metrics.kl_coef[m]) == pytest.approx(beta)
    expected_scale = 1.0 + float(np.clip(kl / 0.5 - 1.0, -0.2, 0.2)) * b / 10.0
    assert float(new_frozen.kl_scale[m]) == pytest.approx(expected_scale, rel=1e-5)
  # The update moved the policy.
  assert all(np.isfinite(np.asarray(x)).all() for x in metrics)
  moved = jax.tree.map(lambda a, c: float(jnp.max(jnp.abs(a[0] - c))), new_params, policy)
  assert max(jax.tree.leaves(moved)) > 0


def test_ppo_train_is_one_program_over_updates(models):
  lm, rm = models.lm, models.rm
  prompts = jax.random.randint(jax.random.key(5), (10, 3), 0, TINY.vocab_size)
  settings = rlhf.PPOSettings(new_tokens=4, update_epochs=1, num_minibatches=2)
  train_fn = rlhf.make_ppo_train(TINY, settings, optax.adam(1e-3), prompts, batch_size=4, num_updates=3)
  out = jax.jit(train_fn)(jax.random.key(6), lm, lm, rm, rlhf.ppo_hparams(kl_coef=0.2))
  assert out.completions.shape == (3, 4, 4) and out.prompt_index.shape == (3, 4)
  assert out.metrics.score.shape == (3,)
  assert all(np.isfinite(np.asarray(x)).all() for x in out.metrics)
  np.testing.assert_allclose(out.metrics.kl_coef, 0.2)
  # The first rollout comes from the starting policy, which is the reference: zero KL.
  assert float(out.metrics.kl[0]) == pytest.approx(0.0, abs=1e-5)
  with pytest.raises(rlhf.ConfigError, match="num_minibatches"):
    rlhf.make_ppo_train(TINY, settings, optax.adam(1e-3), prompts, batch_size=3, num_updates=3)


def _linear_rankings(key, m: int, k: int, weights: np.ndarray) -> dict[str, np.ndarray]:
  """Rankings of random right-padded sequences by sum of per-token weights over the completion (temperature 0.05)."""
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
  length, p = 8, 2
  tokens = rng.integers(1, TINY.vocab_size, (m, k, length))
  lengths = rng.integers(4, length - p + 1, (m, k))  # completion lengths 4 .. 6, then padding (token 0)
  completion = (np.arange(length) >= p) & (np.arange(length) < (p + lengths)[..., None])
  tokens = np.where(completion | (np.arange(length) < p), tokens, 0)
  gold = np.sum(weights[tokens] * completion, axis=-1)  # (m, k)
  order = np.asarray(rlhf.sample_rankings(key, jnp.asarray(gold), 0.05))
  return {"tokens": np.take_along_axis(tokens, order[..., None], 1).astype(np.int32),
          "completion": np.take_along_axis(completion, order[..., None], 1)}


@pytest.mark.slow
def test_reward_model_learns_a_linear_preference(tmp_path):
  weights = np.array([0.0, 1.0, -1.0, 0.5, 0.0, -0.5])
  k_train, k_eval = jax.random.split(jax.random.key(7))
  data, held_out = _linear_rankings(k_train, 512, 3, weights), _linear_rankings(k_eval, 64, 3, weights)
  config = base_config()
  config.steps, config.batch_size, config.steps_per_call = 100, 16, 50
  config.optimizer.learning_rate = 5e-3
  config.log_every = config.checkpoint_every = 100
  task = rlhf_tasks.make_reward_task(TINY, optim.make(config.optimizer, config.steps))
  run = train(task, config, str(tmp_path), data, held_out)
  assert run.results["pair_accuracy"] > 0.85  # chance: 0.5
  # The score is read at the last real token: what follows it (the padding) changes nothing.
  tokens, completion = jnp.asarray(held_out["tokens"][:, 0]), jnp.asarray(held_out["completion"][:, 0])
  repadded = jnp.where(completion | (jnp.arange(8) < 2), tokens, 3)
  np.testing.assert_allclose(rlhf.reward_model_scores(TINY, run.state.params, tokens, completion),
                             rlhf.reward_model_scores(TINY, run.state.params, repadded, completion), rtol=1e-5)


def test_dpo_raises_the_implicit_reward_of_preferred_completions(tmp_path, models):
  weights = np.array([0.0, 1.0, -1.0, 0.5, 0.0, -0.5])
  k_train, k_eval = jax.random.split(jax.random.key(8))
  data, held_out = _linear_rankings(k_train, 256, 2, weights), _linear_rankings(k_eval, 64, 2, weights)
  lm = models.lm
  config = base_config()
  config.steps, config.batch_size, config.steps_per_call = 60, 16, 30
  config.optimizer.learning_rate = 3e-3
  config.log_every = config.checkpoint_every = 60
  task = rlhf_tasks.make_dpo_task(TINY, lm, optim.make(config.optimizer, config.steps), beta=0.5)
  run = train(task, config, str(tmp_path), data, held_out)
  # Implicit reward beta (log pi - log pi_ref): preferred completions end up above the others.
  assert run.results["implicit_reward_accuracy"] > 0.75
  assert run.results["dpo_loss"] < math.log(2.0)
  assert run.state.hparams["beta"] == pytest.approx(0.5)


def test_sft_loss_is_the_completion_cross_entropy(models):
  task = rlhf_tasks.make_sft_task(TINY, models.lm, optax.adam(1e-3))
  tokens = jax.random.randint(jax.random.key(11), (3, 8), 0, TINY.vocab_size)
  completion = jnp.broadcast_to(jnp.arange(8) >= 5, (3, 8))

  @jax.jit
  def both(tokens, completion):
    loss, _ = task.loss(task.init(None, None), {"tokens": tokens, "completion": completion}, None, True, {})
    # The mean NLL of tokens 5 .. 7 given their prefixes: minus the mean of their log-probabilities.
    return loss, -jnp.mean(rlhf.token_log_probs(gpt2.GPT2(TINY), models.lm, tokens)[:, 4:])

  loss, direct = both(tokens, completion)
  assert float(loss) == pytest.approx(float(direct), rel=1e-5)
