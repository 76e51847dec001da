"""`python -m experiments`: the experiments, tables and benchmarks, one line each.

Each line is the script's command and the first line of its docstring; `python -m
experiments.<name> --help` shows a script's flags, config fields and presets.
"""

import ast
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = (("Experiments", ""), ("Tables (paper tables and figures, Markdown + PNG)", "tables"),
            ("Benchmarks (side-by-side speed against peers, JSON + Markdown)", "bench"))


def scripts(folder: str) -> list[tuple[str, str]]:
  """(module, first docstring line) of each runnable script in experiments/<folder>, sorted."""
  directory = os.path.join(_HERE, folder)
  rows = []
  for name in sorted(os.listdir(directory)):
    if not name.endswith(".py") or name.startswith("_"):
      continue
    with open(os.path.join(directory, name), encoding="utf-8") as f:
      source = f.read()
    if '__name__ == "__main__"' not in source:
      continue  # a helper module, not a script
    doc = ast.get_docstring(ast.parse(source)) or ""
    module = ".".join(part for part in ("experiments", folder, name[:-3]) if part)
    rows.append((module, doc.strip().splitlines()[0] if doc.strip() else ""))
  return rows


def listing() -> str:
  out = []
  for title, folder in SECTIONS:
    rows = scripts(folder)
    width = max(len(module) for module, _ in rows)
    out.append(f"{title}:")
    out += [f"  python -m {module:<{width}}  {line}" for module, line in rows]
    out.append("")
  out.append("Each script: python -m <module> --help lists its flags, config fields (defaults, comments) and presets.")
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  sys.stdout.write(listing())
