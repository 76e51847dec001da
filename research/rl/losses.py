"""Losses and targets shared by PPO, A2C, REINFORCE, DQN and RLHF.

Policy side: `log_prob` and `entropy` of a categorical policy, PPO's `clipped_surrogate_loss`.
Value side: `gae` (advantages and lambda-returns; lambda = 1 gives A2C's n-step returns),
`value_loss` (optionally clipped). Q-learning: `q_learning_target` (DQN and Double DQN) and
`td_loss` (Huber or squared error).

Every target separates termination from time-limit truncation: it bootstraps through the
value of the state a truncated step reached, never through a terminal one.
"""

import jax
import jax.numpy as jnp

TD_LOSSES = ("huber", "mse")


def log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
  """log pi(action) of a categorical policy: logits (..., A), action (...) -> (...)."""
  return jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], axis=-1)[..., 0]


def entropy(logits: jax.Array) -> jax.Array:
  """Entropy of a categorical policy: logits (..., A) -> (...)."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array, done: jax.Array,
        gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation as a reverse scan over time.

  1. delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
  2. A_t = delta_t + gamma lambda (1 - done_t) A_{t+1},  A_T = 0

  s'_t is the state step t reached before any auto-reset, so a truncated episode
  bootstraps through V(s'_t) while a terminated one does not; `done` (terminated or
  truncated) stops the sum from crossing into the next episode. At the end of the rollout
  the last delta already bootstraps through V(s'_{T-1}). With lambda = 1, A_t + V(s_t) is
  the n-step return of A3C/A2C: the discounted rewards up to the rollout's end (or the
  episode's), bootstrapped there.

  Args:
    rewards: (T, ...) rewards r_t.
    values: (T, ...) V(s_t).
    next_values: (T, ...) V(s'_t).
    terminated: (T, ...) 1 where s'_t is terminal, else 0.
    done: (T, ...) 1 where the episode ended at step t (terminated or truncated), else 0.
    gamma: discount factor.
    lam: GAE lambda; 1 gives the discounted return-to-go minus V (REINFORCE's advantage).

  Returns:
    (advantages, value targets), both (T, ...); targets = advantages + values.
  """
  terminated = terminated.astype(values.dtype)
  done = done.astype(values.dtype)
  deltas = rewards + gamma * (1.0 - terminated) * next_values - values  # (T, ...)

  def backward(next_advantage, step):
    delta, step_done = step
    advantage = delta + gamma * lam * (1.0 - step_done) * next_advantage
    return advantage, advantage

  _, advantages = jax.lax.scan(backward, jnp.zeros_like(values[0]), (deltas, done), reverse=True)
  return advantages, advantages + values


def clipped_surrogate_loss(new_log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                           clip_eps: float) -> jax.Array:
  """PPO's clipped surrogate objective, negated (a loss to minimise).

  L = -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)),  rho = pi_new(a|s) / pi_old(a|s).

  Args:
    new_log_prob: (B,) log pi_new(a|s).
    old_log_prob: (B,) log pi_old(a|s) recorded in the rollout.
    advantages: (B,) advantage estimates.
    clip_eps: the clipping range eps.

  Returns:
    The scalar loss.
  """
  ratio = jnp.exp(new_log_prob - old_log_prob)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
  return -jnp.mean(jnp.minimum(unclipped, clipped))


def value_loss(values: jax.Array, old_values: jax.Array, targets: jax.Array, clip_eps: float | None) -> jax.Array:
  """0.5 * mean squared error of V, with PPO's pessimistic clipping when clip_eps is given.

  Clipped: 0.5 * mean(max((V - G)^2, (V_old + clip(V - V_old, -eps, eps) - G)^2)).

  Args:
    values: (B,) V(s) under the current parameters.
    old_values: (B,) V(s) recorded in the rollout.
    targets: (B,) value targets G.
    clip_eps: clipping range, or None for the plain squared error.

  Returns:
    The scalar loss.
  """
  squared = jnp.square(values - targets)
  if clip_eps is not None:
    clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    squared = jnp.maximum(squared, jnp.square(clipped_values - targets))
  return 0.5 * jnp.mean(squared)


def q_learning_target(reward: jax.Array, terminated: jax.Array, next_q_target: jax.Array, gamma: float,
                      next_q_online: jax.Array | None = None) -> jax.Array:
  """The one-step TD target of DQN (Mnih et al. 2015) or Double DQN (van Hasselt et al. 2016).

  DQN:         y = r + gamma (1 - terminated) max_a Q_target(s', a)
  Double DQN:  y = r + gamma (1 - terminated) Q_target(s', argmax_a Q_online(s', a))

  Double DQN selects the action with the online network and evaluates it with the target
  network, which removes the upward bias of max over noisy estimates.

  Args:
    reward: (B,) r.
    terminated: (B,) 1 where s' is terminal (not where the episode was only truncated).
    next_q_target: (B, A) Q_target(s', .).
    gamma: discount factor.
    next_q_online: (B, A) Q_online(s', .) for Double DQN, or None for DQN.

  Returns:
    (B,) targets y, to be held constant (the caller stops their gradient).
  """
  if next_q_online is None:
    next_value = next_q_target.max(axis=-1)
  else:
    best = jnp.argmax(next_q_online, axis=-1)
    next_value = jnp.take_along_axis(next_q_target, best[:, None], axis=-1)[:, 0]
  return reward + gamma * (1.0 - terminated.astype(reward.dtype)) * next_value


def td_loss(q_taken: jax.Array, targets: jax.Array, kind: str = "huber") -> jax.Array:
  """Mean TD loss of Q(s, a) against fixed targets: Huber (delta 1, Mnih et al.'s error clipping) or 0.5 * MSE.

  Args:
    q_taken: (B,) Q(s, a) of the actions taken.
    targets: (B,) TD targets (gradients are stopped here).
    kind: "huber" or "mse".

  Returns:
    The scalar loss.
  """
  error = q_taken - jax.lax.stop_gradient(targets)
  if kind == "huber":
    abs_error = jnp.abs(error)
    return jnp.mean(jnp.where(abs_error <= 1.0, 0.5 * jnp.square(error), abs_error - 0.5))
  if kind == "mse":
    return 0.5 * jnp.mean(jnp.square(error))
  raise ValueError(f"unknown TD loss {kind!r}; choose one of: {', '.join(TD_LOSSES)}")
