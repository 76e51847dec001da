"""The python_functions problem set: references pass their tests in the sandbox, wrong bodies do not,
the splits are disjoint, generation is deterministic, and TFDS serves the same problems."""

import collections
import hashlib
import json

import pytest

from research import data
from research.data import python_functions
from research.evals import code
from tests.conftest import run_python

# One worker runs every file that starts sandboxes: the leftover checks count this checkout's sandbox
# processes machine-wide, and another worker's running programs are not leftovers.
pytestmark = pytest.mark.xdist_group("sandbox")

TRAIN, TEST = python_functions.problems("train"), python_functions.problems("test")
ALL = TRAIN + TEST


def by_template(problems):
  groups = collections.defaultdict(list)
  for problem in problems:
    groups[problem["template"]].append(problem)
  return groups


def digest(problems) -> str:
  return hashlib.sha256(json.dumps(problems, sort_keys=True).encode()).hexdigest()


def test_sizes_fields_and_disjoint_splits():
  assert 300 <= len(ALL) <= 500 and 50 <= len(TEST) <= len(TRAIN) / 3
  assert all(set(p) == set(python_functions.FIELDS) and all(isinstance(v, str) for v in p.values()) for p in ALL)
  templates = by_template(ALL)
  assert len(templates) == len(python_functions.TEMPLATES) and set(by_template(TEST)) == set(templates)
  # Disjoint by constants (task_id is the template and the index of its constants) and by name.
  for field in ("task_id", "entry_point", "prompt", "tests"):
    assert not {p[field] for p in TRAIN} & {p[field] for p in TEST}, field
    assert len({p[field] for p in ALL}) == len(ALL), field
  for template in python_functions.TEMPLATES:  # every setting of the constants is a problem of one split
    settings = [tuple(sorted(params.items())) for params in template.params]
    assert len(set(settings)) == len(settings), template.name
  assert all(p["prompt"].startswith(f"def {p['entry_point']}(") and p["prompt"].endswith('"""\n') for p in ALL)
  with pytest.raises(ValueError, match="unknown python_functions split 'validation'"):
    python_functions.problems("validation")


def test_reference_solutions_pass_their_tests_in_the_sandbox():
  # One program per template (each problem's program in turn; its asserts name the failing call).
  programs = ["\n".join(code.program(p, p["solution"]) for p in group) for group in by_template(ALL).values()]
  results = code.execute_many(programs, timeout_s=20, workers=2)
  assert all(r.status == "passed" for r in results), [r for r in results if r.status != "passed"]
  code.check_problem(TEST[0])


def test_wrong_bodies_fail():
  first = [group[0] for group in by_template(TEST).values()]
  bodies = ("    return None\n", "    pass\n", "    return 0\n", "    return ''\n")
  results = code.execute_many([code.program(p, bodies[i % len(bodies)]) for i, p in enumerate(first)], timeout_s=20,
                              workers=2)
  assert all(r.status == "failed" and r.message.startswith("AssertionError") for r in results), results
  with pytest.raises(ValueError, match=f"problem '{first[0]['task_id']}'"):
    code.check_problem(dict(first[0], solution="    return None\n"))


def test_tests_pin_the_constants():
  # A problem's tests reject the reference of every other problem of its template (another constant):
  # run here, in-process, on the generator's own trusted references.
  for group in by_template(ALL).values():
    references = []
    for problem in group:
      scope = {}
      exec(problem["prompt"] + problem["solution"], scope)  # pylint: disable=exec-used
      references.append(scope[problem["entry_point"]])
    for problem in group:
      scope = {}
      exec(problem["tests"], scope)  # pylint: disable=exec-used
      for other, reference in zip(group, references):
        if other is not problem:
          with pytest.raises(AssertionError):
            scope["check"](reference)


def test_generation_is_deterministic_across_processes():
  script = ("import hashlib, json; from research.data import python_functions as p; "
            "print(hashlib.sha256(json.dumps(p.problems('train') + p.problems('test'), sort_keys=True)"
            ".encode()).hexdigest())")
  out = run_python(["-c", script], env={"PYTHONHASHSEED": "123"}, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == digest(ALL)


def test_tfds_builder_serves_the_same_problems(tmp_path):
  for split, problems in (("train", TRAIN), ("test", TEST)):
    loaded = python_functions.as_problems(data.load("python_functions", split, directory=str(tmp_path)))
    assert sorted(loaded, key=lambda p: p["task_id"]) == sorted(problems, key=lambda p: p["task_id"])
