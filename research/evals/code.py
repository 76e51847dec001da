"""Functional correctness of generated code: pass@k (Chen et al. 2021) and a sandbox to run programs in.

    p = code.pass_at_k(n=100, c=np.array([0, 3, 100]), k=10)   # per problem, unbiased
    r = code.execute("assert 1 + 1 == 2")                       # Result(status='passed', message='')
    results = code.execute_many(programs, timeout_s=3.0)        # in parallel processes
    code.check_problem(problem)                                 # its reference solution passes its tests

A problem (python_functions, or HumanEval's layout) is a mapping with `prompt` (signature and
docstring), `tests` (defining `check(candidate)`), `entry_point` (the function's name) and, for
check_problem, `solution` (a reference body); `program(problem, completion)` puts them together.
"""

import concurrent.futures
import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["LAYERS", "STATUSES", "Result", "check_problem", "execute", "execute_many", "pass_at_k", "program",
           "sandbox_layers"]

STATUSES = ("passed", "failed", "timeout", "error")
# What sandbox_layers() may report, in the order they are set up (research/evals/sandbox.py):
LAYERS = {
    "namespaces": "own mount, network (none), PID and IPC namespaces",
    "proc": "a /proc that shows only the program's own processes",
    "process_cap": "at most about 300 processes (the PID namespace's pid_max)",
    "readonly_fs": "every mount read-only, nosuid and nodev, except the working directory",
    "no_capabilities": "every capability dropped, no_new_privs",
    "rlimits": "CPU time, address space, file size and open files limited",
    "guard": "an audit hook refusing processes, signals, sockets, ctypes and writes outside the working directory",
}
_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox.py")
_MESSAGE_CHARS = 500


def _counts(name: str, value) -> np.ndarray:
  array = np.asarray(value)
  if array.dtype.kind not in "iuf":
    raise ValueError(f"pass@k needs integer {name}, got {array.dtype} values")
  bad = ~np.isfinite(array) | (array != np.round(array)) if array.dtype.kind == "f" else np.zeros(array.shape, bool)
  if np.any(bad):
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"pass@k needs integer {name}, got {array[at].item()!r}" + (f" at index {at}" if at else ""))
  return array.astype(np.int64)


def pass_at_k(n, c, k):
  """The unbiased estimate of pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1).

  pass@k = E[1 - C(n - c, k) / C(n, k)]: the chance that at least one of k samples drawn without
  replacement from the n is correct. Computed as the product 1 - prod_{i=0}^{k-1} (n - c - i) / (n - i),
  whose factors lie in [0, 1] (no large binomials), and exactly 1 when n - c < k. Unlike the plug-in
  1 - (1 - c/n)^k, which is biased low, its mean over draws of c is the true pass@k.

  Args:
    n: samples per problem (>= 1).
    c: correct samples per problem (0 <= c <= n).
    k: the k of pass@k (1 <= k <= n).
    All three are integers or integer arrays, broadcast against each other.

  Returns:
    float64 of the broadcast shape (a NumPy scalar for scalar inputs); average it over problems.

  Raises:
    ValueError: for non-integers, negative values, k < 1, c > n or k > n (one line).
  """
  n, c, k = (_counts(name, value) for name, value in (("n", n), ("c", c), ("k", k)))
  n, c, k = np.broadcast_arrays(n, c, k)
  for name, bad, rule in (("n", n < 1, "n >= 1"), ("c", c < 0, "c >= 0"), ("k", k < 1, "k >= 1"),
                          ("c", c > n, "c <= n"), ("k", k > n, "k <= n")):
    if np.any(bad):
      at = np.argwhere(bad)[0] if bad.ndim else ()
      raise ValueError(f"pass@k needs {rule}, got n={n[tuple(at)]}, c={c[tuple(at)]}, k={k[tuple(at)]}"
                       + (f" at index {tuple(int(i) for i in at)}" if bad.ndim else ""))
  i = np.arange(int(k.max()) if k.size else 0)  # (max_k,)
  used = i < k[..., None]  # (..., max_k): factors past each entry's own k are 1
  ratios = (n[..., None] - c[..., None] - i) / np.where(used, n[..., None] - i, 1)  # i < k <= n: no zero
  # A factor <= 0 means n - c < k: every k-subset holds a correct sample.
  factors = np.where(used, np.clip(ratios, 0.0, 1.0), 1.0)
  out = 1.0 - np.prod(factors, axis=-1)
  return out[()] if out.ndim == 0 else out


class Result(NamedTuple):
  """How a program ended in the sandbox.

  status is one of STATUSES:
    "passed"   the program ran to its end without an uncaught exception (exit status 0);
    "failed"   an uncaught AssertionError, or the program stopped itself before its end
               (sys.exit / SystemExit with any code, os._exit);
    "timeout"  it ran past the wall-clock timeout or its CPU-time limit and was killed;
    "error"    anything else: a SyntaxError, any other uncaught exception (MemoryError at the
               memory limit and PermissionError from the sandbox's guard included), a death by
               another signal, or a sandbox that could not start.
  message is "" for "passed", else one line: the last line of the error (with the program's line
  number) or why the program was killed.
  """
  status: str
  message: str


