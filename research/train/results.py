"""The `results.json` every run writes: final metrics, config, versions, devices, wall time."""

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import numpy as np
import optax


def to_json(value):
  """Plain JSON values: arrays as lists, numpy scalars as numbers, string keys, non-finite floats as null."""
  if isinstance(value, Mapping):
    return {str(k): to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return to_json(np.asarray(value).tolist())
  if isinstance(value, np.generic):
    return to_json(value.item())
  if isinstance(value, float) and not math.isfinite(value):
    return None  # strict JSON has no NaN or Infinity: an undefined metric is null
  return value


def environment() -> dict[str, Any]:
  """Versions of the stack and the devices this process sees."""
  devices = jax.devices()
  return {
      "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
      "devices": {"count": len(devices), "kind": devices[0].device_kind, "platform": devices[0].platform,
                  "processes": jax.process_count()},
  }


def write_results(workdir: str, metrics: Mapping[str, Any], config=None, wall_time_s: float | None = None,
                  filename: str = "results.json") -> dict[str, Any]:
  """Writes `<workdir>/<filename>` (process 0 only) and returns what was written.

  Args:
    workdir: the run's directory (created if missing).
    metrics: final metrics; arrays become lists.
    config: the run's ml_collections config (stored as a plain dict).
    wall_time_s: the run's wall time in seconds.
    filename: the file name inside workdir.

  Returns:
    The dict written: metrics, then `config`, `versions`, `devices`, `wall_time_s`.
  """
  out = dict(to_json(dict(metrics)))
  if config is not None:
    out["config"] = to_json(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  out.update(environment())
  if wall_time_s is not None:
    out["wall_time_s"] = round(float(wall_time_s), 3)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, filename)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(out, f, indent=2, sort_keys=False, allow_nan=False)
      f.write("\n")
    os.replace(tmp, path)
  return out
