"""python_functions: generated function-writing problems with hidden tests (HumanEval's layout).

Each problem asks for the body of a small function given its signature and docstring:

    def keep_above_7(values):
        \"\"\"Return the elements of values that are greater than 7, in their original order.

        >>> keep_above_7([3, 8, 10, 7])
        [8, 10]
        \"\"\"

Problems come from TEMPLATES (list, string and arithmetic tasks), one per setting of a template's
constants, with the function and argument names varied. Fields, all text:

    task_id      "<template>/<index of the constants>", e.g. "keep_above/3"
    template     the template's name
    prompt       signature and docstring, ending in a newline: the body follows it
    solution     the reference body (indented)
    tests        `def check(candidate): ...`: hidden asserts on inputs other than the docstring's
    entry_point  the function's name

research.evals.code.program(problem, body) puts prompt, body and tests together; the reference
passes them (tests/test_python_functions.py runs every one in the sandbox).

A TFDS builder (`research.data.load("python_functions", "test")`, Text features, loaded as bytes)
and the plain generator (`problems("test")`, str) give the same problems; `as_problems` turns a
loaded split back into dicts of str.

Splits: within each template, every TEST_EVERY-th setting of the constants is in "test", the rest
in "train": the two share templates but never constants or function names. Generation is
deterministic: inputs come from random.Random seeded by the task_id (a string seed, the same in
every process and under any PYTHONHASHSEED), expected outputs from running the reference here.
"""

import dataclasses
import random
import string
import textwrap
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow_datasets as tfds

SPLITS = ("train", "test")
TEST_EVERY = 5  # constants settings 4, 9, 14, ... of each template are held out
DOC_WIDTH = 88  # docstring lines wrap at this many characters (after the indent)
FIELDS = ("task_id", "template", "prompt", "solution", "tests", "entry_point")


@dataclasses.dataclass(frozen=True)
class Template:
  """A family of problems that differ in their constants.

  Attributes:
    name: the template's name (the first part of task_id).
    params: one dict of constants per problem.
    names: function-name patterns, formatted with the constants; problem i uses names[i % len].
    args: argument-name choices, one tuple per choice; problem i uses args[i % len].
    doc: the docstring's description, formatted with the constants and `a0`, `a1`, ... (the arguments).
    body: the reference body, formatted the same way (braces meant literally are doubled).
    inputs: (rng, params) -> the argument tuples to test on; the first is the docstring's example.
  """
  name: str
  params: tuple[dict, ...]
  names: tuple[str, ...]
  args: tuple[tuple[str, ...], ...]
  doc: str
  body: str
  inputs: Callable[[random.Random, dict], list[tuple]]


# Inputs ------------------------------------------------------------------------------------------

WORDS = ("apple", "river", "stone", "cloud", "tiger", "lamp", "orbit", "maple", "quiet", "zebra", "echo",
         "violet", "north", "pixel", "kite", "mango", "delta", "harbor", "ivy", "jungle", "sun", "at", "go",
         "blanket", "monsoon", "mountain", "elephant", "labyrinth", "sparkling", "watermelon")
LADDER = "a at sun lamp apple violet blanket elephant labyrinth watermelon"  # one word of each length 1..10


def _ints(rng: random.Random, lo: int, hi: int, n: int) -> list[int]:
  return [rng.randint(lo, hi) for _ in range(n)]


def _int_lists(rng: random.Random, lo: int = -5, hi: int = 20, count: int = 6) -> list[tuple]:
  cases = [(_ints(rng, lo, hi, rng.randint(4, 6)),)]  # the docstring's example
  cases += [([],), ([rng.randint(lo, hi)],)]
  cases += [(_ints(rng, lo, hi, rng.randint(5, 12)),) for _ in range(count)]
  return cases


def _ints_in(lo: int, hi: int, extra: tuple = ()) -> Callable:
  def inputs(rng: random.Random, params: dict) -> list[tuple]:
    del params
    return [(rng.randint(lo, hi),)] + [(x,) for x in extra] + [(rng.randint(lo, hi),) for _ in range(7)]
  return inputs


def _sentence(rng: random.Random, n: int, letter: str = "") -> str:
  """n words; the first holds `letter`."""
  first = rng.choice([w for w in WORDS if letter in w])
  return " ".join([first] + [rng.choice(WORDS) for _ in range(n - 1)])