def _signal_name(number: int) -> str:
  try:
    return signal.Signals(number).name
  except ValueError:
    return f"signal {number}"


def _last_line(path: str) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(max(0, os.path.getsize(path) - 4096))
      lines = f.read().decode("utf-8", "replace").strip().splitlines()
  except OSError:
    return ""
  return lines[-1] if lines else ""


def _read_available(fd: int) -> str:
  """What the sandbox wrote to the status pipe, without waiting on a writer that might still live."""
  os.set_blocking(fd, False)
  chunks = []
  while True:
    try:
      chunk = os.read(fd, 65536)
    except BlockingIOError:
      break
    if not chunk:
      break
    chunks.append(chunk)
  return b"".join(chunks).decode("utf-8", "replace")


def _verdict(report: str, cpu_s: float, stderr_path: str, returncode: int | None) -> tuple[Result, tuple[str, ...]]:
  """Result from the status lines (see sandbox.py), with the sandbox layers that were set up."""
  layers, result, end = None, None, None
  for line in report.splitlines():
    word, _, rest = line.partition(" ")
    if word == "layers" and layers is None:
      layers = tuple(filter(None, rest.split(",")))
    elif word == "result" and result is None:
      status, _, message = rest.partition(" ")
      if status in STATUSES:
        result = Result(status, message[:_MESSAGE_CHARS])
    elif word in ("exit", "signal") and end is None:
      end = (word, rest.split())
  if layers is None:
    why = (result.message if result else "") or _last_line(stderr_path) or f"exit status {returncode}"
    return Result("error", f"sandbox failed to start: {why}"[:_MESSAGE_CHARS]), ()
  if result is not None:
    return result, layers
  if end is None:
    return Result("error", f"the sandbox ended unexpectedly (exit status {returncode})"), layers
  kind, (value, used) = end
  if kind == "exit":
    return Result("failed", f"exited with status {value} before the end of the program"), layers
  number = int(value)
  # The sandbox's CPU limit kills with SIGKILL (SIGXCPU where the program lowered its own limit);
  # rusage counts CPU time in ticks, a few percent below the limit's own count.
  if number == signal.SIGXCPU or (number == signal.SIGKILL and float(used) >= 0.8 * cpu_s):
    return Result("timeout", f"killed at the CPU-time limit of {cpu_s:g} s ({_signal_name(number)})"), layers
  return Result("error", f"killed by {_signal_name(number)}"), layers


def _remove(path: str) -> None:
  """Removes the run's folder; what cannot be removed stays (a run never fails for it)."""
  def writable(function, name, exc_info):  # a program may leave read-only folders behind
    del exc_info
    try:
      os.chmod(os.path.dirname(name), 0o700)
      os.chmod(name, 0o700)
      function(name)
    except OSError:
      pass
  shutil.rmtree(path, onerror=writable)


def _check_limits(timeout_s, cpu_s, memory_mb) -> None:
  for name, value in (("timeout_s", timeout_s), ("cpu_s", cpu_s), ("memory_mb", memory_mb)):
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ValueError(f"execute needs a finite {name} > 0, got {value!r}")


