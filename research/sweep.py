"""Many runs in one compiled program: `jax.vmap` over seeds and hyperparameters.

    result = research.sweep.run(task, config, data, seeds=range(10),
                                hparams={"learning_rate": [1e-4, 3e-4, ...]})

Each member is the run `research.train.train` would make with that seed (same key
streams, same data order, same train step), driven by `lax.scan` instead of a Python
loop, without checkpoints. Hyperparameters are the optimizer's injected ones
(research/optim.py): they live in the optimizer state, so sweeping them needs no
recompilation. With several devices the member axis is split over them.

A sweep continues from an earlier result's state (`run(..., state=result.state)`), so
members can be evaluated part-way through training: two chained runs of n and m steps
end where one run of n + m steps does.
"""

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from research import optim
from research.data import Batcher
from research.train import parallel
from research.train.step import Keys, TrainState, init_state, make_train_step
from research.train.task import Task


class SweepResult(NamedTuple):
  """Final states and per-step metrics, each with a leading member axis.

  Attributes:
    state: TrainState whose leaves are stacked over members.
    metrics: {name: (members, steps)} per-step training metrics.
  """

  state: TrainState
  metrics: dict[str, jax.Array]


def _take(data, idx):
  return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)


def index_tables(data: Mapping[str, np.ndarray], batch_size: int, seeds: Sequence[int], steps: int,
                 start: int = 0) -> np.ndarray:
  """Example indices of every member's batches for steps [start, start + steps), (members, steps, batch_size) int32.

  The loop's data order: batch s of member `seed` is `Batcher(data, batch_size, seed).indices(s)`.
  """
  def table(seed):
    batcher = Batcher(data, batch_size, int(seed))
    return np.stack([batcher.indices(s) for s in range(start, start + steps)])

  return np.stack([table(s) for s in seeds]).astype(np.int32)


def make_run(task: Task, config, steps: int):
  """Returns `run_one(data, seed, index_table, hparams) -> (state, metrics)` for one member.

  `index_table` (steps, batch) holds the example indices of each step's batch; the
  function is pure, so it can be vmapped and jitted.
  """
  del steps  # the scan runs as many steps as the index table has rows
  continue_one = make_continue(task, config.ema_decay)

  def run_one(data, seed, index_table, hparams: Mapping[str, Any]):
    keys = Keys.from_seed(seed)
    state = init_state(task, keys.init, _take(data, index_table[0]), config.ema_decay)
    state = state.replace(opt_state=optim.with_hyperparams(state.opt_state, hparams))
    return continue_one(data, seed, index_table, state)

  return run_one


def make_continue(task: Task, ema_decay: float):
  """Returns `continue_one(data, seed, index_table, state) -> (state, metrics)` for one member.

  Runs len(index_table) steps from `state`; step s draws its key from
  `fold_in(Keys.from_seed(seed).train, s)` with s counted from `state.step`, as the loop does.
  """
  step_fn = make_train_step(task, ema_decay)

  def continue_one(data, seed, index_table, state: TrainState):
    train_key = Keys.from_seed(seed).train

    def body(state: TrainState, idx):
      return step_fn(state, _take(data, idx), jax.random.fold_in(train_key, state.step))

    return jax.lax.scan(body, state, index_table)

  return continue_one


def run(task: Task, config, data: Mapping[str, np.ndarray], seeds: Sequence[int],
        hparams: Mapping[str, Sequence[float]] | None = None, steps: int | None = None,
        state: TrainState | None = None) -> SweepResult:
  """Trains one member per seed (and hyperparameter setting) in one vmapped program.

  Args:
    task: the model family's plug-in, as for research.train.train.
    config: the experiment config; `config.seed` is replaced by each member's seed.
    data: the training split as in-memory arrays.
    seeds: one seed per member.
    hparams: {name: values}, one value per member, for injected optimizer hyperparameters
      (learning_rate, weight_decay, b1).
    steps: number of steps (default config.steps; with `state`, the steps still to reach it).
    state: a previous SweepResult's state (same seeds) to continue from instead of
      initialising; its step counts on, and the optimizer state keeps any swept `hparams`,
      which must then be omitted.

  Returns:
    SweepResult with a leading member axis.
  """
  seeds = np.asarray(list(seeds), np.int32)
  members = len(seeds)
  start = 0
  if state is not None:
    done = np.asarray(jax.device_get(state.step)).reshape(-1)
    if done.shape != (members,) or np.any(done != done[0]):
      raise ValueError(f"state must hold {members} members at one common step, got steps {done.tolist()}")
    if hparams:
      raise ValueError("hparams are set at initialisation; a continued sweep keeps those of `state`")
    start = int(done[0])
  steps = config.steps - start if steps is None else steps
  if steps < 1:
    raise ValueError(f"a sweep needs steps >= 1, got {steps}")
  hparams = {k: np.asarray(v, np.float32) for k, v in (hparams or {}).items()}
  for name, values in hparams.items():
    if values.shape != (members,):
      raise ValueError(f"hparams[{name!r}] has shape {values.shape}; expected one value per seed ({members},)")
  batch_size = config.batch_size * task.batches_per_step
  tables = index_tables(data, batch_size, seeds, steps, start)

  mesh = parallel.make_mesh()
  split = members % mesh.size == 0
  member_sharding = NamedSharding(mesh, P(parallel.DATA_AXIS if split else None))
  device_data = jax.device_put({k: jnp.asarray(v) for k, v in data.items()}, parallel.replicated(mesh))
  put = lambda x: jax.device_put(x, member_sharding)
  if state is None:
    run_all = jax.jit(jax.vmap(make_run(task, config, steps), in_axes=(None, 0, 0, 0)),
                      out_shardings=member_sharding)
    state, metrics = run_all(device_data, put(seeds), put(tables), put(hparams))
  else:
    continue_all = _continue_program(task, config.ema_decay, member_sharding)
    state, metrics = continue_all(device_data, put(seeds), put(tables), put(state))
  return SweepResult(state, metrics)


# The last continuation program: evaluating part-way continues one task chunk after chunk,
# and a fresh closure each time would recompile the same program for every chunk.
_last_continue: dict[str, Any] = {}


def _continue_program(task: Task, ema_decay: float, member_sharding: NamedSharding):
  key = (ema_decay, member_sharding)
  if _last_continue.get("task") is not task or _last_continue.get("key") != key:
    program = jax.jit(jax.vmap(make_continue(task, ema_decay), in_axes=(None, 0, 0, 0)),
                      out_shardings=member_sharding)
    _last_continue.update(task=task, key=key, program=program)
  return _last_continue["program"]
