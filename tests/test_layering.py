"""The packages' layering: models and metrics know nothing of the loop; tasks are where they meet it."""

import ast
import json
import os
import pkgutil

import pytest

from conftest import ROOT, run_python
from research import metrics, models, tasks

LOOP_FREE = {"research.models": models, "research.metrics": metrics}


def _modules(package) -> list[str]:
  return sorted(f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__))


def _imported_names(path: str) -> set[str]:
  """Every module an `import` anywhere in the file names (inside functions too), with `from` targets expanded."""
  names = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def _is_loop(name: str) -> bool:
  return name == "research.train" or name.startswith("research.train.")


@pytest.mark.parametrize("module", [m for package in LOOP_FREE.values() for m in _modules(package)])
def test_no_model_or_metric_file_imports_the_loop(module):
  path = os.path.join(ROOT, *module.split(".")) + ".py"
  assert not any(_is_loop(name) for name in _imported_names(path)), f"{module} imports research.train"


def test_importing_models_and_metrics_does_not_import_the_loop():
  # One fresh interpreter imports each module in turn and names the first that brought the loop in.
  names = [m for package in LOOP_FREE.values() for m in _modules(package)]
  script = ("import importlib, json, sys\n"
            f"for name in {names!r}:\n"
            "  importlib.import_module(name)\n"
            "  if any(k == 'research.train' or k.startswith('research.train.') for k in sys.modules):\n"
            "    print(json.dumps(name)); break\n"
            "else:\n"
            "  print(json.dumps(None))\n")
  proc = run_python(["-c", script], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) is None, f"importing it imports research.train: {proc.stdout}"


def test_families_have_a_model_module_and_a_task_module():
  assert list(models.FAMILIES) == list(tasks.FAMILIES)
  for family, module in models.FAMILIES.items():
    assert module.__name__.startswith("research.models."), family
    plug_ins = [name for name in dir(tasks.FAMILIES[family]) if name.startswith("make_") and name.endswith("task")]
    assert tasks.FAMILIES[family].__name__.startswith("research.tasks.") and plug_ins, family


def test_the_data_package_modules_never_import_their_package():
  # research/data/__init__.py imports its modules; a module reading names off the package is an import loop.
  package_dir = os.path.join(ROOT, "research", "data")
  submodules = {info.name for info in pkgutil.iter_modules([package_dir])}
  for name in submodules:
    path = os.path.join(package_dir, name + ".py")
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        assert all(alias.name != "research.data" for alias in node.names), name
      elif isinstance(node, ast.ImportFrom) and node.module == "research":
        assert all(alias.name != "data" for alias in node.names), name
      elif isinstance(node, ast.ImportFrom) and node.module == "research.data":
        assert {alias.name for alias in node.names} <= submodules, name
