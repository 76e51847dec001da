"""Shared fixtures: the bundled digits split and a helper to run scripts in a subprocess."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test programs are small and many: compile them with fewer LLVM passes (about half the
# compile time; numerics stay IEEE float32). Set before jax is imported anywhere.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: an end-to-end run of tens of seconds; such tests start first")


def pytest_collection_modifyitems(items):
  """Runs the tests marked slow first (in their collected order), then the rest (in theirs).

  With `-n 2 --dist loadgroup` (README) every test is scheduled on its own as a worker frees up,
  so the long ones, started first, spread over the workers and no worker ends the suite alone on
  one; a file whose module fixture is costly keeps its tests on one worker with
  `pytestmark = pytest.mark.xdist_group(...)`.
  """
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
