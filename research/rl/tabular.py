"""Tabular reinforcement learning (Sutton & Barto, chapters 3-6) as pure, jit-compiled programs.

The file reads top-down in three parts:

1. Finite MDPs and dynamic programming: `MDP`, the Markov reward process of a policy,
   discounted returns, exact and iterative policy evaluation, value iteration and policy
   iteration. Loops that stop on a tolerance are `lax.while_loop`s.
2. Environments as pure functions (`Env`). An episode that must be stored (Monte Carlo)
   is a fixed-length `lax.scan` with a done mask: once it is over its state stays put and
   every later step is masked. TD methods store nothing and run an episode as a
   `lax.while_loop` that stops at a terminal state (or the step cap).
3. Sample-based prediction (Monte Carlo, TD(0)) and control (Monte Carlo with an ε-greedy
   policy, SARSA, Q-learning, expected SARSA). Each `make_*` closes over the environment
   and a static `TabularConfig` and returns a pure `fn(key, hparams=HParams())`; the
   episodes of a run are an outer scan. Step size, exploration rate and initial value are
   arrays in `HParams`, so one compiled program runs many seeds and hyperparameters:

     train = make_q_learning(env, TabularConfig(num_episodes=500, max_steps=1000))
     results = jax.jit(jax.vmap(train))(keys)  # over seeds, default HParams
     results = jax.jit(jax.vmap(train))(keys, HParams(alpha=alphas, epsilon=epsilons,
                                                      init_value=jnp.zeros_like(alphas)))

A policy is either deterministic actions `(S,)` (integers) or probabilities `(S, A)`;
every function taking a policy accepts both.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
from jax import lax

# --------------------------------------------------------------------------------------
# 1. Finite MDPs and dynamic programming.
# --------------------------------------------------------------------------------------


@flax.struct.dataclass
class MDP:
  """A finite MDP with expected rewards; a pytree, so DP can be vmapped over MDPs.

  Attributes:
    transitions: (S, A, S) with transitions[s, a, s'] = P(s' | s, a).
    rewards: (S, A) expected immediate reward r(s, a).
    discount: scalar γ in [0, 1].
    terminal: (S,) bool or None. Terminal states are absorbing and their value is 0 by
      definition, which is what makes undiscounted episodic tasks (γ = 1) solvable:
      without it I - P_π is singular there.
  """
  transitions: jax.Array
  rewards: jax.Array
  discount: jax.Array | float
  terminal: jax.Array | None = None

  @property
  def num_states(self) -> int:
    return self.transitions.shape[0]

  @property
  def num_actions(self) -> int:
    return self.transitions.shape[1]

  def terminal_mask(self) -> jax.Array:
    """(S,) bool: the terminal states (none when `terminal` is None)."""
    if self.terminal is None:
      return jnp.zeros((self.num_states,), bool)
    return jnp.asarray(self.terminal, bool)


def policy_probabilities(policy: jax.Array, num_actions: int) -> jax.Array:
  """Returns a policy as probabilities.

  Args:
    policy: deterministic actions (S,) of an integer dtype, or probabilities (S, A).
    num_actions: A.

  Returns:
    (S, A) action probabilities.
  """
  policy = jnp.asarray(policy)
  if jnp.issubdtype(policy.dtype, jnp.integer):
    return jax.nn.one_hot(policy, num_actions)
  return policy


def uniform_policy(num_states: int, num_actions: int) -> jax.Array:
  """The equiprobable random policy, (S, A)."""
  return jnp.full((num_states, num_actions), 1.0 / num_actions)


def markov_reward_process(mdp: MDP, policy: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Markov reward process an MDP becomes under a fixed policy.

  Args:
    mdp: the MDP.
    policy: actions (S,) or probabilities (S, A).

  Returns:
    (P_π, R_π): P_π[s, s'] = Σ_a π(a|s) P(s'|s, a), shape (S, S), and
    R_π[s] = Σ_a π(a|s) r(s, a), shape (S,).
  """
  pi = policy_probabilities(policy, mdp.num_actions)  # (S, A)
  p_pi = jnp.einsum("sa,sat->st", pi, mdp.transitions)  # (S, S)
  r_pi = jnp.sum(pi * mdp.rewards, axis=-1)  # (S,)
  return p_pi, r_pi


