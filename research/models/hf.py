"""Weights to and from transformers' checkpoints through one explicit name table per model.

A model file lists its tensors as `Tensor` rows (transformers' name, our parameter path, and
the conversion each way); `read` fills a parameter tree from safetensors' arrays, checking
each against the shapes the model expects, and `write` turns a parameter tree back into
transformers' arrays. Rows that share transformers' name are the slices of one fused tensor
(GPT-2's c_attn): `write` concatenates them along the last axis, in table order.
"""

import functools
import json
import os
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


def _same(x):
  return x


class Tensor(NamedTuple):
  """One tensor of a transformers checkpoint and the parameter it becomes."""

  theirs: str  # transformers' name
  ours: tuple[str, ...]  # our parameter's path
  to_ours: Callable = _same  # their array -> ours
  to_theirs: Callable = _same  # ours -> theirs (a slice of theirs when several rows share the name)


def _get(tree, path):
  return functools.reduce(lambda node, key: node[key], path, tree)


def read(table: list[Tensor], tensors: dict, shapes, source: str) -> dict:
  """Our parameter tree from transformers' `tensors`, each row of `table` checked against `shapes`.

  Args:
    table: the model's rows.
    tensors: transformers' name -> array (safetensors' `load_file`).
    shapes: the model's parameters (any leaves with a `shape`, e.g. from `jax.eval_shape`).
    source: the file the tensors came from, for messages.

  Returns:
    A nested dict of float32 arrays at the rows' paths.

  Raises:
    ValueError: naming the tensor, when it is missing or gives another shape than `shapes` holds.
  """
  params: dict = {}
  for row in table:
    if row.theirs not in tensors:
      raise ValueError(f"tensor {row.theirs} is missing from {source}")
    try:
      value = np.asarray(row.to_ours(tensors[row.theirs]), np.float32)
    except ValueError as e:  # a reshape or transpose that this tensor's shape does not allow
      raise ValueError(f"tensor {row.theirs} has shape {tensors[row.theirs].shape}, which does not fit "
                       f"{'/'.join(row.ours)}: {e}") from None
    expected = tuple(_get(shapes, row.ours).shape)
    if value.shape != expected:
      raise ValueError(f"tensor {row.theirs} has shape {tensors[row.theirs].shape}, which gives {value.shape} for "
                       f"{'/'.join(row.ours)}; this config expects {expected}")
    node = params
    for key in row.ours[:-1]:
      node = node.setdefault(key, {})
    node[row.ours[-1]] = jnp.asarray(value)
  return params


def write(table: list[Tensor], params) -> dict[str, np.ndarray]:
  """transformers' name -> contiguous float32 array for every row of `table`, from our unboxed `params`."""
  parts: dict[str, list] = {}
  for row in table:
    parts.setdefault(row.theirs, []).append(np.asarray(row.to_theirs(np.asarray(_get(params, row.ours), np.float32))))
  # np.asarray(order="C") keeps a scalar's shape (), which np.ascontiguousarray would make (1,).
  return {name: np.asarray(p[0] if len(p) == 1 else np.concatenate(p, axis=-1), order="C")
          for name, p in parts.items()}


def saved_config(path: str, what: str, weights: str = "model.safetensors") -> tuple[dict, str]:
  """A saved model directory's config.json (read) and the path of its safetensors weights (not yet read).

  The config comes first so a caller can refuse another architecture before reading any weights.

  Raises:
    ValueError: naming the missing file, as "`path` is not a saved `what`: config.json is missing".
  """
  config_path, weights_path = os.path.join(path, "config.json"), os.path.join(path, weights)
  for required in (config_path, weights_path):
    if not os.path.exists(required):
      raise ValueError(f"{path} is not a saved {what}: {os.path.basename(required)} is missing")
  with open(config_path) as f:
    return json.load(f), weights_path


def load_weights(weights_path: str) -> dict[str, np.ndarray]:
  """{name: array} of a safetensors file."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  return load_file(weights_path)
