"""Checkpoints: orbax CheckpointManager under `<workdir>/checkpoints/<step>/`.

A checkpoint holds three items: the train `state`, the data position (`data`) and the
run's `config`. Saves are asynchronous: `save` returns once the state is copied off the
devices and the files are written in the background while training goes on. Orbax writes
into a temporary directory it renames only when complete, so a run killed mid-save leaves
the previous checkpoints intact and never a half-written one as the latest.

A save that fails (a full disk, a quota) raises `SaveError` at the next call of the
Checkpointer (`check`, `save`, `wait`, `close`): one line naming the step that failed, why,
and the newest whole checkpoint, which a rerun resumes from. Orbax's own error logs of its
background threads are left out (`_QuietSaveErrors`): that line says it once.
"""

import contextlib
import dataclasses
import logging as std_logging
import os
import re
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from research.train import parallel
from research.train.config import ConfigError


def _path_names(path) -> tuple[str, ...]:
  # Stored trees are nested dicts/lists; built ones hold dataclasses and NamedTuples.
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _shape_mismatches(abstract, metadata) -> list[str]:
  """Lists the leaves whose shapes differ between a target and a stored tree."""
  out = []
  flat_meta = {_path_names(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(metadata)[0]}
  flat_target = [(_path_names(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]]
  for path, leaf in flat_target:
    stored = flat_meta.get(path)
    name = ".".join(path)
    if stored is None:
      out.append(f"{name} is not in the checkpoint")
    elif tuple(stored.shape) != tuple(leaf.shape):
      out.append(f"{name} has shape {tuple(stored.shape)} in the checkpoint vs {tuple(leaf.shape)} built")
  if not out and len(flat_meta) != len(flat_target):
    out.append(f"{len(flat_meta)} stored arrays vs {len(flat_target)} built")
  return out


class SaveError(Exception):
  """A checkpoint could not be written; the message names the step, the cause and what is kept."""


class _QuietSaveErrors(std_logging.Filter):
  """Drops the exceptions orbax's background threads log as they fail: each also reaches the
  thread that waits on the save, where the Checkpointer reports it as one SaveError line."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    in_orbax = f"{os.sep}orbax{os.sep}checkpoint{os.sep}" in (record.pathname or "")
    return not (in_orbax and record.levelno >= std_logging.ERROR and record.exc_info)


logging.get_absl_logger().addFilter(_QuietSaveErrors())


def _is_late_callback(exc_type, exc, tb) -> bool:
  """A completion handed by native code (tensorstore) to an asyncio loop orbax has already closed.

  When a save fails, orbax closes its loop while some of the save's writes are still in flight;
  as each finishes, tensorstore calls the loop's `call_soon_threadsafe` from its own thread and
  prints the RuntimeError. The outermost frame being `call_soon_threadsafe` itself means no Python
  code made the call: nothing waits on it, and the failure is reported once as a SaveError.
  Tensorstore reports it as unraisable (`sys.unraisablehook`).
  """
  return (exc_type is RuntimeError and str(exc) == "Event loop is closed" and tb is not None
          and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"
          and tb.tb_frame.f_code.co_filename.endswith(os.path.join("asyncio", "base_events.py")))


def _without_late_callbacks(hook):
  def quiet(unraisable):
    if not _is_late_callback(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
      hook(unraisable)
  return quiet


sys.unraisablehook = _without_late_callbacks(sys.unraisablehook)


# The Checkpointers not yet closed, so that a run stopped by a signal anywhere can finish their saves.
_OPEN: list["Checkpointer"] = []


def finish_open_saves() -> list[tuple[str, int | None]]:
  """Completes every started save of the open Checkpointers; returns (directory, newest step) for each.

  Called when a signal stops a run outside its training calls (compiling, evaluating, sampling,
  writing results): the save in flight lands whole instead of as a temporary directory.
  """
  kept = []
  for checkpointer in list(_OPEN):
    try:
      checkpointer.wait()
      steps = checkpointer.steps()
    except Exception:  # pylint: disable=broad-except  # stopped inside orbax: what is on disk stays
      steps = []
    kept.append((checkpointer.directory, steps[-1] if steps else None))
  return kept


class Checkpointer:
  """Saves and restores (state, data position, config) for one workdir."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    # A save killed midway leaves only a temporary directory: orbax ignores it and cleans it up.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self.restored_config = None  # the config saved with the checkpoint `restore` read
    self._saving = None  # the step of the newest save started and not yet known to have failed
    _OPEN.append(self)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def check_compatible(self, abstract_state) -> None:
    """Raises ConfigError if the latest readable checkpoint has other shapes than `abstract_state`.

    Runs before anything is compiled, so a resume with another model size fails fast.
    """
    for step in reversed(self.steps()):
      try:
        metadata = self._manager.item_metadata(step)["state"]
      except Exception:  # pylint: disable=broad-except
        continue  # unreadable: restore() falls back past it with a warning
      if metadata is None:
        continue
      problems = _shape_mismatches(abstract_state, metadata)
      if problems:
        raise ConfigError(
            f"checkpoint {self.directory}/{step} does not match this config "
            f"({problems[0]}{'; ...' if len(problems) > 1 else ''}); use another --workdir")
      return

  def stored_config(self) -> dict | None:
    """The config saved with the newest readable checkpoint (JSON), or None."""
    for step in reversed(self.steps()):
      try:
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
      except Exception:  # pylint: disable=broad-except  # unreadable: restore() deals with it
        continue
    return None

  def stored_hparams(self) -> list[str] | None:
    """The names of the newest readable checkpoint's traced hyperparameters (TrainState.hparams), or None."""
    for step in reversed(self.steps()):
      try:
        hparams = self._manager.item_metadata(step)["state"].get("hparams")
      except Exception:  # pylint: disable=broad-except
        continue
      return sorted(hparams.keys()) if hasattr(hparams, "keys") else None
    return None

  def restore(self, abstract_state) -> tuple[Any, Mapping[str, Any]] | None:
    """Restores the newest readable checkpoint, falling back past unreadable ones.

    Args:
      abstract_state: a pytree of jax.ShapeDtypeStruct (with shardings) to restore into.

    Returns:
      (state, data position) or None when the workdir has no checkpoint.

    Raises:
      RuntimeError: if checkpoints exist but none can be read (never silently restarts).
    """
    self.wait()
    steps = self.steps()
    for step in reversed(steps):
      try:
        target, rebuild = self._target(step, abstract_state)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        self.restored_config = restored["config"]
        return rebuild(restored["state"]), restored["data"]
      except Exception as e:  # pylint: disable=broad-except
        aside = self._set_aside(step)
        logging.warning("checkpoint %s/%d is unreadable (%s: %s); moved it to %s and trying the previous one",
                        self.directory, step, type(e).__name__, str(e).splitlines()[0] if str(e) else "", aside)
    if steps:
      raise RuntimeError(f"no readable checkpoint among steps {steps} in {self.directory}; "
                         "refusing to start from scratch over them")
    return None

  def restore_saved(self) -> tuple[int, Any]:
    """The newest checkpoint's state as it was saved: (step, nested dicts of arrays).

    Nothing of the run that wrote it needs rebuilding (a later stage reads an earlier one's
    parameters this way), and its arrays come back replicated over this process's devices,
    whatever mesh they were saved from.

    Raises:
      ConfigError: if the workdir holds no checkpoint.
    """
    self.wait()
    steps = self.steps()
    if not steps:
      raise ConfigError(f"{os.path.dirname(self.directory)} holds no checkpoint")
    replicated = parallel.replicated(parallel.make_mesh())
    stored = self._manager.item_metadata(steps[-1])["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
                          getattr(stored, "tree", stored))
    restored = self._manager.restore(steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return steps[-1], restored["state"]

  def _target(self, step: int, abstract_state):
    """What to restore into, and how to make the state from it.

    A checkpoint written before a state field existed (TrainState.hparams, say) holds the
    fields it had: when every missing field is empty (None) in this run too, it restores into
    those fields and the state is rebuilt around them, instead of failing on the tree's shape.
    """
    keep = (abstract_state, lambda tree: tree)
    if not dataclasses.is_dataclass(abstract_state):
      return keep
    try:
      stored = set(self._manager.item_metadata(step)["state"].keys())
    except Exception:  # pylint: disable=broad-except
      return keep
    fields = [f.name for f in dataclasses.fields(abstract_state)]
    missing = [f for f in fields if f not in stored]
    if not missing or any(getattr(abstract_state, f) is not None for f in missing):
      return keep
    return ({f: getattr(abstract_state, f) for f in fields if f in stored},
            lambda tree: abstract_state.replace(**tree))

  def _set_aside(self, step: int) -> str:
    """Moves an unreadable checkpoint out of the manager's directory, keeping it for inspection.

    Otherwise the resumed run would skip saving that step again (it looks taken) and a later
    restart would trip over the same broken files.
    """
    aside = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable", str(step))
    if jax.process_index() == 0:
      if os.path.exists(aside):
        shutil.rmtree(aside)
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), aside)
    self._manager.reload()
    return aside

  def save(self, step: int, state, data: Mapping[str, Any], config) -> None:
    """Starts saving a checkpoint for `step` (overwriting nothing); `wait` blocks until it is on disk.

    The state is copied to host memory before this returns, so the caller may donate it
    to the next step right away.
    """
    if step in self._manager.all_steps():
      return
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    self.wait()  # orbax waits for the previous save anyway: a failure of it is named as its own
    self._saving = step
    with self._reporting():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data)),
          config=ocp.args.JsonSave(config_dict)), force=True)

  def check(self) -> None:
    """Raises SaveError if a save started earlier has failed (cheap: it waits for nothing)."""
    with self._reporting():
      self._manager.check_for_errors()

  def wait(self) -> None:
    """Blocks until every started save is complete on disk."""
    with self._reporting():
      self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()
      if self in _OPEN:
        _OPEN.remove(self)

  @contextlib.contextmanager
  def _reporting(self):
    """Turns a failed background save into SaveError: the step, the cause, the newest whole checkpoint."""
    try:
      yield
    except (OSError, ValueError, RuntimeError) as e:
      failed = self._saving
      self._saving = None
      cause = " ".join(str(e).split())
      os_error = re.search(r":\s*([^:\[]+?)\s*\[os_error_code='(\d+)'\]", cause)  # tensorstore's wording
      if os_error:
        cause = f"{os_error.group(1)}, errno {os_error.group(2)}"
      elif len(cause) > 300:
        cause = f"{type(e).__name__}: {cause[:300]}..."
      else:
        cause = f"{type(e).__name__}: {cause}"
      try:
        self._manager.reload()
        whole = [step for step in self._manager.all_steps() if step != failed]
      except Exception:  # pylint: disable=broad-except  # the disk may refuse even to list
        whole = []
      kept = f"the newest whole checkpoint is step {max(whole)}" if whole else "no checkpoint is whole yet"
      what = f"the checkpoint of step {failed}" if failed is not None else "a checkpoint"
      raise SaveError(f"saving {what} in {self.directory} failed ({cause}); {kept}; "
                      "free space and run the same command to resume") from None


def save_pytree(path: str, tree) -> None:
  """Saves one pytree (e.g. final parameters) as a standalone orbax checkpoint at `path`."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), tree, force=True)
  checkpointer.wait_until_finished()


def restore_pytree(path: str, like=None):
  """Restores a pytree saved by `save_pytree`; `like` gives the target structure/shardings."""
  checkpointer = ocp.StandardCheckpointer()
  if like is None:
    return checkpointer.restore(os.path.abspath(path))
  return checkpointer.restore(os.path.abspath(path), jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