def _bootstrapped(mdp: MDP) -> tuple[jax.Array, jax.Array]:
  """(P̃, r̃): transitions into terminal states carry no future value, terminal states no reward.

  With these the Bellman equation V = r̃_π + γ P̃_π V pins terminal values to 0 even at
  γ = 1, and I - γ P̃_π is invertible whenever the policy ends episodes with probability 1.
  """
  live = 1.0 - mdp.terminal_mask().astype(mdp.transitions.dtype)  # (S,)
  transitions = mdp.transitions * live[None, None, :]  # (S, A, S)
  rewards = mdp.rewards * live[:, None]  # (S, A)
  return transitions, rewards


def action_values(mdp: MDP, values: jax.Array) -> jax.Array:
  """One Bellman backup: Q(s, a) = r(s, a) + γ Σ_s' P(s'|s, a) V(s'), shape (S, A)."""
  transitions, rewards = _bootstrapped(mdp)
  return rewards + mdp.discount * jnp.einsum("sat,t->sa", transitions, values)


def greedy_policy(q: jax.Array) -> jax.Array:
  """Deterministic greedy actions (S,) for action values (S, A); ties go to the lowest action."""
  return jnp.argmax(q, axis=-1).astype(jnp.int32)


@jax.jit
def discounted_returns(rewards: jax.Array, discount: jax.Array | float,
                       dones: jax.Array | None = None) -> jax.Array:
  """Returns G_t = r_t + γ G_{t+1} for every t of a reward sequence, by a reverse scan.

  Args:
    rewards: (T,) rewards r_0 .. r_{T-1}.
    discount: γ.
    dones: optional (T,) bool; dones[t] means the episode ended with r_t, so G_t does not
      look past t (several episodes may share one sequence).

  Returns:
    (T,) returns; G_0 is the discounted return of the whole sequence.
  """
  if dones is None:
    dones = jnp.zeros(rewards.shape, bool)

  def backward(next_return, step):
    reward, done = step
    g = reward + discount * jnp.where(done, 0.0, next_return)
    return g, g

  _, returns = lax.scan(backward, jnp.zeros((), rewards.dtype), (rewards, dones), reverse=True)
  return returns


@jax.jit
def policy_evaluation(mdp: MDP, policy: jax.Array) -> jax.Array:
  """Exact v_π by solving the linear system (I - γ P_π) v = r_π.

  Args:
    mdp: the MDP. At γ = 1 the policy must end every episode with probability 1.
    policy: actions (S,) or probabilities (S, A).

  Returns:
    (S,) state values; 0 at terminal states.
  """
  transitions, rewards = _bootstrapped(mdp)
  p_pi, r_pi = markov_reward_process(MDP(transitions, rewards, mdp.discount), policy)
  eye = jnp.eye(mdp.num_states, dtype=p_pi.dtype)
  return jnp.linalg.solve(eye - mdp.discount * p_pi, r_pi)


class _SweepCarry(NamedTuple):
  values: jax.Array  # (S,)
  delta: jax.Array  # () max |change| of the last sweep
  iteration: jax.Array  # () sweeps done


def _sweep_until(backup: Callable[[jax.Array], jax.Array], num_states: int, tol: float,
                 max_iter: int) -> jax.Array:
  """Applies `backup` to V (starting at 0) until a sweep changes it by at most `tol`."""

  def cond(carry: _SweepCarry):
    return (carry.delta > tol) & (carry.iteration < max_iter)

  def body(carry: _SweepCarry):
    values = backup(carry.values)
    return _SweepCarry(values, jnp.max(jnp.abs(values - carry.values)), carry.iteration + 1)

  init = _SweepCarry(jnp.zeros((num_states,)), jnp.asarray(jnp.inf), jnp.asarray(0))
  return lax.while_loop(cond, body, init).values


@jax.jit
def iterative_policy_evaluation(mdp: MDP, policy: jax.Array, tol: float = 1e-6,
                                max_iter: int = 10_000) -> jax.Array:
  """v_π by repeated expected updates v ← r_π + γ P_π v (a while_loop to `tol`).

  Args:
    mdp: the MDP.
    policy: actions (S,) or probabilities (S, A).
    tol: stop once a sweep changes no value by more than this.
    max_iter: stop after this many sweeps regardless.

  Returns:
    (S,) state values.
  """
  transitions, rewards = _bootstrapped(mdp)
  p_pi, r_pi = markov_reward_process(MDP(transitions, rewards, mdp.discount), policy)
  return _sweep_until(lambda v: r_pi + mdp.discount * p_pi @ v, mdp.num_states, tol, max_iter)


