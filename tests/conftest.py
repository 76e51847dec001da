"""Shared fixtures: the bundled digits split and a helper to run scripts in a subprocess."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test programs are small and many: compile them with fewer LLVM passes (about half the
# compile time) and XLA:CPU's loop emitters in place of its fusion emitters (about half again:
# a tiny DiT's gradient compiles in 1.0 s against 2.1 s); numerics stay IEEE float32, though the
# bits differ from a default compile. Set before jax is imported anywhere.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")
# A check of bits that only XLA's default compile promises runs in a subprocess started by `run_default_compile`,
# which imports this file with RESEARCH_TESTS_DEFAULT_COMPILE=1 and gets the default flags.
if os.environ.get("RESEARCH_TESTS_DEFAULT_COMPILE") != "1":
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
# Many tests run the same smoke programs, in-process and in subprocesses: one persistent XLA
# compilation cache for the session (keyed by the program, the flags and the jax version; its
# executables give the same bits as a fresh compile). The first process makes it, xdist's workers
# and every subprocess inherit it, and the session removes it. No size limit: jax's eviction
# takes a file lock that times out under load. An entry one process reads while another writes
# it fails to load and is compiled again, with a warning that is silenced here.
if "RESEARCH_TESTS_XLA_CACHE" not in os.environ:
  os.environ["RESEARCH_TESTS_XLA_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="research-tests-xla-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
  os.environ["PYTHONWARNINGS"] = ",".join(
      filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:Error writing persistent compilation cache",
                    "ignore:Error reading persistent compilation cache"]))
  _OWNS_CACHE = True
else:
  _OWNS_CACHE = False
warnings.filterwarnings("ignore", message="Error (writing|reading) persistent compilation cache")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: an end-to-end run of tens of seconds; such tests start first")


# The feature networks that score samples (FID, KID, precision/recall; the shapes reader's prompt
# accuracy too) are trained on first use and cached beside the prepared data. Trained under
# FAST_COMPILE their convolutions run about ten times slower (minutes), so the session trains any
# that are missing first, in a subprocess at XLA's full optimisation; the tests then only read the cache.
_FEATURE_NETWORKS = ("from research.tasks import classifier as c, shapes_reader as r; c.digits_classifier(); "
                     "c.digits_conv_space(); r.shapes_reader()")


def pytest_sessionstart(session):
  del session
  if os.environ.get("PYTEST_XDIST_WORKER"):
    return  # the controller does it once
  flags = os.environ["XLA_FLAGS"].replace(FAST_COMPILE, "").strip()
  subprocess.run([sys.executable, "-c", _FEATURE_NETWORKS], cwd=ROOT, env=dict(os.environ, XLA_FLAGS=flags),
                 check=True)


def pytest_unconfigure(config):
  del config
  if _OWNS_CACHE:
    shutil.rmtree(os.environ["RESEARCH_TESTS_XLA_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(items):
  """Runs the tests marked slow first (in their collected order), then the rest (in theirs).

  With `-n 2 --dist loadgroup` (README) every test is scheduled on its own as a worker frees up,
  so the long ones, started first, spread over the workers and no worker ends the suite alone on
  one; a file whose fixture is costly keeps its tests on one worker with
  `pytestmark = pytest.mark.xdist_group(...)` and makes the fixture session-scoped: other files'
  tests run between its tests, and pytest tears a module-scoped fixture down at each such switch
  (the 8-device sharding run was computed four times).
  """
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def once_per_session(tmp_path_factory, name: str, compute):
  """`compute()`'s JSON-able result, computed by the first worker of this test session that asks and
  read back by the others (xdist may spread one file's tests over both workers)."""
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this session's folder, shared
  path = root / f"{name}.json"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait for the first to write it
    if not path.exists():
      path.write_text(json.dumps(compute()))
  return json.loads(path.read_text())


@pytest.fixture(scope="session")
def digits_train():
  from research import data  # pylint: disable=import-outside-toplevel
  return data.load("digits", "train")


def run_python(args, env=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
  """Runs `python ARGS` from the repository root and returns the completed process."""
  env = dict(env or {})
  if "XLA_FLAGS" in env:
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {FAST_COMPILE}"
  full_env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                        timeout=timeout, check=False, **kwargs)


def run_default_compile(args, timeout=600) -> subprocess.CompletedProcess:
  """Runs `python ARGS` from the repository root (with tests/ on the path) under XLA's default compile flags: for a
  check of bits that the tests' cheap flags do not keep, such as two differently shaped programs agreeing bit for
  bit (the cheap flags may order their float sums differently)."""
  flags = os.environ.get("XLA_FLAGS", "").replace(FAST_COMPILE, "").strip()
  env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS=flags, RESEARCH_TESTS_DEFAULT_COMPILE="1",
             PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH")])))
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                        check=False)


def assert_declared_metrics(module, config, members: list[dict]) -> None:
  """The sweep members' scalar metrics are the ones `module.metric_names(config)` declares (what a sweep's
  --metric is checked against before training)."""
  # What every member carries besides its evaluation; a diverged member has only these.
  bookkeeping = {"seed", "train_loss", "diverged_at_step"}
  for member in members:
    if "diverged_at_step" in member:
      continue
    reported = {k for k, v in member.items() if k not in bookkeeping and isinstance(v, (int, float))
                and not isinstance(v, bool)}
    assert reported == set(module.metric_names(config)), (sorted(reported), module.metric_names(config))


def run_table_smoke(name: str, outdir) -> tuple[dict, str]:
  """Runs `python -m experiments.tables.<name>` on its smoke preset into `outdir` (a pathlib.Path); checks that it
  wrote its Markdown (holding the command) and PNG; returns (results.json, the Markdown)."""
  proc = run_python(["-m", f"experiments.tables.{name}", f"--outdir={outdir}",
                     f"--config=experiments/tables/{name}.py:smoke"], timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for suffix in (".md", ".png"):
    assert (outdir / f"{name}{suffix}").stat().st_size > 0, suffix
  results = json.loads((outdir / "results.json").read_text())
  text = (outdir / f"{name}.md").read_text()
  assert results["command"] in text
  return results, text


def parse_gan_config(*args):
  """The config `python -m experiments.gan <args>` runs with, parsed by the script's own config flag."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  argv = ["gan"] + list(args)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", os.path.join(ROOT, "experiments", "gan.py"), flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config
