"""Comparing pytrees in tests: their structures first, then every pair of leaves.

`zip` over two lists of leaves stops at the shorter and pairs leaves by position alone, so a
tree with a missing, extra or renamed entry could pass a leaf-by-leaf comparison.
"""

import jax
import numpy as np


def leaf_pairs(a, b) -> list[tuple]:
  """The leaves of `a` and `b` side by side, after checking that the two trees have one structure."""
  structure_a, structure_b = jax.tree.structure(a), jax.tree.structure(b)
  assert structure_a == structure_b, f"the trees differ in structure:\n{structure_a}\nvs\n{structure_b}"
  return list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_trees_equal(a, b, err_msg: str = "") -> None:
  """Same structure and the same bits in every leaf."""
  for x, y in leaf_pairs(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=err_msg)


def assert_trees_close(a, b, atol: float = 0.0, rtol: float = 0.0, err_msg: str = "") -> None:
  """Same structure and every leaf within tolerance."""
  for x, y in leaf_pairs(a, b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol, err_msg=err_msg)