@jax.jit
def value_iteration(mdp: MDP, tol: float = 1e-6, max_iter: int = 10_000) -> tuple[jax.Array, jax.Array]:
  """Optimal values by v ← max_a [r + γ P v] until a sweep changes v by at most `tol`.

  Args:
    mdp: the MDP.
    tol: stopping tolerance on the max change of a sweep.
    max_iter: stop after this many sweeps regardless.

  Returns:
    (values (S,), greedy deterministic policy (S,) int32).
  """
  values = _sweep_until(lambda v: jnp.max(action_values(mdp, v), axis=-1), mdp.num_states, tol, max_iter)
  return values, greedy_policy(action_values(mdp, values))


class _PolicyIterationCarry(NamedTuple):
  policy: jax.Array  # (S,) int32
  values: jax.Array  # (S,) v of `policy`
  stable: jax.Array  # () bool: the last improvement changed nothing
  iteration: jax.Array  # ()


@jax.jit
def policy_iteration(mdp: MDP, init_policy: jax.Array | None = None, tol: float = 1e-6,
                     max_iter: int = 1_000) -> tuple[jax.Array, jax.Array]:
  """Alternates exact evaluation and greedy improvement until the policy is stable.

  An action is only replaced by one whose value is larger by more than `tol`; otherwise
  float ties between equally good actions could make the policy flip forever.

  Args:
    mdp: the MDP. At γ = 1 every policy met must be proper; use γ < 1 otherwise.
    init_policy: starting actions (S,); all zeros when None.
    tol: the improvement margin above.
    max_iter: stop after this many improvements regardless.

  Returns:
    (values (S,), deterministic policy (S,) int32).
  """
  if init_policy is None:
    init_policy = jnp.zeros((mdp.num_states,), jnp.int32)
  states = jnp.arange(mdp.num_states)

  def cond(carry: _PolicyIterationCarry):
    return ~carry.stable & (carry.iteration < max_iter)

  def body(carry: _PolicyIterationCarry):
    q = action_values(mdp, carry.values)  # (S, A)
    best = greedy_policy(q)
    keep = q[states, carry.policy] >= q[states, best] - tol
    policy = jnp.where(keep, carry.policy, best)
    return _PolicyIterationCarry(policy, policy_evaluation(mdp, policy), jnp.all(policy == carry.policy),
                                 carry.iteration + 1)

  init_policy = jnp.asarray(init_policy, jnp.int32)
  init = _PolicyIterationCarry(init_policy, policy_evaluation(mdp, init_policy), jnp.asarray(False),
                               jnp.asarray(0))
  out = lax.while_loop(cond, body, init)
  return out.values, out.policy


# --------------------------------------------------------------------------------------
# 2. Environments and episodes.
# --------------------------------------------------------------------------------------


class Env(NamedTuple):
  """A tabular environment as pure functions, plus its exact MDP for DP and for checks.

  Attributes:
    reset: reset(key) -> initial state, an int32 scalar.
    step: step(key, state, action) -> (next_state int32, reward float32, done bool). A
      terminal state is absorbing: stepping from it returns it, reward 0 and done.
    num_states: S.
    num_actions: A.
    mdp: the exact dynamics, expected rewards, discount and terminal states.
  """
  reset: Callable[[jax.Array], jax.Array]
  step: Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
  num_states: int
  num_actions: int
  mdp: MDP


class Trajectory(NamedTuple):
  """One episode padded to a fixed length T; steps after the end are masked out."""
  states: jax.Array  # (T,) int32 S_t
  actions: jax.Array  # (T,) int32 A_t
  rewards: jax.Array  # (T,) R_{t+1}, 0 where not valid
  next_states: jax.Array  # (T,) int32 S_{t+1}
  valid: jax.Array  # (T,) bool: step t happened (the episode had not ended before it)
  terminated: jax.Array  # () bool: the episode reached a terminal state within T steps


