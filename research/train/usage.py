"""`--help` for the experiment scripts: the docstring, every config field with its default and comment, the presets.

A field's comment is the one on the line that assigns it, `config.<field> = value  # comment`,
found in the script's source or in the project modules it imports (research/train/config.py for
the loop's fields, research/optim.py for the optimizer block). Where several lines assign a
field, a line inside a function that builds the config (`get_config`, `base_config`,
`default_config`, ...) wins over a preset's, and the script's own source over a module's.
"""

import ast
import os
import re
import sys
from collections.abc import Iterable

# `name.a.b = value  # comment`: the assigned dotted path after its variable, and the comment.
_ASSIGN = re.compile(r"^\s*[A-Za-z_]\w*((?:\.[A-Za-z_]\w*)+)\s*(?::[^=]*)?=(?!=)[^#]*#\s*(\S.*)$")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _builder_lines(source: str) -> set[int]:
  """Line numbers (1-based) inside functions whose name says they build a config."""
  lines = set()
  try:
    tree = ast.parse(source)
  except SyntaxError:
    return lines
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef) and "config" in node.name and not node.name.startswith("check"):
      lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
  return lines


def field_comments(files: Iterable[str]) -> list[tuple[str, int, int, str]]:
  """(dotted path, file rank, 0 if in a config builder else 1, comment) of every commented assignment."""
  entries = []
  for rank, path in enumerate(files):
    try:
      with open(path, encoding="utf-8") as f:
        source = f.read()
    except OSError:
      continue
    builders = _builder_lines(source)
    for number, line in enumerate(source.splitlines(), start=1):
      match = _ASSIGN.match(line)
      if match:
        entries.append((match.group(1)[1:], rank, 0 if number in builders else 1, match.group(2).strip()))
  return entries


def comment_for(field: str, entries) -> str:
  """The best comment for `field` ("optimizer.learning_rate"): exact paths first, then the longest suffix."""
  best, best_key = "", None
  for path, rank, outside, comment in entries:
    if field != path and not field.endswith("." + path):
      continue
    key = (field != path, outside, rank, -len(path))
    if best_key is None or key < best_key:
      best, best_key = comment, key
  return best


def flatten(config, prefix: str = "") -> list[tuple[str, object]]:
  """(dotted field, value) of every leaf of a ConfigDict, in its order."""
  rows = []
  for name, value in config.items():
    field = f"{prefix}{name}"
    if hasattr(value, "items") and not isinstance(value, dict):
      rows.extend(flatten(value, field + "."))
    else:
      rows.append((field, value))
  return rows


def project_files(main_file: str) -> list[str]:
  """The script first, then every loaded module of this project (research/, experiments/)."""
  files = [os.path.abspath(main_file)]
  for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path and os.path.abspath(path).startswith(_ROOT + os.sep) and path.endswith(".py"):
      path = os.path.abspath(path)
      if path not in files:
        files.append(path)
  return files


def _value(value) -> str:
  if isinstance(value, str):
    return repr(value)
  if isinstance(value, tuple):
    return ",".join(str(v) for v in value) or "()"
  return str(value)


def text(doc: str, config, presets, main_file: str, script: str, preset: str, dir_flag: str) -> str:
  """The help: the script's docstring, its flags, every config field (default and comment), its presets."""
  entries = field_comments(project_files(main_file))
  rows = [(field, _value(value), comment_for(field, entries)) for field, value in flatten(config)]
  width = min(max((len(f) + len(v) + 3 for f, v, _ in rows), default=0), 56)
  out = [(doc or "").strip(), "", "Flags:",
         f"  --{dir_flag}=DIR   directory for checkpoints, logs and results",
         f"  --config={script}[:PRESET[,PRESET...]]   the config (default: {script}), with presets applied",
         "  --config.FIELD=VALUE   override one field (any field below)", ""]
  shown = f" with preset {preset!r}" if preset else ""
  out.append(f"Config fields (defaults{shown}):")
  for field, value, comment in rows:
    assignment = f"{field} = {value}"
    out.append(f"  {assignment:<{width}}  # {comment}" if comment else f"  {assignment}")
  out.append("")
  if presets:
    out.append(f"Presets (--config={script}:NAME; comma-join several): {', '.join(presets)}")
  else:
    out.append("Presets: none")
  return "\n".join(out) + "\n"
