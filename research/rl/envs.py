"""Tabular environments as pure JAX functions, each with its exact MDP.

Every constructor returns an `Env` (research.rl.tabular): `reset`/`step` written as grid
arithmetic in jax.numpy (jit- and vmap-friendly), and an `MDP` built separately from the
same rules with plain loops, so tests can check sampled dynamics against the matrices
and the matrices against gymnasium's toy-text tables. Terminal states are absorbing with
reward 0.

  random_walk     Sutton & Barto Example 6.2: 5 states A..E between two terminals.
  cliff_walking   Sutton & Barto Example 6.6 / gymnasium CliffWalking-v1: 4x12 grid.
  frozen_lake_*   gymnasium FrozenLake-v1 (4x4) and FrozenLake8x8-v1 maps, slippery or not.

`make(name)` looks a constructor up in `ENVS`.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.rl.tabular import MDP, Env


def _mdp(transitions: np.ndarray, rewards: np.ndarray, discount: float, terminal: np.ndarray) -> MDP:
  return MDP(jnp.asarray(transitions, jnp.float32), jnp.asarray(rewards, jnp.float32),
             jnp.asarray(discount, jnp.float32), jnp.asarray(terminal, bool))


def _constant_reset(state: int) -> Callable[[jax.Array], jax.Array]:
  return lambda key: jnp.asarray(state, jnp.int32)


# --------------------------------------------------------------------------------------
# Random walk (Example 6.2).
# --------------------------------------------------------------------------------------

LEFT_RIGHT = ("left", "right")


def random_walk(num_states: int = 5, discount: float = 1.0) -> Env:
  """The random walk of Sutton & Barto Example 6.2.

  States 0 and num_states + 1 are terminal; 1..num_states are A, B, ... (the walk starts
  in the middle one). Action 0 moves left, 1 right; entering the right terminal pays +1,
  everything else 0. Under the uniform random policy with γ = 1 the true values are
  k / (num_states + 1) for state k (1/6 .. 5/6 for five states).

  Args:
    num_states: number of non-terminal states (odd, so there is a middle one).
    discount: γ.

  Returns:
    The Env, with num_states + 2 states and 2 actions.
  """
  if num_states < 1 or num_states % 2 == 0:
    raise ValueError(f"num_states must be odd and positive, got {num_states}")
  size = num_states + 2
  right_end = size - 1
  terminal = np.zeros(size, bool)
  terminal[[0, right_end]] = True

  transitions = np.zeros((size, 2, size))
  rewards = np.zeros((size, 2))
  for s in range(size):
    for a, move in enumerate((-1, +1)):
      if terminal[s]:
        transitions[s, a, s] = 1.0
        continue
      transitions[s, a, s + move] = 1.0
      rewards[s, a] = float(s + move == right_end)

  terminal_j = jnp.asarray(terminal)

  def step(key, state, action):
    del key  # deterministic given the action
    moved = state + 2 * action - 1
    next_state = jnp.where(terminal_j[state], state, moved).astype(jnp.int32)
    reward = jnp.where(terminal_j[state], 0.0, (moved == right_end).astype(jnp.float32))
    return next_state, reward, terminal_j[next_state]

  return Env(_constant_reset((size - 1) // 2), step, size, 2, _mdp(transitions, rewards, discount, terminal))


# --------------------------------------------------------------------------------------
# Cliff walking (Example 6.6), laid out and numbered as gymnasium's CliffWalking-v1.
# --------------------------------------------------------------------------------------

CLIFF_SHAPE = (4, 12)
CLIFF_START = 36  # row 3, column 0
CLIFF_GOAL = 47  # row 3, column 11
CLIFF_ACTIONS = ("up", "right", "down", "left")
_CLIFF_MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])  # (A, 2) row/column deltas


def _grid_move(row: int, col: int, move, shape: tuple[int, int]) -> tuple[int, int]:
  """The cell reached by `move` (d_row, d_col) from (row, col); walls keep the agent in the grid."""
  return min(max(row + move[0], 0), shape[0] - 1), min(max(col + move[1], 0), shape[1] - 1)


def _grid_tables(shape: tuple[int, int], terminal: np.ndarray, outcomes) -> tuple[np.ndarray, np.ndarray]:
  """The exact (S, A, S) transition and (S, A) expected-reward tables of a 4-action grid world.

  Args:
    shape: (rows, columns); state = row * columns + column.
    terminal: (S,) bool; a terminal state stays put with reward 0.
    outcomes: `outcomes(row, col, action) -> [(next_state, probability, reward), ...]` from a
      non-terminal cell.
  """
  rows, cols = shape
  size = rows * cols
  transitions = np.zeros((size, 4, size))
  rewards = np.zeros((size, 4))
  for s in range(size):
    row, col = divmod(s, cols)
    for a in range(4):
      if terminal[s]:
        transitions[s, a, s] = 1.0
        continue
      for new_state, probability, reward in outcomes(row, col, a):
        transitions[s, a, new_state] += probability
        rewards[s, a] += probability * reward
  return transitions, rewards


def _on_cliff(row, col):
  return (row == CLIFF_SHAPE[0] - 1) & (col >= 1) & (col <= CLIFF_SHAPE[1] - 2)


def cliff_walking(discount: float = 1.0) -> Env:
  """The cliff of Sutton & Barto Example 6.6 on a 4x12 grid.

  State = row * 12 + column; start 36, goal 47 (terminal). Actions up, right, down, left;
  moves off the grid leave the agent in place. Every step pays -1, except stepping onto
  the cliff (row 3, columns 1..10), which pays -100 and sends the agent back to the start.
  The cliff cells keep their state numbers (as in gymnasium) but are never occupied.

  Args:
    discount: γ (the book's task is undiscounted).

  Returns:
    The Env, with 48 states and 4 actions.
  """
  rows, cols = CLIFF_SHAPE
  size = rows * cols
  terminal = np.zeros(size, bool)
  terminal[CLIFF_GOAL] = True

  def outcomes(row, col, a):
    new_row, new_col = _grid_move(row, col, _CLIFF_MOVES[a], (rows, cols))
    if _on_cliff(new_row, new_col):
      return [(CLIFF_START, 1.0, -100.0)]
    return [(new_row * cols + new_col, 1.0, -1.0)]

  transitions, rewards = _grid_tables((rows, cols), terminal, outcomes)

  moves = jnp.asarray(_CLIFF_MOVES)

  def step(key, state, action):
    del key  # deterministic
    row = jnp.clip(state // cols + moves[action, 0], 0, rows - 1)
    col = jnp.clip(state % cols + moves[action, 1], 0, cols - 1)
    fell = _on_cliff(row, col)
    at_goal = state == CLIFF_GOAL
    next_state = jnp.where(at_goal, state, jnp.where(fell, CLIFF_START, row * cols + col)).astype(jnp.int32)
    reward = jnp.where(at_goal, 0.0, jnp.where(fell, -100.0, -1.0))
    return next_state, reward, next_state == CLIFF_GOAL

  return Env(_constant_reset(CLIFF_START), step, size, 4, _mdp(transitions, rewards, discount, terminal))


# --------------------------------------------------------------------------------------
# FrozenLake, maps and numbering exactly as gymnasium's toy-text FrozenLake-v1.
# --------------------------------------------------------------------------------------

FROZEN_LAKE_MAPS = {
    "4x4": ("SFFF", "FHFH", "FFFH", "HFFG"),
    "8x8": ("SFFFFFFF", "FFFFFFFF", "FFFHFFFF", "FFFFFHFF", "FFFHFFFF", "FHHFFFHF", "FHFFHFHF", "FFFHFFFG"),
}
FROZEN_LAKE_ACTIONS = ("left", "down", "right", "up")
_LAKE_MOVES = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]])  # (A, 2) row/column deltas


def frozen_lake(map_name: str = "4x4", is_slippery: bool = True, discount: float = 0.99) -> Env:
  """FrozenLake: walk from S to G over frozen tiles F without falling into a hole H.

  State = row * ncol + column. Actions left, down, right, up. On slippery ice the agent
  moves in the intended direction or either perpendicular one, each with probability 1/3
  (gymnasium's default success_rate). Entering G pays +1; G and H are terminal.

  Args:
    map_name: "4x4" or "8x8".
    is_slippery: whether moves slip as above.
    discount: γ for DP (gymnasium leaves it to the agent).

  Returns:
    The Env, with 16 or 64 states and 4 actions.
  """
  if map_name not in FROZEN_LAKE_MAPS:
    raise ValueError(f"unknown map_name {map_name!r}; choose one of: {', '.join(FROZEN_LAKE_MAPS)}")
  desc = np.array([list(row) for row in FROZEN_LAKE_MAPS[map_name]])
  rows, cols = desc.shape
  size = rows * cols
  terminal = np.isin(desc, ["G", "H"]).reshape(-1)
  goal = (desc == "G").reshape(-1)
  start = int(np.flatnonzero(desc.reshape(-1) == "S")[0])
  slips = (-1, 0, 1) if is_slippery else (0,)

  def outcomes(row, col, a):
    out = []
    for slip in slips:
      new_row, new_col = _grid_move(row, col, _LAKE_MOVES[(a + slip) % 4], (rows, cols))
      new_state = new_row * cols + new_col
      out.append((new_state, 1.0 / len(slips), float(goal[new_state])))
    return out

  transitions, rewards = _grid_tables((rows, cols), terminal, outcomes)

  moves = jnp.asarray(_LAKE_MOVES)
  terminal_j, goal_j = jnp.asarray(terminal), jnp.asarray(goal)

  def step(key, state, action):
    slip = jax.random.randint(key, (), -1, 2) if is_slippery else 0
    direction = (action + slip) % 4
    row = jnp.clip(state // cols + moves[direction, 0], 0, rows - 1)
    col = jnp.clip(state % cols + moves[direction, 1], 0, cols - 1)
    stuck = terminal_j[state]
    next_state = jnp.where(stuck, state, row * cols + col).astype(jnp.int32)
    reward = jnp.where(stuck, 0.0, goal_j[next_state].astype(jnp.float32))
    return next_state, reward, terminal_j[next_state]

  return Env(_constant_reset(start), step, size, 4, _mdp(transitions, rewards, discount, terminal))


ENVS: dict[str, Callable[..., Env]] = {
    "random_walk": random_walk,
    "cliff_walking": cliff_walking,
    "frozen_lake_4x4": functools.partial(frozen_lake, "4x4", True),
    "frozen_lake_4x4_not_slippery": functools.partial(frozen_lake, "4x4", False),
    "frozen_lake_8x8": functools.partial(frozen_lake, "8x8", True),
    "frozen_lake_8x8_not_slippery": functools.partial(frozen_lake, "8x8", False),
}


def make(name: str, **kwargs) -> Env:
  """Builds a registered environment.

  Args:
    name: a key of ENVS.
    **kwargs: passed to its constructor (e.g. discount).

  Returns:
    The Env.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in ENVS:
    raise ValueError(f"unknown environment {name!r}; choose one of: {', '.join(ENVS)}")
  return ENVS[name](**kwargs)