def epsilon_greedy(q_row: jax.Array, epsilon: jax.Array | float) -> jax.Array:
  """ε-greedy action probabilities (A,) for the action values of one state.

  The greedy share 1 - ε is split evenly over tied maxima, so an all-zero initial table
  explores instead of always picking action 0; expected SARSA uses these same probabilities.
  """
  num_actions = q_row.shape[-1]
  best = (q_row == jnp.max(q_row)).astype(q_row.dtype)  # (A,)
  return epsilon / num_actions + (1.0 - epsilon) * best / jnp.sum(best)


def _sample(key: jax.Array, probs: jax.Array) -> jax.Array:
  """Draws an action from probabilities (A,) by inverting their CDF at one uniform number.

  One uniform number per draw, where `jax.random.categorical` would take A Gumbels and A
  logarithms: the same distribution from less work inside every step. Scaling u by the
  total keeps the index below A when the probabilities sum to slightly less than 1, and an
  action of probability 0 is never drawn.
  """
  cdf = jnp.cumsum(probs)  # (A,)
  u = jax.random.uniform(key) * cdf[-1]
  return jnp.sum(cdf <= u).astype(jnp.int32)


class _RolloutCarry(NamedTuple):
  state: jax.Array  # () int32
  done: jax.Array  # () bool


def rollout(env: Env, policy: jax.Array, key: jax.Array, max_steps: int) -> Trajectory:
  """Runs one episode of at most `max_steps` steps under a fixed policy (a scan).

  Args:
    env: the environment.
    policy: actions (S,) or probabilities (S, A).
    key: PRNG key of the episode.
    max_steps: T, the scan length.

  Returns:
    The padded `Trajectory`.
  """
  probs = policy_probabilities(policy, env.num_actions)  # (S, A)
  k_reset, k_steps = jax.random.split(key)

  def step(carry: _RolloutCarry, t):
    k_action, k_env = jax.random.split(jax.random.fold_in(k_steps, t))
    action = _sample(k_action, probs[carry.state])
    next_state, reward, done = env.step(k_env, carry.state, action)
    valid = ~carry.done
    out = (carry.state, action, jnp.where(valid, reward, 0.0), next_state, valid)
    return _RolloutCarry(jnp.where(valid, next_state, carry.state), carry.done | done), out

  init = _RolloutCarry(env.reset(k_reset), jnp.asarray(False))
  last, (states, actions, rewards, next_states, valid) = lax.scan(step, init, jnp.arange(max_steps))
  return Trajectory(states, actions, rewards, next_states, valid, last.done)


# --------------------------------------------------------------------------------------
# 3. Sample-based prediction and control.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TabularConfig:
  """Static settings of a sample-based run (closed over; changing them recompiles).

  Attributes:
    num_episodes: episodes per run, the outer scan length.
    max_steps: the episode cap: the length of Monte Carlo's episode scan, the bound of a
      TD episode's while_loop. An episode still running after it is cut off (TD keeps
      the updates it made; Monte Carlo, having no return, skips the episode).
    first_visit: Monte Carlo only: update only the first visit of each state (prediction)
      or state-action pair (control) in an episode, instead of every visit.
    constant_alpha: Monte Carlo only: step size `HParams.alpha` instead of 1/N(s)
      (sample averages).
  """
  num_episodes: int
  max_steps: int
  first_visit: bool = False
  constant_alpha: bool = False


class HParams(NamedTuple):
  """Hyperparameters passed as arrays, so runs can be vmapped over them."""
  alpha: jax.Array | float = 0.1  # step size (TD methods; constant-α Monte Carlo)
  epsilon: jax.Array | float = 0.1  # exploration rate of the ε-greedy policy (control)
  init_value: jax.Array | float = 0.0  # initial V(s) or Q(s, a) of non-terminal states


class PredictionResult(NamedTuple):
  values: jax.Array  # (S,) V after the last episode
  history: jax.Array  # (num_episodes + 1, S) V before the first episode and after each


class ControlResult(NamedTuple):
  q: jax.Array  # (S, A) action values after the last episode
  episode_returns: jax.Array  # (num_episodes,) undiscounted sum of rewards of each episode
  episode_lengths: jax.Array  # (num_episodes,) steps taken
  terminated: jax.Array  # (num_episodes,) bool: reached a terminal state within max_steps