def _sentences_around(rng: random.Random, params: dict) -> list[tuple]:
  """Sentences whose example has words both at most and more than k letters long."""
  short = [w for w in LADDER.split() if len(w) <= params["k"]]
  long = [w for w in LADDER.split() + list(WORDS) if len(w) > params["k"]]
  words = [rng.choice(short), rng.choice(long), rng.choice(long), rng.choice(short)]
  rng.shuffle(words)
  return [(" ".join(words),)] + _sentences(rng, params)[1:]


def _sentences(rng: random.Random, params: dict) -> list[tuple]:
  del params
  return [(_sentence(rng, 4),), ("",), ("a",), (LADDER,)] + [(_sentence(rng, rng.randint(2, 8)),) for _ in range(6)]


def _mixed_text(rng: random.Random, params: dict) -> list[tuple]:
  del params
  alphabet = string.ascii_lowercase + "  ,.!"
  texts = [_sentence(rng, 3)]
  texts += ["", "z", "Hello, World!"]
  texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(5, 20))) for _ in range(6)]
  return [(t,) for t in texts]


def _word_lists(rng: random.Random, params: dict) -> list[tuple]:
  del params
  return [(rng.sample(WORDS, 3),), ([],), (["one"],)] + [(rng.sample(WORDS, rng.randint(2, 6)),) for _ in range(5)]


def _lists_and_window(rng: random.Random, params: dict) -> list[tuple]:
  k = params["k"]
  cases = [(_ints(rng, -5, 20, k + 3),), (_ints(rng, -5, 20, k),), (_ints(rng, -5, 20, max(0, k - 1)),)]
  return cases + [(_ints(rng, -5, 20, rng.randint(k, k + 8)),) for _ in range(5)]


# Templates ---------------------------------------------------------------------------------------

def _grid(**values) -> tuple[dict, ...]:
  """Every combination of the given values, in order (the last key varies fastest)."""
  combos = [{}]
  for key, options in values.items():
    combos = [dict(c, **{key: v}) for c in combos for v in options]
  return tuple(combos)


def _where(params: tuple[dict, ...], keep: Callable[[dict], bool]) -> tuple[dict, ...]:
  return tuple(p for p in params if keep(p))


def _take(params: tuple[dict, ...], n: int, seed: str) -> tuple[dict, ...]:
  """n of the settings, a fixed spread over the grid (the same in every process)."""
  chosen = sorted(random.Random(seed).sample(range(len(params)), min(n, len(params))))
  return tuple(params[i] for i in chosen)


PAD_NAMES = {"0": "zero", "*": "star", "-": "dash", ".": "dot", "#": "hash", "_": "underscore"}
SEPARATORS = {", ": "comma", " | ": "bar", "-": "dash", " + ": "plus", "; ": "semicolon", "/": "slash", "::": "colons"}
FIZZ_WORDS = ("Fizz", "Buzz", "Foo", "Bar", "Ping", "Pong", "Tick", "Tock")

