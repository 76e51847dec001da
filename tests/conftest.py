"""Shared fixtures: the bundled digits split and a helper to run scripts in a subprocess."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def digits_train():
  from research import data  # pylint: disable=import-outside-toplevel
  return data.load("digits", "train")


def run_python(args, env=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
  """Runs `python ARGS` from the repository root and returns the completed process."""
  full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                        timeout=timeout, check=False, **kwargs)