def _initial_table(env: Env, init_value, shape: tuple[int, ...]) -> jax.Array:
  # Terminal values stay 0: a TD target never looks at them, and RMS errors should not either.
  terminal = env.mdp.terminal_mask().reshape((-1,) + (1,) * (len(shape) - 1))
  return jnp.where(terminal, 0.0, jnp.broadcast_to(jnp.asarray(init_value, jnp.float32), shape))


def _first_visits(index: jax.Array, valid: jax.Array, size: int) -> jax.Array:
  """(T,) bool: step t is valid and the first valid step with its index (state or pair)."""
  steps = jnp.arange(index.shape[0])
  first = jnp.full((size,), index.shape[0]).at[index].min(jnp.where(valid, steps, index.shape[0]))
  return valid & (first[index] == steps)


class _MCCarry(NamedTuple):
  table: jax.Array  # (size,) V, or Q flattened over (S * A)
  counts: jax.Array  # (size,) visits counted so far, for sample averages


def _mc_update(carry: _MCCarry, index: jax.Array, returns: jax.Array, mask: jax.Array, alpha,
               constant_alpha: bool) -> _MCCarry:
  """Applies V(x_t) += step * (G_t - V(x_t)) in episode order over the masked steps (a scan).

  In order, because with every-visit updates and a constant step a state seen twice is
  updated twice, the second time from the already moved value.
  """

  def update(carry: _MCCarry, step):
    x, g, m = step
    counts = carry.counts.at[x].add(m.astype(carry.counts.dtype))
    size = alpha if constant_alpha else 1.0 / jnp.maximum(counts[x], 1.0)
    table = carry.table.at[x].add(jnp.where(m, size * (g - carry.table[x]), 0.0))
    return _MCCarry(table, counts), None

  carry, _ = lax.scan(update, carry, (index, returns, mask))
  return carry


def make_mc_prediction(env: Env, policy: jax.Array, config: TabularConfig) -> Callable:
  """Monte Carlo prediction of v_π (first- or every-visit; sample averages or constant α).

  Only episodes that terminate within `max_steps` are used: a cut-off one has no return.

  Args:
    env: the environment.
    policy: the evaluated policy, actions (S,) or probabilities (S, A).
    config: static settings; `first_visit` and `constant_alpha` pick the variant.

  Returns:
    predict(key, hparams: HParams = HParams()) -> PredictionResult; uses `alpha` (with
    constant_alpha) and `init_value`.
  """
  num_states = env.num_states
  discount = env.mdp.discount

  def predict(key: jax.Array, hparams: HParams = HParams()) -> PredictionResult:
    init = _MCCarry(_initial_table(env, hparams.init_value, (num_states,)), jnp.zeros((num_states,)))

    def episode(carry: _MCCarry, e):
      traj = rollout(env, policy, jax.random.fold_in(key, e), config.max_steps)
      returns = discounted_returns(traj.rewards, discount)  # (T,); rewards are 0 past the end
      mask = _first_visits(traj.states, traj.valid, num_states) if config.first_visit else traj.valid
      carry = _mc_update(carry, traj.states, returns, mask & traj.terminated, hparams.alpha, config.constant_alpha)
      return carry, carry.table

    last, history = lax.scan(episode, init, jnp.arange(config.num_episodes))
    return PredictionResult(last.table, jnp.concatenate([init.table[None], history]))

  return predict


class _StepCarry(NamedTuple):
  """The carry of one episode of a TD method."""
  table: jax.Array  # (S,) V or (S, A) Q
  state: jax.Array  # () int32 S_t
  action: jax.Array  # () int32 A_t, chosen one step ahead (SARSA only; 0 otherwise)
  t: jax.Array  # () int32 steps taken so far
  done: jax.Array  # () bool: a terminal state was reached
  episode_return: jax.Array  # () undiscounted sum of rewards so far


def _run_episode(step: Callable[[_StepCarry], _StepCarry], init: _StepCarry, max_steps: int) -> _StepCarry:
  """Applies `step` until a terminal state or `max_steps` steps (a while_loop).

  TD methods need no stored trajectory, so an episode is a while_loop rather than a
  fixed-length scan: under vmap it stops with the longest episode of the batch instead of
  always running `max_steps` (on the cliff, a few dozen steps once learning is under way
  instead of a cap of thousands).
  Members that have finished keep their carry (the batching rule of while_loop selects).
  """
  return lax.while_loop(lambda c: ~c.done & (c.t < max_steps), step, init)