TEMPLATES = (
    # Arithmetic.
    Template(
        "add_constant", _grid(k=range(1, 16)), ("add_{k}", "plus_{k}", "increment_by_{k}"),
        (("x",), ("n",), ("value",)),
        "Return {a0} plus {k}.", "    return {a0} + {k}\n", _ints_in(-50, 50, (0,))),
    Template(
        "affine", _take(_grid(a=range(2, 8), b=range(1, 8)), 15, "affine"),
        ("times_{a}_plus_{b}", "scale_{a}_shift_{b}"),
        (("x",), ("n",)), "Return {a0} multiplied by {a} and then increased by {b}.", "    return {a0} * {a} + {b}\n",
        _ints_in(-20, 20, (0,))),
    Template(
        "divisible", _grid(k=range(2, 17)), ("is_multiple_of_{k}", "divisible_by_{k}"), (("n",), ("number",)),
        "Return True if {a0} is divisible by {k}, else False.", "    return {a0} % {k} == 0\n",
        lambda rng, p: [(p["k"] * 3,), (0,), (p["k"] + 1,), (p["k"],), (p["k"] * 7,)]
        + [(rng.randint(1, 200),) for _ in range(5)]
        + [(p["k"] + d,) for d in range(2, p["k"]) if p["k"] % d == 0]),  # k + d: divisible by d, not by k
    Template(
        "round_up", _grid(k=range(2, 17)), ("round_up_to_{k}", "ceil_to_multiple_of_{k}"), (("n",), ("amount",)),
        "Return the smallest multiple of {k} that is greater than or equal to {a0} (an integer >= 0).",
        "    return -(-{a0} // {k}) * {k}\n",
        lambda rng, p: [(p["k"] * rng.randint(1, 9) + 1,), (0,), (p["k"],), (p["k"] + 1,)]
        + [(rng.randint(1, 300),) for _ in range(5)]),
    Template(
        "digit_sum_base", _grid(b=range(2, 17)), ("digit_sum_base_{b}", "base_{b}_digit_sum"), (("n",), ("number",)),
        "Return the sum of the digits of {a0} (an integer >= 0) written in base {b}.",
        "    total = 0\n    while {a0} > 0:\n        total += {a0} % {b}\n        {a0} //= {b}\n    return total\n",
        _ints_in(1, 5000, (0,))),
    Template(
        "sum_multiples",
        _take(_where(_grid(a=range(2, 8), b=range(3, 12)), lambda p: p["a"] < p["b"] and p["b"] % p["a"]), 15,
              "sum_multiples"),
        ("sum_multiples_of_{a}_or_{b}", "total_of_multiples_{a}_{b}"), (("limit",), ("n",)),
        "Return the sum of the integers from 1 to {a0} - 1 that are divisible by {a} or by {b}.",
        "    return sum(i for i in range(1, {a0}) if i % {a} == 0 or i % {b} == 0)\n", _ints_in(1, 200, (0, 1))),
    Template(
        "clamp", _take(_grid(lo=range(-10, 6, 3), hi=range(8, 40, 4)), 15, "clamp"),
        ("clamp_{lo_name}_{hi}", "limit_{lo_name}_to_{hi}"), (("x",), ("value",)),
        "Return {a0} limited to the range from {lo} to {hi}: {lo} if it is smaller, {hi} if it is larger.",
        "    return max({lo}, min({hi}, {a0}))\n", _ints_in(-60, 60, (-11, 39))),
    Template(
        "power_mod", _take(_grid(e=range(2, 7), m=(11, 13, 17, 19, 23, 29, 97, 101)), 15, "power_mod"),
        ("power_{e}_mod_{m}", "pow{e}_modulo_{m}"), (("x",), ("base",)),
        "Return {a0} raised to the power {e}, modulo {m} (for an integer {a0} >= 0).",
        "    return pow({a0}, {e}, {m})\n",
        _ints_in(0, 1000, (0, 1))),
    Template(
        "fizz_buzz", _take(_where(_grid(a=range(2, 6), b=range(5, 10), w=range(4)), lambda p: p["b"] % p["a"] != 0), 15,
              "fizz_buzz"),
        ("{fizz_lower}_{buzz_lower}_{a}_{b}", "say_{fizz_lower}_{buzz_lower}_{a}_{b}"), (("n",), ("number",)),
        "Return '{fizz}{buzz}' if {a0} is divisible by both {a} and {b}, '{fizz}' if only by {a}, '{buzz}' if only "
        "by {b}, and {a0} as a string otherwise.",
        "    if {a0} % {a} == 0 and {a0} % {b} == 0:\n        return '{fizz}{buzz}'\n    if {a0} % {a} == 0:\n"
        "        return '{fizz}'\n    if {a0} % {b} == 0:\n        return '{buzz}'\n    return str({a0})\n",
        lambda rng, p: [(p["a"] * p["b"] * 2,), (p["a"],), (p["b"],), (1,), (p["a"] * p["b"],)]
        + [(rng.randint(1, 100),) for _ in range(4)]),
    Template(
        "count_digit", _grid(d=range(10)), ("count_digit_{d}", "how_many_{d}s"), (("n",), ("number",)),
        "Return how many times the digit {d} appears in the decimal digits of {a0} (an integer >= 0).",
        "    return str({a0}).count('{d}')\n",
        lambda rng, p: [(int(f"{p['d']}{rng.randint(0, 999)}{p['d']}"),), (0,), (p["d"],)]
        + [(rng.randint(0, 10**7),) for _ in range(6)]),
    # Lists.
    Template(
        "keep_above", _grid(k=range(0, 15)), ("keep_above_{k}", "values_over_{k}", "filter_greater_than_{k}"),
        (("values",), ("xs",), ("numbers",)),
        "Return the elements of {a0} that are greater than {k}, in their original order.",
        "    return [v for v in {a0} if v > {k}]\n",
        lambda rng, p: _int_lists(rng) + [([p["k"] + 1, p["k"] - 1, p["k"], p["k"] + 2],)]),
    Template(
        "count_value", _grid(k=range(0, 13)), ("count_{k}s", "occurrences_of_{k}"), (("values",), ("xs",)),
        "Return how many elements of {a0} are equal to {k}.", "    return {a0}.count({k})\n",
        lambda rng, p: _int_lists(rng, 0, 12, 6) + [([p["k"], p["k"] + 1, p["k"], p["k"] - 1],)]),
    Template(
        "sum_every", _take(_grid(k=range(2, 7), o=range(0, 4)), 15, "sum_every"),
        ("sum_every_{k_th}_from_{o}", "stride_{k}_sum_from_{o}"), (("values",), ("xs",)),
        "Return the sum of the elements of {a0} at positions {o}, {o} + {k}, {o} + 2 * {k}, and so on "
        "(positions count from 0).", "    return sum({a0}[{o}::{k}])\n", lambda rng, p: _int_lists(rng)),
    Template(
        "rotate_left", _grid(k=range(1, 16)), ("rotate_left_{k}", "shift_left_by_{k}"), (("values",), ("items",)),
        "Return {a0} rotated left by {k} position{k_s} (wrapping around as many times as needed).",
        "    if not {a0}:\n        return []\n    k = {k} % len({a0})\n    return {a0}[k:] + {a0}[:k]\n",
        lambda rng, p: _int_lists(rng)),
    Template(
        "chunks", _grid(k=range(2, 12)), ("chunks_of_{k}", "split_into_groups_of_{k}"), (("values",), ("items",)),
        "Return {a0} split into consecutive lists of {k} elements; the last one may be shorter.",
        "    return [{a0}[i:i + {k}] for i in range(0, len({a0}), {k})]\n",
        lambda rng, p: _int_lists(rng, count=4)
        + [(_ints(rng, 0, 9, 2 * p["k"]),), (_ints(rng, 0, 9, 2 * p["k"] + 1),)]),
    Template(
        "window_max", _grid(k=range(2, 10)), ("window_max_{k}", "sliding_max_{k}"), (("values",), ("xs",)),
        "Return the maximum of each run of {k} consecutive elements of {a0}, from left to right "
        "(an empty list if {a0} has fewer than {k} elements).",
        "    return [max({a0}[i:i + {k}]) for i in range(len({a0}) - {k} + 1)]\n", _lists_and_window),
    Template(
        "zero_multiples", _grid(k=range(2, 12)), ("zero_multiples_of_{k}", "blank_out_multiples_of_{k}"),
        (("values",), ("numbers",)), "Return {a0} with every element divisible by {k} replaced by 0.",
        "    return [0 if v % {k} == 0 else v for v in {a0}]\n", lambda rng, p: _int_lists(rng, 1, 40)),
    Template(
        "first_above", _grid(k=range(0, 15)), ("first_index_above_{k}", "position_of_first_over_{k}"),
        (("values",), ("xs",)), "Return the position (from 0) of the first element of {a0} greater than {k}, or -1 "
        "if there is none.",
        "    for i, v in enumerate({a0}):\n        if v > {k}:\n            return i\n    return -1\n",
        lambda rng, p: _int_lists(rng) + [([p["k"], p["k"] + 1, p["k"] + 2],)]),
    Template(
        "scale_positive", _grid(k=range(2, 14)), ("scale_positives_by_{k}", "positives_times_{k}"),
        (("values",), ("numbers",)),
        "Return the elements of {a0} that are greater than 0, each multiplied by {k}, in their original order.",
        "    return [v * {k} for v in {a0} if v > 0]\n", lambda rng, p: _int_lists(rng)),
    Template(
        "lag_differences", _grid(k=range(1, 9)), ("differences_at_lag_{k}", "lag_{k}_changes"), (("values",), ("xs",)),
        "Return the list of {a0}[i + {k}] - {a0}[i] for every position i where {a0}[i + {k}] exists.",
        "    return [{a0}[i + {k}] - {a0}[i] for i in range(len({a0}) - {k})]\n", _lists_and_window),
    # Strings.
    Template(
        "repeat_chars", _grid(k=range(2, 8)), ("repeat_each_char_{k}_times", "stutter_{k}"), (("text",), ("s",)),
        "Return {a0} with every character repeated {k} times.", "    return ''.join(ch * {k} for ch in {a0})\n",
        _mixed_text),
    Template(
        "caesar", _grid(k=range(1, 26)), ("shift_letters_by_{k}", "caesar_{k}", "rotate_alphabet_{k}"),
        (("text",), ("message",), ("s",)),
        "Return {a0} with every lowercase letter moved {k} place{k_s} forward in the alphabet, wrapping from 'z' "
        "to 'a'; other characters stay as they are.",
        "    out = []\n    for ch in {a0}:\n        if 'a' <= ch <= 'z':\n"
        "            ch = chr((ord(ch) - ord('a') + {k}) % 26 + ord('a'))\n        out.append(ch)\n"
        "    return ''.join(out)\n", _mixed_text),
    Template(
        "long_words", _grid(k=range(1, 9)), ("words_longer_than_{k}", "keep_words_over_{k}_letters"),
        (("sentence",), ("text",)),
        "Return the words of {a0} (separated by spaces) that have more than {k} letter{k_s}, joined by single spaces.",
        "    return ' '.join(w for w in {a0}.split() if len(w) > {k})\n", _sentences_around),
    Template(
        "replace_char", _take(_grid(old=tuple("aeiorst"), new=tuple("xyzq*-")), 15, "replace_char"),
        ("replace_{old}_with_{new_name}", "swap_{old}_for_{new_name}"), (("text",), ("s",)),
        "Return {a0} with every '{old}' replaced by '{new}'.", "    return {a0}.replace('{old}', '{new}')\n",
        lambda rng, p: [(_sentence(rng, 3, p["old"]),)] + _mixed_text(rng, p)[1:] + [(_sentence(rng, 2, p["old"]),)]),
    Template(
        "truncate", _grid(k=range(3, 16)), ("truncate_to_{k}", "shorten_to_{k}_chars"), (("text",), ("s",)),
        "Return {a0} unchanged if it has at most {k} characters, else its first {k} characters followed by '...'.",
        "    if len({a0}) <= {k}:\n        return {a0}\n    return {a0}[:{k}] + '...'\n", _mixed_text),
    Template(
        "pad_left", _take(_grid(k=range(4, 14), c=tuple(PAD_NAMES)), 15, "pad_left"),
        ("pad_left_{k}_with_{c_name}", "left_fill_{k}_{c_name}"), (("text",), ("s",)),
        "Return {a0} padded on the left with '{c}' to a length of {k}; longer strings are returned unchanged.",
        "    return {a0}.rjust({k}, '{c}')\n",
        lambda rng, p: [(rng.choice(("at", "go", "sun", "ivy")),)] + _mixed_text(rng, p)[1:] + [("x" * p["k"],)]),
    Template(
        "count_in_set", _grid(chars=("aeiou", "xyz", "abc", "rst", "lmn", "aei", "ou", "pqrs")),
        ("count_letters_in_{chars}", "how_many_of_{chars}"), (("text",), ("s",)),
        "Return how many characters of {a0} are one of the letters '{chars}'.",
        "    return sum(1 for ch in {a0} if ch in '{chars}')\n", _mixed_text),
    Template(
        "join_words", _grid(sep=tuple(SEPARATORS)), ("join_with_{sep_name}", "glue_with_{sep_name}"),
        (("words",), ("parts",)), "Return the strings in {a0} joined by '{sep}'.", "    return '{sep}'.join({a0})\n",
        _word_lists),
    Template(
        "upper_every", _grid(k=range(2, 10)), ("upper_every_{k_th}_char", "capitalize_every_{k_th}"),
        (("text",), ("s",)),
        "Return {a0} with the characters at positions 0, {k}, 2 * {k}, ... (counting from 0) in upper case.",
        "    return ''.join(ch.upper() if i % {k} == 0 else ch for i, ch in enumerate({a0}))\n", _mixed_text),
)


