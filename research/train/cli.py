"""Entry point for absl-flag experiment scripts.

Every experiment ends with

    if __name__ == "__main__":
      cli.main(__file__, run)

which defines `--config` (the script's own `get_config`, so `--config=<script>.py:smoke`
picks a preset and `--config.<field>=...` overrides a field) and `--workdir`, then calls
`run(config, workdir)`. Tables and benchmarks end with
`cli.main(__file__, run, dir_flag="outdir")`. Bad input (an unknown flag or config field, a
ConfigError raised by the checks) is one line on stderr and exit code 2, before anything is
compiled or written. A non-finite loss is one line and exit code 1. SIGINT / SIGTERM during training save a checkpoint
of the current step; in any other phase (compiling, evaluating, sampling, writing) they let the
save in flight finish; either way one line says what was kept and the exit code is 128 + the
signal number (130 / 143). A second signal exits at once, keeping the checkpoints saved before.

A script declares its presets once, as a dict of preset name -> function that edits the
config, and ends `get_config(preset)` with `return cli.apply_presets(config, preset, PRESETS)`.
"""

import difflib
import fcntl
import importlib.util
import os
import signal
import sys
from collections.abc import Callable, Mapping

import jax
from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from research.train import checkpoint, distributed, schedule, usage
from research.train.config import ConfigError
from research.train.monitor import Interrupted, NonFiniteLossError


def _stopped(signum: int) -> str:
  """The line for a signal that stopped a run outside its training calls, once its started saves are whole."""
  name = signal.Signals(signum).name
  kept = [(directory, step) for directory, step in checkpoint.finish_open_saves() if step is not None]
  if not kept:
    return f"interrupted by {name}: no checkpoint had been saved yet; run the same command to start again"
  where = "; ".join(f"step {step} in {directory}" for directory, step in kept)
  return f"interrupted by {name}: kept the newest checkpoint, {where}; run the same command to resume"


def fail(message: str, status: int = 2) -> None:
  """Prints `error: message` on stderr and exits with `status` (2: bad input)."""
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  sys.exit(status)


def apply_presets(config, preset: str, presets: Mapping[str, Callable[[object], None]]):
  """Applies the presets named in `preset` (comma-separated) to `config`, in the order `presets` lists them.

  The order is the declaration's, not the command line's, so "smoke,long" and "long,smoke" give
  the same config, and a preset that shrinks everything (smoke) can be declared last to win.

  Args:
    config: the script's default config, edited in place.
    preset: "" (the default config), a preset name, or several joined by commas.
    presets: preset name -> function editing the config.

  Returns:
    `config`.

  Raises:
    ValueError: naming the first unknown preset and the choices (cli.main prints it as one line).
  """
  names = [name for name in preset.split(",") if name]
  unknown = [name for name in names if name not in presets]
  if unknown:
    raise ValueError(f"unknown preset {unknown[0]!r}; choose from: {', '.join(presets)}")
  for name, edit in presets.items():
    if name in names:
      edit(config)
  return config


def _one_line(error) -> str:
  """An error's message on one line: the reason at the end of a quoted traceback, escapes undone."""
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  # ml_collections quotes the message's repr (\\' and \\n) inside a KeyError.
  text = text.replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if any(line.startswith("Traceback") for line in lines):
    head = lines[0].split("Error whilst parsing config file:")[0].rstrip(": ")
    reason = lines[-1].split(": ", 1)[-1]  # "ValueError: unknown preset ..." -> the reason
    return f"{head}: {reason}" if head else reason
  return "; ".join(line.strip("'") for line in lines)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(_one_line(e))
  except (KeyError, AttributeError, ValueError, TypeError) as e:
    fail(f"bad flag: {e}")
  return []


HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def _config_arg(argv: list[str]) -> str | None:
  """The value of --config in argv ("path[:preset]"), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


_TYPED_ARGV: dict[tuple[str, ...], list[str]] = {}  # sys.argv after `main` rooted its --config path -> as typed


def typed_argv() -> list[str]:
  """The command line as the user typed it (reports quote it): sys.argv before `main` rooted its --config path."""
  return list(_TYPED_ARGV.get(tuple(sys.argv), sys.argv))


def _rooted_config_args(argv: list[str]) -> list[str]:
  """argv with a --config path missing from the working directory but present in the repository made absolute;
  a path that is in neither fails with one line.

  So the documented `--config=experiments/<name>.py[:preset]` works from any directory, as
  `python -m experiments.<name>` does.
  """
  out = list(argv)
  for i, arg in enumerate(out):
    index, value = (i, arg.split("=", 1)[1]) if arg.startswith("--config=") else \
        (i + 1, out[i + 1]) if arg == "--config" and i + 1 < len(out) else (None, None)
    if index is None:
      continue
    path, colon, preset = value.partition(":")
    rooted = os.path.join(usage._ROOT, path)  # pylint: disable=protected-access
    if path and not os.path.isabs(path) and not os.path.exists(path) and os.path.isfile(rooted):
      out[index] = ("--config=" if index == i else "") + rooted + colon + preset
    elif not os.path.isfile(path):
      fail(f"--config {value}: no such file (an experiment's config: --config=experiments/<name>.py[:preset])")
  return out


def _script_module(config_file: str):
  """The experiment script's module: __main__ when it is the script, else the file loaded afresh."""
  main_module = sys.modules.get("__main__")
  main_path = getattr(main_module, "__file__", None)
  if main_path and os.path.realpath(main_path) == os.path.realpath(config_file):
    return main_module
  spec = importlib.util.spec_from_file_location("_experiment_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _script_name(config_file: str) -> str:
  path = os.path.relpath(os.path.realpath(config_file), usage._ROOT)  # pylint: disable=protected-access
  return path if not path.startswith("..") else config_file


def _print_help(config_file: str | None, dir_flag: str) -> None:
  """Prints the script's help (its docstring, flags, config fields and presets) and exits 0."""
  main_module = sys.modules.get("__main__")
  if config_file is None:  # a script that runs other scripts' configs (experiments/sweep.py)
    own = [flag for module, flag_list in flags.FLAGS.flags_by_module_dict().items()
           if os.path.realpath(module) == os.path.realpath(getattr(main_module, "__file__", "") or "")
           for flag in flag_list]
    lines = [(getattr(main_module, "__doc__", "") or "").strip(), "", "Flags:",
             f"  --{dir_flag}=DIR   directory for checkpoints, logs and results",
             "  --config=experiments/<name>.py[:PRESET]   the experiment whose config is swept (required);"
             " its fields: python -m experiments.<name> --help",
             "  --config.FIELD=VALUE   override one field of that config"]
    lines += [f"  --{flag.name}={flag.default if flag.default is not None else ''}   {flag.help}" for flag in own]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.exit(0)
  arg = _config_arg(sys.argv[1:]) or config_file
  path, _, preset = arg.partition(":")
  try:
    module = _script_module(path)
    config = module.get_config(preset)
  except Exception as e:  # pylint: disable=broad-except
    fail(f"bad config: {_one_line(e)}")
  sys.stdout.write(usage.text(module.__doc__, config, getattr(module, "PRESETS", {}), path, _script_name(path), preset,
                              dir_flag))
  sys.exit(0)


def _field_exists(config, field: str) -> bool:
  node = config
  for part in field.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


def _check_overrides(config_file: str | None, argv: list[str]) -> None:
  """Refuses a --config.FIELD override naming no field, with the closest field names (before any parsing)."""
  fields = [arg[len("--config."):].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
  if not fields:
    return
  path, _, preset = (_config_arg(argv) or config_file or "").partition(":")
  if not path:
    return
  try:
    config = _script_module(path).get_config(preset)
  except Exception:  # pylint: disable=broad-except  # the config flag itself reports a broken script or preset
    return
  names = [field for field, _ in usage.flatten(config)]
  names += sorted({field.rsplit(".", i)[0] for field in names for i in range(1, field.count(".") + 1)})
  for field in fields:
    if not _field_exists(config, field):
      close = _closest(field, names)
      hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
      fail(f"unknown config field {field!r}{hint} (every field: --help)")


def _closest(field: str, names: list[str]) -> list[str]:
  """At most two field names a mistyped `field` may have meant: a sibling it abbreviates or misspells first."""
  parent, _, last = field.rpartition(".")
  siblings = [name for name in names if name.rpartition(".")[0] == parent]
  ratio = lambda a, b: difflib.SequenceMatcher(None, a, b).ratio()

  def initials(name: str) -> str:
    return "".join(part[0] for part in name.rpartition(".")[2].split("_") if part)

  def near(name: str) -> bool:
    return (initials(name) == last or (len(last) >= 2 and name.rpartition(".")[2].startswith(last))
            or ratio(name.rpartition(".")[2], last) >= 0.75)

  matches = [name for name in siblings if near(name)] or [name for name in names if near(name)]
  if not matches:
    matches = [name for name in names if ratio(name, field) >= 0.75]
  return sorted(matches, key=lambda name: -ratio(name.rpartition(".")[2], last))[:2]


OWNER_FILE = ".experiment"  # in a workdir: the module of the script that wrote it


def _module_name(config_file: str | None) -> str:
  """"experiments.gan" for experiments/gan.py (the running script's when `config_file` is None)."""
  path = config_file or getattr(sys.modules.get("__main__"), "__file__", None) or sys.argv[0]
  relative = os.path.relpath(os.path.realpath(path), usage._ROOT)  # pylint: disable=protected-access
  return relative[:-3].replace(os.sep, ".") if relative.endswith(".py") else relative


def _check_owner(directory: str, script: str, dir_flag: str) -> None:
  """Refuses a directory another script wrote (each marks its own with OWNER_FILE)."""
  try:
    with open(os.path.join(directory, OWNER_FILE)) as f:
      owner = f.read().strip()
  except OSError:
    return
  if owner and owner != script:
    fail(f"--{dir_flag} {directory} was written by {owner}, not {script}; use another --{dir_flag}")


LOCK_FILE = ".lock"  # in a workdir: held (flock) by the one process running in it, which writes its pid there


def _lock(directory: str, dir_flag: str):
  """Takes the directory's lock for this process's life, or refuses with the holder's pid (one line, exit 2).

  Returns (the open lock file, whether this call created the directory). A directory this
  call created holds only the lock until the run writes something; `_unlock` removes it again
  if the run ends without writing (bad input refused), so that a refusal leaves nothing behind.
  """
  if os.path.exists(directory) and not os.path.isdir(directory):
    fail(f"--{dir_flag} {directory} is a file, not a directory")
  created = not os.path.exists(directory)
  try:
    os.makedirs(directory, exist_ok=True)
    handle = open(os.path.join(directory, LOCK_FILE), "a+")  # pylint: disable=consider-using-with
  except OSError as e:
    fail(f"--{dir_flag} {directory}: {e.strerror or e}")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    fail(f"--{dir_flag} {directory} is in use by a run still going (process {holder}); wait for it to end, "
         f"or use another --{dir_flag}")
  handle.seek(0)
  handle.truncate()
  handle.write(f"{os.getpid()}\n")
  handle.flush()
  return handle, created


def _unlock(directory: str, lock) -> None:
  """Removes the lock file (still holding it) and a directory this run created and left empty, then lets go."""
  handle, created = lock
  try:
    os.remove(os.path.join(directory, LOCK_FILE))
    if created and not os.listdir(directory):
      os.rmdir(directory)  # refused before writing anything: leave no directory
  except OSError:
    pass
  handle.close()


def _mark_owner(directory: str, script: str) -> None:
  """Marks a directory the run wrote into (once it exists and holds something) with the script's module."""
  marker = os.path.join(directory, OWNER_FILE)
  try:
    written = [name for name in os.listdir(directory) if name != LOCK_FILE] if os.path.isdir(directory) else []
    if written and not os.path.exists(marker):
      with open(marker, "w") as f:
        f.write(script + "\n")
  except OSError:
    pass  # a read-only or vanished directory: nothing to mark


def main(config_file: str, run: Callable, workdir_required: bool = True, dir_flag: str = "workdir") -> None:
  """Defines --config and the output directory flag, then runs `run(config, directory)` under absl.

  Args:
    config_file: the experiment script's `__file__`; it must define `get_config(preset)`.
      None for a script that runs other experiments' configs (experiments/sweep.py):
      then --config is required.
    run: `run(config, directory)`, importable by tests and notebooks.
    workdir_required: whether the directory flag must be given.
    dir_flag: the directory flag's name: "workdir" for runs, "outdir" for tables and benchmarks.
  """
  typed = list(sys.argv)
  sys.argv[1:] = _rooted_config_args(sys.argv[1:])
  _TYPED_ARGV[tuple(sys.argv)] = typed
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    _print_help(config_file, dir_flag)
  _check_overrides(config_file, sys.argv[1:])
  try:
    # Parses the --config.<field> overrides already, so an unknown field fails here.
    config_flag = config_flags.DEFINE_config_file("config", config_file, "Experiment config file[:preset].",
                                                  lock_config=True)
  except (KeyError, AttributeError) as e:
    # KeyError's str() is the repr of its message (quotes, \\n escapes): use the message itself.
    fail(f"unknown config field {_one_line(e)}")
  except (flags.Error, ValueError, TypeError) as e:
    fail(f"bad config: {_one_line(e)}")
  workdir_flag = flags.DEFINE_string(dir_flag, None, "Directory for checkpoints, logs and results.",
                                     required=workdir_required)

  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:
      # Warnings and errors only, unless --verbosity asks for more: the progress line and the
      # loop's own messages go to stderr directly, and bad input must stay one line.
      absl_logging.set_verbosity(absl_logging.WARNING)
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if config_flag.value is None:
      fail("--config is required: --config=experiments/<name>.py[:preset]")
    distributed.initialize_distributed()
    script = _module_name(config_file)
    # Runs mark their workdirs; tables and benchmarks write reports into an --outdir, unmarked.
    marks = dir_flag == "workdir" and bool(workdir_flag.value)
    lock, failed_save, stopped = None, False, None
    if marks:
      _check_owner(workdir_flag.value, script, dir_flag)
      # One lock per run, however many processes share its workdir; a single process asks no backend
      # (launch/validate sets the device count after this point).
      if not jax.distributed.is_initialized() or jax.process_index() == 0:
        lock = _lock(workdir_flag.value, dir_flag)
    try:
      with schedule.Signals(raise_stop=True):
        try:
          run(config_flag.value, workdir_flag.value)
          schedule.raise_pending()
        except ConfigError as e:
          fail(str(e))
        except NonFiniteLossError as e:
          fail(str(e), status=1)
        except checkpoint.SaveError as e:
          sys.stderr.write(f"error: {e}\n")
          failed_save = True
        except Interrupted as e:
          sys.stderr.write(f"{e}\n")
          sys.exit(128 + e.signum)  # the shell's convention for a death by that signal
        except schedule.Stop as e:
          sys.stderr.write(f"{_stopped(e.signum)}\n")
          stopped = 128 + e.signum  # the shell's convention for a death by that signal
    finally:
      if marks:
        _mark_owner(workdir_flag.value, script)
      if lock is not None:
        _unlock(workdir_flag.value, lock)
      if failed_save:
        # The failed save's other writes are still queued in orbax's threads: an interpreter
        # teardown would print a traceback for each as it finds their event loop closed (some,
        # finishing before this point, may still print one).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # pylint: disable=protected-access
      if stopped is not None:
        # A signal may have stopped the run inside XLA's compiler, whose thread compiles on: an interpreter
        # teardown would free the backend under it (a segmentation fault). What the run keeps is written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stopped)  # pylint: disable=protected-access

  app.run(guarded, flags_parser=_parse_flags)
