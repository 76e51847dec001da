"""Many runs in one compiled program: the loop's member engine driven by one `lax.scan`.

    result = research.sweep.run(task, config, data, seeds=range(10),
                                hparams={"learning_rate": [1e-4, 3e-4, ...]})

Each member is the run `research.train.train` would make with that seed: the same member
engine (research.train.members.Engine: data order, key streams, initialisation, train
step), with every step of every member in one compiled program instead of a Python loop,
its batches gathered on the device from the members' index tables, without checkpoints.
Hyperparameters are the optimizer's injected ones (research/optim.py): they live in the
optimizer state, so sweeping them needs no recompilation. With several devices the member
axis is split over them.

A sweep continues from an earlier result's state (`run(..., state=result.state)`), so
members can be evaluated part-way through training: two chained runs of n and m steps
end where one run of n + m steps does.
"""

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from research.data import Batcher
from research.train import parallel
from research.train.members import OPTIMIZER_PREFIX, Engine, Members
from research.train.step import Keys, TrainState
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
  return np.stack([np.stack([Batcher(data, batch_size, int(seed)).indices(s) for s in range(start, start + steps)])
                   for seed in seeds]).astype(np.int32)


def _training(engine: Engine):
  """`train(data, keys, tables, values) -> (state, metrics)`: each member's init and steps as one scan.

  `tables` ([members,] steps, batch) index the device-resident `data`; step s of a member is
  its engine step on the examples of its row s. The members are mapped over the whole scan.
  """

  def train_one(data, keys: Keys, table, values):
    gather = lambda idx: _take(data, idx)
    state = engine.init_one(keys.init, gather(table[0]), values)
    return engine.steps_one(state, table, keys.train, gather)

  return engine.over_members(train_one, in_axes=(None, 0, 0, 0))


def _continuation(engine: Engine):
  """`continue_(data, keys, tables, state) -> (state, metrics)`: len(table) more steps of each member."""

  def continue_one(data, keys: Keys, table, state: TrainState):
    return engine.steps_one(state, table, keys.train, lambda idx: _take(data, idx))

  return engine.over_members(continue_one, in_axes=(None, 0, 0, 0))


def make_run(task: Task, config, steps: int):
  """Returns `run_one(data, seed, index_table, hparams) -> (state, metrics)` for one member (no member axis).

  `index_table` (steps, batch) holds the example indices of each step's batch and `hparams`
  the optimizer's injected values ({name: scalar}); the function is pure, so it can be
  vmapped and jitted.
  """
  del steps  # the scan runs as many steps as the index table has rows
  train = _training(Engine(task, config))

  def run_one(data, seed, index_table, hparams: Mapping[str, Any]):
    values = {OPTIMIZER_PREFIX + name: value for name, value in hparams.items()}
    return train(data, Keys.from_seed(seed), index_table, values)

  return run_one


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
  seeds = tuple(int(s) for s in seeds)
  start = 0
  if state is not None:
    done = np.asarray(jax.device_get(state.step)).reshape(-1)
    if done.shape != (len(seeds),) or np.any(done != done[0]):
      raise ValueError(f"state must hold {len(seeds)} members at one common step, got steps {done.tolist()}")
    if hparams:
      raise ValueError("hparams are set at initialisation; a continued sweep keeps those of `state`")
    start = int(done[0])
  steps = config.steps - start if steps is None else steps
  if steps < 1:
    raise ValueError(f"a sweep needs steps >= 1, got {steps}")
  for name, values in (hparams or {}).items():
    if np.shape(values) != (len(seeds),):
      raise ValueError(f"hparams[{name!r}] has shape {np.shape(values)}; expected one value per seed ({len(seeds)},)")
  members = Members(seeds, {OPTIMIZER_PREFIX + name: tuple(float(v) for v in values)
                            for name, values in (hparams or {}).items()})
  engine = Engine(task, config, members)
  batchers = engine.batchers(data)
  engine.check(engine.host_batch(batchers, start))
  mesh = parallel.make_mesh()
  member_sharding = engine.member_sharding(mesh)
  device_data = jax.device_put({k: jnp.asarray(v) for k, v in data.items()}, parallel.replicated(mesh))
  keys = jax.device_put(engine.keys(), member_sharding)
  tables = jax.device_put(engine.index_table(batchers, start, steps), member_sharding)  # (members, steps, batch)
  if state is None:
    program = _program(engine, member_sharding, fresh=True)
    state, metrics = program(device_data, keys, tables, jax.device_put(engine.values(), member_sharding))
  else:
    program = _program(engine, member_sharding, fresh=False)
    state, metrics = program(device_data, keys, tables, jax.device_put(state, member_sharding))
  return SweepResult(state, metrics)


# The last program of each kind: evaluating part-way continues one task chunk after chunk, and a
# fresh closure each time would recompile the same program for every chunk.
_programs: dict[bool, tuple[Any, Any]] = {}


def _program(engine: Engine, member_sharding, fresh: bool):
  """The jitted training (or continuation) of `engine`'s members; reused while it fits."""
  key = (engine.task, engine.ema_decay, engine.grad_accum, member_sharding)
  cached = _programs.get(fresh)
  if cached is None or cached[0][0] is not engine.task or cached[0][1:] != key[1:]:
    body = _training(engine) if fresh else _continuation(engine)
    _programs[fresh] = (key, jax.jit(body, out_shardings=member_sharding))
  return _programs[fresh][1]
