"""pass@k against enumeration and beside the naive estimate; the sandbox's verdicts and containment.

Containment tests run each hostile program three ways where the machine allows: with every layer,
with the guard alone (no namespaces: what is left on a machine without them) and with the kernel
layers alone (no guard), so each layer is shown to hold by itself.
"""

import itertools
import math
import re
import os
import socket
import time

import numpy as np
import pytest

from research.evals import code
from tests.conftest import run_python

# One worker runs every file that starts sandboxes: the leftover checks count this checkout's sandbox
# processes machine-wide, and another worker's running programs are not leftovers.
pytestmark = pytest.mark.xdist_group("sandbox")

FULL = code.sandbox_layers()
KERNEL = "namespaces" in FULL and "readonly_fs" in FULL
CONFIGS = [pytest.param({}, id="all_layers"), pytest.param({"isolate": False}, id="guard_only"),
           pytest.param({"guard": False}, id="kernel_only",
                        marks=pytest.mark.skipif(not KERNEL, reason="no namespaces on this machine"))]


def run(program: str, **kwargs) -> code.Result:
  return code._run(program, **kwargs)[0]  # pylint: disable=protected-access


def live_sandbox_processes() -> list[int]:
  """PIDs of processes (not zombies) still running this checkout's sandbox."""
  pids = []
  for name in os.listdir("/proc"):
    try:
      with open(f"/proc/{name}/cmdline", "rb") as f:
        cmdline = f.read()
      with open(f"/proc/{name}/stat", "rb") as f:
        state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
      continue
    if code._RUNNER.encode() in cmdline and state != b"Z":  # pylint: disable=protected-access
      pids.append(int(name))
  return pids


def assert_no_leftovers():
  deadline = time.monotonic() + 2.0  # SIGKILL is delivered, not awaited
  while live_sandbox_processes() and time.monotonic() < deadline:
    time.sleep(0.02)
  assert not live_sandbox_processes()


# pass@k ------------------------------------------------------------------------------------------

def test_pass_at_k_equals_enumerating_k_subsets():
  rows = [(n, c, k) for n in range(1, 8) for c in range(n + 1) for k in range(1, n + 1)]
  n, c, k = (np.array(column) for column in zip(*rows))
  got = code.pass_at_k(n, c, k)  # all at once: vectorised over problems with different n, c and k
  for (n_, c_, k_), value in zip(rows, got):
    subsets = list(itertools.combinations(range(n_), k_))  # samples 0..c-1 are the correct ones
    assert value == pytest.approx(sum(min(s) < c_ for s in subsets) / len(subsets), abs=1e-12)
    assert code.pass_at_k(n_, c_, k_) == value


def test_pass_at_k_is_unbiased_and_the_naive_estimate_is_not():
  # Exact expectations over c ~ Binomial(n, p): the estimator's mean is the true 1 - (1 - p)^k;
  # the plug-in 1 - (1 - c/n)^k is concave in c, so Jensen puts its mean below (k >= 2).
  n, c = 20, np.arange(21)
  for p in (0.02, 0.1, 0.3):
    weights = np.array([math.comb(n, i) * p**i * (1 - p)**(n - i) for i in c])
    for k in (1, 5, 10, 20):
      truth = 1 - (1 - p)**k
      ours = np.sum(weights * code.pass_at_k(n, c, k))
      naive = np.sum(weights * (1 - (1 - c / n)**k))
      assert ours == pytest.approx(truth, abs=1e-12)
      if k == 1:
        assert naive == pytest.approx(truth, abs=1e-12)
      else:
        assert naive < truth - 0.004


def test_pass_at_k_is_stable_where_binomials_overflow():
  # C(5000, 100) overflows float64; the product form needs no binomials.
  for n, c, k in ((5000, 3, 100), (5000, 4900, 100), (200, 1, 100)):
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # exact integers, then one division
    assert code.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
  assert code.pass_at_k(10, 8, 3) == 1.0  # n - c < k: every 3-subset holds a correct sample


def test_pass_at_k_broadcasts():
  out = code.pass_at_k(10, np.array([0, 5, 10]), np.array([[1], [10]]))
  assert out.shape == (2, 3)
  np.testing.assert_allclose(out, [[0.0, 0.5, 1.0], [0.0, 1.0, 1.0]])
  assert isinstance(code.pass_at_k(10, 1, 1), np.floating)