def _start(table: jax.Array, state: jax.Array, action: jax.Array) -> _StepCarry:
  return _StepCarry(table, state, action, jnp.zeros((), jnp.int32), jnp.asarray(False), jnp.zeros(()))


def make_td_prediction(env: Env, policy: jax.Array, config: TabularConfig) -> Callable:
  """TD(0) prediction of v_π: V(S) += α [R + γ V(S') - V(S)] after every step.

  Args:
    env: the environment.
    policy: the evaluated policy, actions (S,) or probabilities (S, A).
    config: static settings (num_episodes, max_steps).

  Returns:
    predict(key, hparams: HParams = HParams()) -> PredictionResult; uses `alpha` and
    `init_value`.
  """
  probs = policy_probabilities(policy, env.num_actions)  # (S, A)
  discount = env.mdp.discount

  def predict(key: jax.Array, hparams: HParams = HParams()) -> PredictionResult:

    def step(carry: _StepCarry, k_steps: jax.Array) -> _StepCarry:
      k_action, k_env = jax.random.split(jax.random.fold_in(k_steps, carry.t))
      values = carry.table
      action = _sample(k_action, probs[carry.state])
      next_state, reward, done = env.step(k_env, carry.state, action)
      target = reward + discount * jnp.where(done, 0.0, values[next_state])
      values = values.at[carry.state].add(hparams.alpha * (target - values[carry.state]))
      return _StepCarry(values, next_state, carry.action, carry.t + 1, done, carry.episode_return + reward)

    def episode(values: jax.Array, e: jax.Array):
      k_reset, k_steps = jax.random.split(jax.random.fold_in(key, e))
      init = _start(values, env.reset(k_reset), jnp.zeros((), jnp.int32))
      last = _run_episode(functools.partial(step, k_steps=k_steps), init, config.max_steps)
      return last.table, last.table

    init = _initial_table(env, hparams.init_value, (env.num_states,))
    last, history = lax.scan(episode, init, jnp.arange(config.num_episodes))
    return PredictionResult(last, jnp.concatenate([init[None], history]))

  return predict


def make_mc_control(env: Env, config: TabularConfig) -> Callable:
  """On-policy Monte Carlo control with an ε-greedy policy (Sutton & Barto §5.4).

  Each episode follows the ε-greedy policy of the current Q, then moves Q(S_t, A_t) toward
  the return G_t (first- or every-visit, sample averages or constant α). Episodes cut off
  at `max_steps` do not update Q.

  Args:
    env: the environment.
    config: static settings.

  Returns:
    train(key, hparams: HParams = HParams()) -> ControlResult; uses `epsilon`, `alpha`
    (with constant_alpha) and `init_value`.
  """
  num_states, num_actions = env.num_states, env.num_actions
  discount = env.mdp.discount

  def train(key: jax.Array, hparams: HParams = HParams()) -> ControlResult:
    init_q = _initial_table(env, hparams.init_value, (num_states, num_actions))
    init = _MCCarry(init_q.reshape(-1), jnp.zeros((num_states * num_actions,)))

    def episode(carry: _MCCarry, e):
      q = carry.table.reshape(num_states, num_actions)
      policy = jax.vmap(epsilon_greedy, in_axes=(0, None))(q, hparams.epsilon)  # (S, A)
      traj = rollout(env, policy, jax.random.fold_in(key, e), config.max_steps)
      returns = discounted_returns(traj.rewards, discount)  # (T,)
      pairs = traj.states * num_actions + traj.actions  # (T,) flat (s, a) index
      mask = _first_visits(pairs, traj.valid, num_states * num_actions) if config.first_visit else traj.valid
      carry = _mc_update(carry, pairs, returns, mask & traj.terminated, hparams.alpha, config.constant_alpha)
      stats = (jnp.sum(traj.rewards), jnp.sum(traj.valid).astype(jnp.int32), traj.terminated)
      return carry, stats

    last, (returns, lengths, terminated) = lax.scan(episode, init, jnp.arange(config.num_episodes))
    return ControlResult(last.table.reshape(num_states, num_actions), returns, lengths, terminated)

  return train


