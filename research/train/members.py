"""The member engine: the runs of one task side by side; a single run is one member, a sweep N.

    engine = Engine(task, config, members)     # members=None: the run config.seed makes
    state = engine.init(engine.keys().init, batch, engine.values())
    state, metrics = engine.step(state, batch, engine.keys())

Member i is the run `research.train.train` makes with `config.seed = seeds[i]` and the
values `hparams[name][i]`: its own data order (a Batcher of its seed), its own key streams
(Keys of its seed), its own initialisation and update. Everything that differs between one
run and a sweep is decided here, in `over_members`: a single run's arrays have no member
axis (its programs are the run's own, bit for bit), a sweep's have a leading one that the
one-member functions are mapped over with `jax.vmap`. The loop (research/train/loop.py)
and the scan engine (research/sweep.py) both drive it; they differ only in where batches
come from (prefetched from the host, or gathered on the device from index tables).
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research import data as data_lib
from research import optim
from research.models import layers
from research.train import parallel
from research.train.config import ConfigError
from research.train.step import Keys, TrainState, init_params, init_state, make_train_step
from research.train.task import Task

OPTIMIZER_PREFIX = "optimizer."
EMA_DECAY = "ema_decay"  # the loop's own traced hyperparameter in a sweep (make_train_step reads it from hparams)


class Members(NamedTuple):
  """Independent runs trained side by side as one vmapped program: a sweep over seeds and values.

  Member i is the run `train` makes with `config.seed = seeds[i]` and the values
  `hparams[name][i]`: the same data order, keys, initialisation and update, computed under
  `jax.vmap`. Names are a task's traced hyperparameters (Task.hparams) or the optimizer's
  injected ones as `optimizer.<name>` (learning_rate, weight_decay, b1).

  Attributes:
    seeds: one seed per member.
    hparams: {name: one value per member}.
  """

  seeds: tuple[int, ...]
  hparams: dict[str, tuple[float, ...]] = {}

  @property
  def count(self) -> int:
    return len(self.seeds)

  def values(self, i: int) -> dict[str, float]:
    """Member i's values, {name: value}."""
    return {name: values[i] for name, values in self.hparams.items()}

  def to_json(self) -> dict:
    return {"seeds": [int(s) for s in self.seeds], "hparams": {k: [float(v) for v in vs] for k, vs in self.hparams.items()}}


def check_swept(members: Members, traced) -> None:
  """Raises ConfigError unless every swept name is one of `traced`, with one value per member."""
  for name, values in members.hparams.items():
    if name not in traced:
      raise ConfigError(f"cannot vary {name}: it is not a traced hyperparameter of this experiment (a field that "
                        f"may change shapes or the program); traced: {', '.join(traced) or 'none'}")
    if len(values) != members.count:
      raise ConfigError(f"{name} has {len(values)} values for {members.count} members")


def member_configs(config, members: Members, traced, check) -> list:
  """Each member's config (a scan experiment's sweep): `config` with its seed and values, `check`ed as a single run's.

  Args:
    config: the experiment config the members share.
    members: seeds and {field: one value per member}; every field must be in `traced`.
    traced: the config fields the experiment's program takes as arrays.
    check: `check(config)`, the single run's validation (raises ConfigError).

  Returns:
    One config per member.
  """
  if members.count < 1:
    raise ConfigError("a sweep needs at least one member (seed)")
  check_swept(members, traced)
  configs = []
  for i, seed in enumerate(members.seeds):
    member = config.copy_and_resolve_references()
    member.seed = int(seed)
    for name, value in members.values(i).items():
      member[name] = float(value)
    check(member)
    configs.append(member)
  return configs


class Layout(NamedTuple):
  """Where a run's arrays live on the mesh.

  Attributes:
    abstract: the state's shapes, dtypes and shardings (jax.ShapeDtypeStruct leaves).
    state: the state's shardings (a TrainState of NamedSharding).
    batch: the sharding of one step's batch.
    batches: the sharding of several steps' batches stacked on a leading axis.
  """

  abstract: TrainState
  state: TrainState
  batch: NamedSharding
  batches: NamedSharding