@pytest.mark.parametrize("n, c, k, words", [
    (5, 1, 6, "k <= n"), (5, 6, 1, "c <= n"), (5, -1, 1, "c >= 0"), (0, 0, 1, "n >= 1"), (5, 1, 0, "k >= 1"),
    (5, 1.5, 1, "integer c"), (np.array([5, 5]), np.array([1, 7]), 1, "index (1,)"), (5, True, 1, "integer c"),
    (np.full((3, 3), 5.0), 1, np.eye(3) / 2, "integer k, got 0.5 at index (0, 0)")])
def test_pass_at_k_bad_input_is_one_line(n, c, k, words):
  with pytest.raises(ValueError, match=re.escape(words)) as error:
    code.pass_at_k(n, c, k)
  assert "\n" not in str(error.value)


# Verdicts ----------------------------------------------------------------------------------------

def test_statuses_and_messages():
  programs = {
      "assert 1 + 1 == 2\nprint('out')": ("passed", ""),
      "x = 1\nassert x == 2, 'x is 1'": ("failed", "AssertionError: x is 1 (line 2)"),
      "def f(:\n  pass": ("error", "SyntaxError"),
      "{}['missing']": ("error", "KeyError: 'missing' (line 1)"),
      "import sys\nsys.exit(0)\nassert False": ("failed", "SystemExit(0)"),  # stopping early is no pass
      "import os\nos._exit(0)": ("failed", "status 0 before the end"),
      "import numpy": ("error", "ModuleNotFoundError"),  # the standard library only
  }
  results = code.execute_many(list(programs), timeout_s=10, workers=2)
  for (status, words), result in zip(programs.values(), results):
    assert result.status == status and words in result.message, result


def test_wall_clock_timeout():
  start = time.monotonic()
  result = code.execute("import time\ntime.sleep(60)", timeout_s=1.0)
  assert result == code.Result("timeout", "killed at the wall-clock timeout of 1 s")
  assert time.monotonic() - start < 2.5
  assert_no_leftovers()


def test_infinite_loop_is_stopped_by_the_cpu_limit():
  # A wall-clock limit long enough for the CPU limit (1 s of CPU) to act first, even on a busy machine.
  result = code.execute("while True:\n    pass", timeout_s=60, cpu_s=1)
  assert result.status == "timeout" and "CPU-time limit of 1 s" in result.message, result
  assert_no_leftovers()


def test_unbounded_allocation_meets_the_memory_limit():
  result = code.execute("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 22))", memory_mb=64, timeout_s=20)
  assert result == code.Result("error", "MemoryError (line 3)")


def test_execute_many_keeps_order_and_bad_limits_are_one_line():
  results = code.execute_many([f"assert {i} % 3 != 0" for i in range(6)] + ["assert 0 % 3 != 0"], workers=3)
  assert [r.status for r in results] == ["failed", "passed", "passed", "failed", "passed", "passed", "failed"]
  for call in (lambda: code.execute("pass", timeout_s=0), lambda: code.execute("pass", memory_mb=float("nan")),
               lambda: code.execute_many(["pass"], workers=-1)):
    with pytest.raises(ValueError, match=r"^execute"):
      call()


# Containment -------------------------------------------------------------------------------------

FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"


def test_fork_bomb_is_refused_by_the_guard():
  result = code.execute(FORK_BOMB, timeout_s=5)
  assert result.status == "error" and "os.fork is not allowed" in result.message, result
  assert_no_leftovers()


@pytest.mark.skipif("process_cap" not in FULL, reason="no pid_max per PID namespace (Linux >= 6.14)")
def test_fork_bomb_without_the_guard_meets_the_process_cap_and_dies_with_the_program():
  # Every child sleeps: the program counts the forks the kernel allowed, then ends, leaving them behind.
  bomb = ("import os, time\nn = 0\ntry:\n    while n < 5000:\n        if os.fork() == 0:\n            time.sleep(60)\n"
          "            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nassert n < 300, n\n")
  assert run(bomb, guard=False, timeout_s=20) == code.Result("passed", "")
  assert_no_leftovers()


@pytest.mark.parametrize("layers", [pytest.param({"guard": False, "isolate": False}, id="process_group")]
                         + CONFIGS[2:])
