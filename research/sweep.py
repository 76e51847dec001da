"""Many runs in one compiled program: `jax.vmap` over seeds and hyperparameters.

    result = research.sweep.run(task, config, data, seeds=range(10),
                                hparams={"learning_rate": [1e-4, 3e-4, ...]})

Each member is the run `research.train.train` would make with that seed (same key
streams, same data order, same train step), driven by `lax.scan` instead of a Python
loop, without checkpoints. Hyperparameters are the optimizer's injected ones
(research/optim.py): they live in the optimizer state, so sweeping them needs no
recompilation. With several devices the member axis is split over them.
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


def index_tables(data: Mapping[str, np.ndarray], batch_size: int, seeds: Sequence[int], steps: int) -> np.ndarray:
  """Example indices of every member's batches, (members, steps, batch_size) int32: the loop's data order."""
  return np.stack([Batcher(data, batch_size, int(s)).index_table(steps) for s in seeds]).astype(np.int32)


def make_run(task: Task, config, steps: int):
  """Returns `run_one(seed, index_table, hparams) -> (state, metrics)` for one member.

  `index_table` (steps, batch) holds the example indices of each step's batch; the
  function is pure, so it can be vmapped and jitted.
  """
  step_fn = make_train_step(task, config.ema_decay)

  def run_one(data, seed, index_table, hparams: Mapping[str, Any]):
    keys = Keys.from_seed(seed)
    state = init_state(task, keys.init, _take(data, index_table[0]), config.ema_decay)
    state = state.replace(opt_state=optim.with_hyperparams(state.opt_state, hparams))

    def body(state: TrainState, xs):
      step, idx = xs
      return step_fn(state, _take(data, idx), jax.random.fold_in(keys.train, step))

    return jax.lax.scan(body, state, (jnp.arange(steps), index_table))

  return run_one


def run(task: Task, config, data: Mapping[str, np.ndarray], seeds: Sequence[int],
        hparams: Mapping[str, Sequence[float]] | None = None, steps: int | None = None) -> SweepResult:
  """Trains one member per seed (and hyperparameter setting) in one vmapped program.

  Args:
    task: the model family's plug-in, as for research.train.train.
    config: the experiment config; `config.seed` is replaced by each member's seed.
    data: the training split as in-memory arrays.
    seeds: one seed per member.
    hparams: {name: values}, one value per member, for injected optimizer hyperparameters
      (learning_rate, weight_decay, b1).
    steps: number of steps (default config.steps).

  Returns:
    SweepResult with a leading member axis.
  """
  steps = config.steps if steps is None else steps
  if steps < 1:
    raise ValueError(f"a sweep needs steps >= 1, got {steps}")
  seeds = np.asarray(list(seeds), np.int32)
  members = len(seeds)
  hparams = {k: np.asarray(v, np.float32) for k, v in (hparams or {}).items()}
  for name, values in hparams.items():
    if values.shape != (members,):
      raise ValueError(f"hparams[{name!r}] has shape {values.shape}; expected one value per seed ({members},)")
  batch_size = config.batch_size * task.batches_per_step
  tables = index_tables(data, batch_size, seeds, steps)

  mesh = parallel.make_mesh()
  split = members % mesh.size == 0
  member_sharding = NamedSharding(mesh, P(parallel.DATA_AXIS if split else None))
  device_data = jax.device_put({k: jnp.asarray(v) for k, v in data.items()}, parallel.replicated(mesh))
  run_all = jax.jit(jax.vmap(make_run(task, config, steps), in_axes=(None, 0, 0, 0)),
                    out_shardings=member_sharding)
  put = lambda x: jax.device_put(x, member_sharding)
  state, metrics = run_all(device_data, put(seeds), put(tables), put(hparams))
  return SweepResult(state, metrics)
