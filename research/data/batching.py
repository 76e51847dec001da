"""Deterministic, resumable batching of in-memory datasets.

Batch `step` is a pure function of (seed, step): epoch e uses the permutation drawn from
`numpy.random.default_rng([seed, e])`, and the batch is its slice `step mod steps_per_epoch`
(the remainder of each epoch is dropped). Resuming at step s therefore needs only s.
"""

from collections.abc import Mapping

import numpy as np


class Batcher:
  """Global batches of an in-memory dataset, sliced to this process's share."""

  def __init__(self, data: Mapping[str, np.ndarray], batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    """Creates the batcher.

    Args:
      data: arrays with a shared leading dimension.
      batch_size: the global batch size (over all processes).
      seed: the data-order seed.
      process_index: this process's index; it gets rows [i*b/n, (i+1)*b/n) of each batch.
      process_count: the number of processes sharing the global batch.

    Raises:
      ValueError: if the arrays disagree in length, or the batch is larger than the data
        or not divisible by the process count.
    """
    sizes = {k: len(v) for k, v in data.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"arrays have different lengths: {sizes}")
    self.num_examples = next(iter(sizes.values()))
    if not 0 < batch_size <= self.num_examples:
      raise ValueError(f"batch_size {batch_size} must be in [1, {self.num_examples}] for this dataset")
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
    self.data = dict(data)
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = self.num_examples // batch_size
    local = batch_size // process_count
    self._rows = slice(process_index * local, (process_index + 1) * local)
    self._epoch, self._perm = None, None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
    return self._perm

  def indices(self, step: int) -> np.ndarray:
    """Example indices of the global batch at `step`, shape (batch_size,)."""
    epoch, position = divmod(step, self.steps_per_epoch)
    return self._permutation(epoch)[position * self.batch_size:(position + 1) * self.batch_size]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the batch at `step`."""
    idx = self.indices(step)[self._rows]
    return {k: v[idx] for k, v in self.data.items()}

  def index_table(self, steps: int) -> np.ndarray:
    """Indices for steps [0, steps), shape (steps, batch_size): the feed of a scanned run."""
    return np.stack([self.indices(s) for s in range(steps)]) if steps else np.zeros((0, self.batch_size), int)