def _run(source: str, timeout_s: float = 3.0, cpu_s: float | None = None, memory_mb: int = 1024,
         guard: bool = True, isolate: bool = True) -> tuple[Result, tuple[str, ...]]:
  """execute(), also returning the sandbox layers that were set up.

  guard=False or isolate=False leave out the audit-hook guard or the namespaces (and what rests on
  them), so that tests can show what each layer contains on its own.
  """
  _check_limits(timeout_s, cpu_s, memory_mb)
  cpu_limit = max(1, math.ceil(cpu_s if cpu_s is not None else timeout_s))
  top = tempfile.mkdtemp(prefix="research-sandbox-")
  read_fd, write_fd = os.pipe()
  try:
    workdir = os.path.join(top, "work")
    os.mkdir(workdir, 0o700)
    program_path, stderr_path = os.path.join(top, "program.py"), os.path.join(top, "stderr")
    with open(program_path, "w", encoding="utf-8") as f:
      f.write(source)
    config = {"program": program_path, "workdir": workdir, "status_fd": write_fd, "cpu_s": cpu_limit,
              "memory_bytes": int(memory_mb * 2**20), "file_bytes": 16 * 2**20, "open_files": 256,
              "processes": 16, "guard": int(guard), "isolate": int(isolate)}
    # -I: no environment variables, user site or script folder on sys.path; -S: no site-packages
    # (the standard library only); -B: no .pyc files written.
    command = [sys.executable, "-I", "-S", "-B", _RUNNER, *(f"{key}={value}" for key, value in config.items())]
    with open(stderr_path, "wb") as stderr:
      start = time.monotonic()
      process = subprocess.Popen(command, cwd=top, env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=stderr, pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    write_fd = -1
    try:
      process.wait(timeout=max(0.0, timeout_s - (time.monotonic() - start)))
      timed_out = False
    except subprocess.TimeoutExpired:
      timed_out = True
      # The waiter kills the program and reaps it (a process killed along with its parent would be
      # left for init to reap); the group's SIGKILL below is for a waiter that does not answer.
      process.terminate()
      try:
        process.wait(timeout=1.0)
      except subprocess.TimeoutExpired:
        pass
    finally:
      # The whole process group, even when the program finished: it may have left children.
      try:
        os.killpg(process.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      process.wait()
    result, layers = _verdict(_read_available(read_fd), cpu_limit, stderr_path, process.returncode)
    if timed_out:
      result = Result("timeout", f"killed at the wall-clock timeout of {timeout_s:g} s")
    return result, layers
  finally:
    os.close(read_fd)
    if write_fd >= 0:
      os.close(write_fd)
    _remove(top)


def execute(program: str, timeout_s: float = 3.0, *, cpu_s: float | None = None, memory_mb: int = 1024) -> Result:
  """Runs a Python program in a sandbox and reports how it ended.

  The program runs in a fresh interpreter (`python -I -S`: the standard library only, no
  environment variables at all) in its own session and temporary working directory, removed
  afterwards; its process group is killed at the end, whatever happened. On Linux, where the
  kernel allows namespaces (as root, or through unprivileged user namespaces), it runs as PID 1 of
  its own PID namespace (every process it starts dies with it, at most about 300 of them) with
  no network, every mount but its working directory read-only, and no capabilities. Everywhere,
  resource limits bound its CPU time, memory (address space), file sizes and open files, and an
  audit hook refuses process creation, sockets, ctypes and changes to files outside its working
  directory. research/evals/sandbox.py describes each layer.

  Args:
    program: Python source, run as `__main__`.
    timeout_s: wall-clock limit in seconds, counted from the interpreter's start (about 0.05 s).
    cpu_s: CPU-time limit in seconds (rounded up to whole seconds); defaults to timeout_s.
    memory_mb: address-space limit in MiB.

  Returns:
    A Result: status "passed", "failed", "timeout" or "error" (see Result) and a one-line message.

  Raises:
    ValueError: for a non-positive or non-finite limit.
  """
  return _run(program, timeout_s, cpu_s, memory_mb)[0]


def execute_many(programs: Sequence[str], timeout_s: float = 3.0, workers: int | None = None, *,
                 cpu_s: float | None = None, memory_mb: int = 1024) -> list[Result]:
  """execute() over many programs, `workers` at a time (each in its own process); results in order.

  Identical programs run once and share the result: samples drawn at a low temperature repeat.

  Args:
    programs: Python sources.
    timeout_s, cpu_s, memory_mb: as in execute(), for each program.
    workers: programs run at once; defaults to the number of CPU cores.

  Returns:
    One Result per program, in the order given.
  """
  _check_limits(timeout_s, cpu_s, memory_mb)
  workers = workers or os.cpu_count() or 1
  if workers < 1:
    raise ValueError(f"execute_many needs workers >= 1, got {workers}")
  unique = list(dict.fromkeys(programs))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # threads only wait on the processes
    results = dict(zip(unique, pool.map(lambda source: execute(source, timeout_s, cpu_s=cpu_s, memory_mb=memory_mb),
                                        unique)))
  return [results[source] for source in programs]


@functools.lru_cache(maxsize=1)
def sandbox_layers() -> tuple[str, ...]:
  """The layers of containment execute() sets up on this machine (keys of LAYERS), found by running once.

  All of them on Linux where namespaces may be created (as root, or unprivileged through user
  namespaces; "process_cap" needs Linux >= 6.14); only ("rlimits", "guard") elsewhere.
  """
  return _run("pass", timeout_s=60)[1]


def _text(problem: Mapping, field: str) -> str:
  if field not in problem:
    raise ValueError(f"problem {problem.get('task_id', '?')!r} has no field {field!r}")
  value = problem[field]
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def program(problem: Mapping, completion: str) -> str:
  """The program that tests `completion` (a function body) on a problem: prompt, body, tests, check call.

  Args:
    problem: a mapping with `prompt`, `tests` and `entry_point` (str, or bytes as TFDS loads them).
    completion: the generated (or reference) body that follows the prompt.

  Returns:
    Python source that passes (see Result) exactly when the completion passes the problem's tests.
  """
  prompt, tests, entry_point = (_text(problem, field) for field in ("prompt", "tests", "entry_point"))
  return f"{prompt}{completion}\n\n{tests}\n\ncheck({entry_point})\n"


def check_problem(problem: Mapping, timeout_s: float = 10.0) -> None:
  """Raises a one-line ValueError unless the problem's reference solution passes its own tests.

  Args:
    problem: a mapping with `prompt`, `tests`, `entry_point` and `solution` (and `task_id`).
    timeout_s: wall-clock limit for the run.
  """
  result = execute(program(problem, _text(problem, "solution")), timeout_s)
  if result.status != "passed":
    raise ValueError(f"problem {_text(problem, 'task_id') if 'task_id' in problem else '?'!r}: its reference "
                     f"solution does not pass its own tests ({result.status}: {result.message})")