TD_CONTROL = ("sarsa", "q_learning", "expected_sarsa")


def make_td_control(env: Env, config: TabularConfig, algorithm: str) -> Callable:
  """SARSA, Q-learning or expected SARSA with an ε-greedy behaviour policy.

  All three update Q(S, A) += α [R + γ (1 - done) X - Q(S, A)] after every step, with
    sarsa:          X = Q(S', A'), A' the next action actually taken, chosen from the
                    ε-greedy policy of Q before the update (Sutton & Barto §6.4);
    q_learning:     X = max_a Q(S', a) (§6.5);
    expected_sarsa: X = Σ_a π(a|S') Q(S', a) under the ε-greedy π (§6.6).
  Q-learning and expected SARSA choose A from S with the Q updated by the previous step.

  Keys: episode e uses fold_in(key, e), split into (reset, first action, steps); step t
  uses fold_in(steps key, t), split into (action, environment).

  Args:
    env: the environment.
    config: static settings (num_episodes, max_steps).
    algorithm: one of TD_CONTROL.

  Returns:
    train(key, hparams: HParams = HParams()) -> ControlResult; uses `alpha`, `epsilon` and
    `init_value`.

  Raises:
    ValueError: for an unknown algorithm.
  """
  if algorithm not in TD_CONTROL:
    raise ValueError(f"unknown algorithm {algorithm!r}; choose one of: {', '.join(TD_CONTROL)}")
  discount = env.mdp.discount
  sarsa = algorithm == "sarsa"

  def train(key: jax.Array, hparams: HParams = HParams()) -> ControlResult:

    def behaviour(q_row: jax.Array) -> jax.Array:
      return epsilon_greedy(q_row, hparams.epsilon)  # (A,)

    def step(carry: _StepCarry, k_steps: jax.Array) -> _StepCarry:
      k_action, k_env = jax.random.split(jax.random.fold_in(k_steps, carry.t))
      q = carry.table
      # SARSA took A one step ahead; the others choose it now, from the latest Q.
      action = carry.action if sarsa else _sample(k_action, behaviour(q[carry.state]))
      next_state, reward, done = env.step(k_env, carry.state, action)
      if sarsa:
        next_action = _sample(k_action, behaviour(q[next_state]))
        bootstrap = q[next_state, next_action]
      elif algorithm == "q_learning":
        next_action = carry.action
        bootstrap = jnp.max(q[next_state])
      else:
        next_action = carry.action
        bootstrap = jnp.dot(behaviour(q[next_state]), q[next_state])
      target = reward + discount * jnp.where(done, 0.0, bootstrap)
      q = q.at[carry.state, action].add(hparams.alpha * (target - q[carry.state, action]))
      return _StepCarry(q, next_state, next_action, carry.t + 1, done, carry.episode_return + reward)

    def episode(q: jax.Array, e: jax.Array):
      k_reset, k_first, k_steps = jax.random.split(jax.random.fold_in(key, e), 3)
      state = env.reset(k_reset)
      action = _sample(k_first, behaviour(q[state])) if sarsa else jnp.zeros((), jnp.int32)
      last = _run_episode(functools.partial(step, k_steps=k_steps), _start(q, state, action), config.max_steps)
      return last.table, (last.episode_return, last.t, last.done)

    init = _initial_table(env, hparams.init_value, (env.num_states, env.num_actions))
    q, (returns, lengths, terminated) = lax.scan(episode, init, jnp.arange(config.num_episodes))
    return ControlResult(q, returns, lengths, terminated)

  return train


def make_sarsa(env: Env, config: TabularConfig) -> Callable:
  """On-policy TD control (Sutton & Barto §6.4); see `make_td_control`."""
  return make_td_control(env, config, "sarsa")


def make_q_learning(env: Env, config: TabularConfig) -> Callable:
  """Off-policy TD control (Sutton & Barto §6.5); see `make_td_control`."""
  return make_td_control(env, config, "q_learning")


def make_expected_sarsa(env: Env, config: TabularConfig) -> Callable:
  """Expected SARSA (Sutton & Barto §6.6); see `make_td_control`."""
  return make_td_control(env, config, "expected_sarsa")