def _ordinal(k: int) -> str:
  return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _names(params: dict) -> dict:
  """Constants as they appear in names (no minus signs, no punctuation) and in words."""
  extra = {}
  if "k" in params:
    extra.update(k_th=_ordinal(params["k"]), k_s="" if params["k"] == 1 else "s")
  if "lo" in params:
    extra["lo_name"] = f"minus_{-params['lo']}" if params["lo"] < 0 else str(params["lo"])
  if "c" in params:
    extra["c_name"] = PAD_NAMES[params["c"]]
  if "new" in params:
    extra["new_name"] = {"*": "star", "-": "dash"}.get(params["new"], params["new"])
  if "sep" in params:
    extra["sep_name"] = SEPARATORS[params["sep"]]
  if "w" in params:
    fizz, buzz = FIZZ_WORDS[2 * params["w"]], FIZZ_WORDS[2 * params["w"] + 1]
    extra.update(fizz=fizz, buzz=buzz, fizz_lower=fizz.lower(), buzz_lower=buzz.lower())
  return {**params, **extra}


def _problem(template: Template, index: int) -> dict:
  params = _names(template.params[index])
  args = template.args[index % len(template.args)]
  fields = {**params, **{f"a{i}": a for i, a in enumerate(args)}}
  name = template.names[index % len(template.names)].format(**fields)
  body = template.body.format(**fields)
  task_id = f"{template.name}/{index}"
  inputs = template.inputs(random.Random(task_id), template.params[index])
  scope = {}
  exec(f"def {name}({', '.join(args)}):\n{body}", scope)  # pylint: disable=exec-used  # our own reference
  reference = scope[name]

  def call(arguments: tuple) -> str:
    shown = ", ".join(repr(a) for a in arguments)
    return f"{name}({shown})"

  def expected(arguments: tuple):
    # Copies: a reference that mutated its input must not change the next case's expectation.
    return reference(*(list(a) if isinstance(a, list) else a for a in arguments))

  example, tests = inputs[0], inputs[1:]
  doc = "\n    ".join(textwrap.wrap(template.doc.format(**fields), DOC_WIDTH))
  prompt = (f"def {name}({', '.join(args)}):\n    \"\"\"{doc}\n\n    >>> {call(example)}\n    {expected(example)!r}\n"
            f"    \"\"\"\n")
  checks = "".join(f"    assert candidate({', '.join(repr(a) for a in arguments)}) == {expected(arguments)!r}, "
                   f"{call(arguments)!r}\n" for arguments in tests)
  return {"task_id": task_id, "template": template.name, "prompt": prompt, "solution": body,
          "tests": f"def check(candidate):\n{checks}", "entry_point": name}


def split_of(index: int) -> str:
  """The split of a template's `index`-th constants setting."""
  return "test" if index % TEST_EVERY == TEST_EVERY - 1 else "train"


def problems(split: str) -> list[dict]:
  """All problems of a split, in template order: dicts with FIELDS.

  Args:
    split: "train" or "test".

  Raises:
    ValueError: for another split.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown python_functions split {split!r}; choose one of: {', '.join(SPLITS)}")
  return [_problem(t, i) for t in TEMPLATES for i in range(len(t.params)) if split_of(i) == split]


def as_problems(data: Mapping[str, np.ndarray]) -> list[dict]:
  """A split as research.data.load returns it (arrays of bytes) -> one dict of str per problem."""
  return [{field: value.decode("utf-8") for field, value in zip(data, values)} for values in zip(*data.values())]


class PythonFunctions(tfds.core.GeneratorBasedBuilder):
  """The problems of this module as a TFDS dataset: generated, no download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release (ArrayRecord files)."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({field: tfds.features.Text() for field in FIELDS}))

  def _split_generators(self, dl_manager):
    del dl_manager  # generated here
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    for problem in problems(split):
      yield problem["task_id"], problem