def test_children_left_behind_are_killed(layers):
  result = run("import os, time\nif os.fork() == 0:\n    time.sleep(60)\n", **layers)
  assert result.status == "passed", result
  assert_no_leftovers()


@pytest.mark.parametrize("layers", CONFIGS)
def test_files_outside_the_working_directory_are_safe(layers, tmp_path):
  victim, folder = tmp_path / "victim.txt", tmp_path / "folder"
  victim.write_text("keep")
  folder.mkdir()
  (folder / "inner.txt").write_text("keep")
  program = f"""
import os, shutil
attempts = [lambda: os.remove({str(victim)!r}), lambda: shutil.rmtree({str(folder)!r}),
            lambda: open({str(victim)!r}, "w").close(), lambda: os.rename({str(victim)!r}, "moved.txt"),
            lambda: os.chmod({str(victim)!r}, 0o777), lambda: os.symlink({str(victim)!r}, "link") or open("link", "w")]
refused = 0
for attempt in attempts:
    try:
        attempt()
    except OSError:
        refused += 1
assert refused == len(attempts), refused
with open("mine.txt", "w") as f:  # its own directory is writable
    f.write("ok")
os.remove("mine.txt")
raise AssertionError(os.getcwd())
"""
  result = run(program, **layers)
  assert result.status == "failed", result
  workdir = result.message.removeprefix("AssertionError: ").rsplit(" (line", 1)[0]
  assert workdir.startswith("/") and not os.path.exists(workdir)  # removed afterwards
  assert victim.read_text() == "keep" and (folder / "inner.txt").read_text() == "keep"
  assert oct(victim.stat().st_mode)[-3:] != "777"


@pytest.mark.parametrize("layers", CONFIGS)
def test_the_environment_does_not_leak(layers, monkeypatch):
  monkeypatch.setenv("RESEARCH_SANDBOX_SECRET", "s3cr3t-value")
  program = """
import glob, os
assert set(os.environ) <= {"LC_CTYPE"}, sorted(os.environ)
for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/task/*/environ"):
    try:
        with open(path, "rb") as f:
            assert b"s3cr3t-value" not in f.read(), path
    except OSError:
        pass
"""
  assert run(program, **layers) == code.Result("passed", "")


@pytest.mark.parametrize("layers", CONFIGS)
def test_no_network(layers):
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    program = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    connected = True
except OSError:
    connected = False
assert not connected
"""
    assert run(program, **layers) == code.Result("passed", "")
    with pytest.raises(socket.timeout):
      server.accept()


def test_layers_on_this_machine():
  assert {"rlimits", "guard"} <= set(FULL) <= set(code.LAYERS)
  assert list(FULL) == [layer for layer in code.LAYERS if layer in FULL]  # reported in the order set up
  if "namespaces" in FULL:  # the program could undo the mounts with capabilities
    assert "no_capabilities" in FULL


# Problems ----------------------------------------------------------------------------------------

PROBLEM = {"task_id": "toy/0", "prompt": "def double(x):\n    \"\"\"Return 2 * x.\"\"\"\n",
           "solution": "    return 2 * x\n", "entry_point": "double",
           "tests": "def check(candidate):\n    assert candidate(3) == 6\n"}


def test_check_problem():
  code.check_problem(PROBLEM)
  code.check_problem({k: v.encode() for k, v in PROBLEM.items()})  # as TFDS loads text
  assert code.execute(code.program(PROBLEM, "    return x + 3\n")).status == "passed"  # 3 + 3 == 6 too
  assert code.execute(code.program(PROBLEM, "    return x * 3\n")).status == "failed"
  for broken, words in ((dict(PROBLEM, solution="    return x\n"), "does not pass its own tests (failed"),
                        (dict(PROBLEM, solution="    return (\n"), "does not pass its own tests (error"),
                        ({k: v for k, v in PROBLEM.items() if k != "tests"}, "has no field 'tests'")):
    with pytest.raises(ValueError, match=r"problem 'toy/0'.*" + re.escape(words)) as error:
      code.check_problem(broken)
    assert "\n" not in str(error.value)


def test_evals_import_neither_the_loop_nor_jax():
  script = ("import sys; import research.evals; "
            "print(sorted(m for m in sys.modules if m.startswith(('research.train', 'research.models', 'jax'))))")
  out = run_python(["-c", script], timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