class Engine:
  """One task's members: their data order, keys, initialisation, update and layout.

  A single run (`members=None`) is the member `config.seed` with no member axis; a sweep's
  arrays carry a leading member axis. The one-member functions (`init_one`, `step_one`) are
  the run's own; `over_members` maps them over the members where there is an axis.
  """

  def __init__(self, task: Task, config, members: Members | None = None):
    """Creates the engine.

    Args:
      task: the model family's plug-in.
      config: the fields of research.train.config.base_config (seed, batch_size, ema_decay, grad_accum).
      members: a sweep's seeds and values; None for the single run of `config.seed`.
    """
    if members is not None and members.count < 1:
      raise ConfigError("a sweep needs at least one member (seed)")
    self.task = task
    self.sweep = members is not None
    self.members = members if members is not None else Members(seeds=(int(config.seed),))
    self.batch_size = config.batch_size * task.batches_per_step
    self.ema_decay = config.ema_decay
    self.grad_accum = config.grad_accum
    self._train_step = make_train_step(task, config.ema_decay, config.grad_accum)
    self._counted_step = make_train_step(task, config.ema_decay, 1)  # FLOPs are counted without microbatches

  @property
  def count(self) -> int:
    return self.members.count

  @property
  def axis(self) -> int:
    """The size of the member axis: the member count of a sweep, 0 for a single run (no axis)."""
    return self.count if self.sweep else 0

  # ---------------------------------------------------------------------------------------
  # The member axis: the one place that decides whether there is one.

  def over_members(self, fn: Callable, in_axes=0) -> Callable:
    """`fn` of one member as a function of all members (`jax.vmap` over the member axis of a sweep)."""
    return jax.vmap(fn, in_axes=in_axes) if self.sweep else fn

  def stack(self, trees: Sequence, axis: int = 0):
    """The members' arrays (one tree each) as the engine holds them: stacked at `axis` for a sweep."""
    if not self.sweep:
      return trees[0]
    return jax.tree.map(lambda *xs: (jnp if isinstance(xs[0], jax.Array) else np).stack(xs, axis), *trees)

  def member(self, tree, i: int, axis: int = 0):
    """Member i's part of `tree` (its arrays at index i of `axis` for a sweep)."""
    if not self.sweep:
      return tree
    index = (slice(None),) * axis + (i,)
    return jax.tree.map(lambda x: x[index], tree)

  def keys(self) -> Keys:
    """Every member's key streams (Keys.from_seed of its seed)."""
    return self.stack([Keys.from_seed(seed) for seed in self.members.seeds])

  def values(self) -> dict[str, jax.Array]:
    """{name: the members' values (members,) float32}; empty for a single run."""
    return {name: jnp.asarray(values, jnp.float32) for name, values in self.members.hparams.items()}

  # ---------------------------------------------------------------------------------------
  # Data order.

  def batchers(self, data, process_index: int = 0, process_count: int = 1) -> list[data_lib.Batcher]:
    """One Batcher per member (its seed's order); ConfigError when the data cannot feed the batch."""
    try:
      return [data_lib.Batcher(data, self.batch_size, seed, process_index, process_count)
              for seed in self.members.seeds]
    except (ValueError, TypeError) as e:
      raise ConfigError(str(e)) from None

  def host_batch(self, batchers, step: int):
    """The members' batches of `step`: ([members,] batch, ...)."""
    return self.stack([b(step) for b in batchers])

  def host_batches(self, batchers, start: int, count: int):
    """The members' batches of steps [start, start + count): (steps, [members,] batch, ...)."""
    return self.stack([b.stacked(start, count) for b in batchers], axis=1)

  def index_table(self, batchers, start: int, count: int) -> np.ndarray:
    """Example indices of the members' batches of steps [start, start + count): ([members,] steps, batch) int32."""
    return self.stack([np.stack([b.indices(s) for s in range(start, start + count)]).astype(np.int32)
                       for b in batchers])

  # ---------------------------------------------------------------------------------------
  # One member.

  def init_one(self, key: jax.Array, batch, values: dict[str, jax.Array]) -> TrainState:
    """One member's state at step 0, with its swept values (task hparams, the EMA decay, the optimizer's)."""
    state = init_state(self.task, key, batch, self.ema_decay)
    task_values = {n: v for n, v in values.items() if not n.startswith(OPTIMIZER_PREFIX)}
    optimizer_values = {n[len(OPTIMIZER_PREFIX):]: v for n, v in values.items() if n.startswith(OPTIMIZER_PREFIX)}
    if task_values:
      state = state.replace(hparams={**(state.hparams or {}), **task_values})
    if optimizer_values:
      state = state.replace(opt_state=optim.with_hyperparams(state.opt_state, optimizer_values))
    return state

  def step_one(self, state: TrainState, batch, train_key: jax.Array):
    """One member's update; its key is derived from its train stream and the step, inside the program."""
    return self._train_step(state, batch, jax.random.fold_in(train_key, state.step))

  def steps_one(self, state: TrainState, batches, train_key: jax.Array, gather: Callable | None = None):
    """len(batches) updates of one member as one `lax.scan`: (state, {name: (steps,)}).

    `gather(x)` turns each scanned slice into the step's batch (device-side indexing of an
    index table); by default the slices are the batches.
    """
    gather = gather or (lambda batch: batch)
    return jax.lax.scan(lambda s, x: self.step_one(s, gather(x), train_key), state, batches)

  # ---------------------------------------------------------------------------------------
  # Every member.

  def init(self, init_keys: jax.Array, batch, values: dict[str, jax.Array]) -> TrainState:
    return self.over_members(self.init_one)(init_keys, batch, values)

  def step(self, state: TrainState, batch, keys: Keys):
    """One update of every member: (state, {name: ([members])})."""
    return self.over_members(self.step_one)(state, batch, keys.train)

  def steps(self, state: TrainState, batches, keys: Keys):
    """len(batches) updates of every member as one `lax.scan` of `step`: (state, {name: (steps, [members])}).

    The loop's several steps per call: the members' batches come stacked (steps, [members,] ...).
    A whole run driven from the device maps `steps_one` over the members instead (research/sweep.py):
    the same updates, though XLA may round the two programs' float sums differently.
    """
    return jax.lax.scan(lambda s, batch: self.step(s, batch, keys), state, batches)

  def counted_step(self, state: TrainState, batch, keys: Keys):
    """The update without microbatching, whose lowered program gives the model FLOPs of one step.

    Scanned blocks are traced unrolled here: XLA's cost analysis counts a loop's body once.
    """
    with layers.unrolled_block_scans():
      return self.over_members(self._counted_step)(state, batch, keys.train)

  # ---------------------------------------------------------------------------------------
  # Checks and layout.

  def check(self, batch) -> None:
    """Raises ConfigError unless a sweep's names are traced hyperparameters with one value per member."""
    if not self.sweep:
      return
    members = self.members
    if jax.process_count() > 1:
      raise ConfigError("a sweep runs in one process (its members are split over that process's devices)")
    injected = {}
    if members.hparams:
      opt_state = jax.eval_shape(lambda k, b: init_state(self.task, k, b, self.ema_decay).opt_state,
                                 jax.random.key(0), self.member(batch, 0))
      try:
        injected = optim.hyperparams(opt_state)
      except AttributeError:
        injected = {}  # an optimizer without injected hyperparameters
    traced = sorted(self.task.hparams or {}) + sorted(OPTIMIZER_PREFIX + n for n in injected)
    if EMA_DECAY in members.hparams:
      if self.ema_decay <= 0:
        raise ConfigError("cannot vary ema_decay in a config without an EMA (ema_decay 0): the EMA parameters are "
                          "part of the state; set --config.ema_decay to one of the values")
      if not all(0 < v < 1 for v in members.hparams[EMA_DECAY]):
        raise ConfigError(f"ema_decay values must be in (0, 1), got {list(members.hparams[EMA_DECAY])}")
      traced.append(EMA_DECAY)
    check_swept(members, traced)

  def member_sharding(self, mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """A sweep's member axis (after `leading_axes`) split over the devices when they divide it, else replicated."""
    split = self.count % mesh.size == 0
    return NamedSharding(mesh, P(*([None] * leading_axes), parallel.DATA_AXIS if split else None))

  def layout(self, mesh: Mesh, batch) -> Layout:
    """The state's and the batches' shardings, from shapes only (nothing is compiled).

    A single run shards its parameters by their logical axis names and its batch over
    data x fsdp; a sweep splits its members over the devices instead.
    """
    if self.sweep and mesh.shape[parallel.FSDP_AXIS] * mesh.shape[parallel.TENSOR_AXIS] > 1:
      raise ConfigError("a sweep splits its members over the data axis; set mesh.fsdp and mesh.tensor to 1")
    self.check(batch)
    abstract = jax.eval_shape(self.init, self.keys().init, batch, self.values())
    if self.sweep:
      member = self.member_sharding(mesh)
      state = jax.tree.map(lambda _: member, abstract)
      batch_sharding, batches_sharding = member, self.member_sharding(mesh, 1)
    else:
      boxed = jax.eval_shape(lambda k, b: init_params(self.task, k, b), self.keys().init, batch)
      params = parallel.param_shardings(boxed, mesh)
      state = TrainState(
          step=parallel.replicated(mesh), params=params,
          opt_state=parallel.like_params(abstract.opt_state, abstract.params, params, mesh),
          ema_params=params if abstract.ema_params is not None else None,
          extra=parallel.like_params(abstract.extra, abstract.params, params, mesh),
          hparams=jax.tree.map(lambda _: parallel.replicated(mesh), abstract.hparams))
      batch_sharding, batches_sharding = parallel.batch_sharding(mesh), parallel.batch_sharding(mesh, 1)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, state)
    return Layout(abstract, state, batch_sharding, batches_sharding)


def completed_steps(state: TrainState) -> int:
  """The completed steps of a state (a sweep's members all share it)."""
  return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
