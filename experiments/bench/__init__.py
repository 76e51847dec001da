"""Speed comparisons with peers, measured in one run; each writes <name>.md and <name>.json."""

import json
import os
import sys
from collections.abc import Mapping
from typing import Any


def command(module: str) -> str:
  """The command line that ran this benchmark, as its report shows it."""
  return " ".join([f"python -m {module}", *sys.argv[1:]])


def write_report(outdir: str, name: str, result: Mapping[str, Any], markdown: str) -> None:
  """Writes `<outdir>/<name>.json` (the measurements) and `<outdir>/<name>.md` (the table)."""
  os.makedirs(outdir, exist_ok=True)
  with open(os.path.join(outdir, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  with open(os.path.join(outdir, f"{name}.md"), "w") as f:
    f.write(markdown if markdown.endswith("\n") else markdown + "\n")
