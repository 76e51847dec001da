"""The one training loop.

    run = research.train.train(task, config, workdir, data)

Owns: sharding over a device mesh, the jitted and donated step, derived keys,
checkpoints (resume from the latest, bit-identical to an uninterrupted run), metric
writers, the progress line, health metrics, the non-finite-loss stop, evaluation,
sample PNGs and results.json.
"""

import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from research import data as data_lib
from research import optim
from research.train import checkpoint as checkpoint_lib
from research.train import images
from research.train import monitor
from research.train import parallel
from research.train import results as results_lib
from research.train.config import ConfigError, check_common
from research.train.step import Keys, TrainState, eval_params, init_state, make_train_step
from research.train.task import Task


class Run(NamedTuple):
  """What `train` returns: the final state and the dict written to results.json."""

  state: TrainState
  results: dict[str, Any]


def _first_nonfinite(first_step: int, losses: list[jax.Array]) -> tuple[int, float] | None:
  """The first (step, loss) whose loss is NaN or infinite, among losses of consecutive steps."""
  # One stacked transfer: fetching a thousand scalars one by one costs more than the steps.
  values = np.asarray(jax.device_get(jnp.stack(losses)))
  bad = np.flatnonzero(~np.isfinite(values))
  return (first_step + int(bad[0]), float(values[bad[0]])) if bad.size else None


def train(task: Task, config, workdir: str, data: Mapping[str, np.ndarray]) -> Run:
  """Trains `task` on `data` for `config.steps` steps, resuming from `workdir` if it holds checkpoints.

  Args:
    task: the model family's plug-in.
    config: the experiment config (research.train.config.base_config fields and more).
    workdir: checkpoints, TensorBoard events, PNGs and results.json go here.
    data: the training split as in-memory arrays (research.data.load).

  Returns:
    Run(final state, results dict).

  Raises:
    ConfigError: on bad config, or a checkpoint whose shapes differ from this config;
      raised before anything is compiled or written.
    NonFiniteLossError: when the loss becomes NaN/inf (the last good checkpoint stays).
  """
  t0 = time.perf_counter()
  check_common(config)
  mesh = parallel.make_mesh()
  batch_sharding, replicated = parallel.data_sharding(mesh), parallel.replicated(mesh)
  try:
    batcher = data_lib.Batcher(data, config.batch_size * task.batches_per_step, config.seed,
                               jax.process_index(), jax.process_count())
  except ValueError as e:
    raise ConfigError(str(e)) from None
  keys = Keys.from_seed(config.seed)

  # Shapes first: nothing is compiled until the checkpoint (if any) is known to fit.
  first_batch = jax.device_put(parallel.put_batch(batcher(0), batch_sharding), batch_sharding)
  abstract = jax.eval_shape(lambda k, b: init_state(task, k, b, config.ema_decay), keys.init, first_batch)
  state_sharding = jax.tree.map(lambda _: replicated, abstract)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
                          state_sharding)
  checkpoints = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints) \
      if os.path.isdir(os.path.join(workdir, "checkpoints")) else None
  if checkpoints is not None:
    checkpoints.check_compatible(abstract)

  restored = checkpoints.restore(abstract) if checkpoints is not None else None
  if restored is not None:
    state, position = restored
    if position.get("seed") != config.seed:
      raise ConfigError(f"the checkpoint in {workdir} was written with seed {position.get('seed')}, "
                        f"not {config.seed}; use another --workdir")
    monitor.say(f"resuming from step {int(state.step)} of {workdir}")
  else:
    init = jax.jit(lambda k, b: init_state(task, k, b, config.ema_decay), out_shardings=state_sharding)
    state = init(keys.init, first_batch)
  if checkpoints is None:
    checkpoints = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)

  train_step = make_train_step(task, config.ema_decay)

  def keyed_step(state: TrainState, batch):
    # The step's key is derived inside the program: no extra dispatch per step.
    return train_step(state, batch, jax.random.fold_in(keys.train, state.step))

  step_fn = jax.jit(keyed_step, in_shardings=(state_sharding, batch_sharding),
                    out_shardings=(state_sharding, replicated), donate_argnums=0)
  writer = monitor.make_writer(workdir)
  start = int(state.step)
  progress = monitor.Progress(config.steps, start)
  # Losses since the last check, fetched together at each log or save step.
  losses, last_loss, last_saved = [], float("nan"), start if restored is not None else None

  for step in range(start, config.steps):
    batch = parallel.put_batch(batcher(step), batch_sharding)
    state, metrics = step_fn(state, batch)
    done = step + 1
    if step == start:
      # Rates and ETAs count from the end of the first (compiling) step.
      jax.block_until_ready(state)
      progress.restart(done)
    losses.append(metrics["loss"])
    to_log = done % config.log_every == 0 or done == config.steps
    to_save = done % config.checkpoint_every == 0 or done == config.steps
    if not (to_log or to_save):
      continue
    bad = _first_nonfinite(done - len(losses) + 1, losses)
    if bad is not None:
      writer.flush()
      kept = f"the last good checkpoint is step {last_saved}" if last_saved is not None else "no checkpoint was saved"
      raise monitor.NonFiniteLossError(f"non-finite loss ({bad[1]}) at step {bad[0]}; {kept} in {workdir}")
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}
    last_loss = scalars["loss"]
    if to_log:
      scalars["learning_rate"] = float(optim.learning_rate(config.optimizer, config.steps, state.opt_state, step))
      writer.write_scalars(done, scalars)
      progress.report(done, last_loss)
    if to_save:
      checkpoints.save(done, state, {"step": done, "seed": config.seed}, config)
      last_saved = done
    losses = []

  metrics = {"step": int(state.step), "train_loss": last_loss}
  if config.steps > start + 1:
    metrics["steps_per_second"] = progress.steps_per_second(config.steps)
    monitor.say(f"trained steps {start}..{config.steps} at {metrics['steps_per_second']:.1f} steps/s "
                "(after the first, compiling step)")
  elif restored is None:
    checkpoints.save(start, state, {"step": start, "seed": config.seed}, config)

  params = eval_params(state)
  k_evaluate, k_sample = jax.random.split(keys.eval)
  if task.evaluate is not None:
    metrics.update({k: v for k, v in task.evaluate(params, k_evaluate).items()})
  if task.sample is not None and jax.process_index() == 0:
    for name, array in task.sample(params, k_sample).items():
      images.save_png(os.path.join(workdir, f"{name}.png"), np.asarray(array), title=name)
  writer.write_scalars(int(state.step), {f"eval/{k}": v for k, v in metrics.items() if np.ndim(v) == 0
                                         and isinstance(v, (int, float, np.number))})
  writer.flush()
  checkpoints.close()
  out = results_lib.write_results(workdir, metrics, config, time.perf_counter() - t0)
  return Run(state, out)
