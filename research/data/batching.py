"""Deterministic, resumable batching of a random-access source (research/data/sources.py).

Batch `step` is a pure function of (seed, step), so resuming at step s needs only s:
  order "epoch"   every example once per epoch: epoch e uses the permutation drawn from
                  `numpy.random.default_rng([seed, e])`, and the batch is its slice
                  `step mod steps_per_epoch` (the remainder of each epoch is dropped).
  order "random"  indices drawn uniformly with replacement from
                  `numpy.random.default_rng([seed, step])` (token windows: no permutation of
                  every offset of a long stream is ever built).
Each process gathers only its rows of the global batch.
"""

import numpy as np

from research.data.sources import as_source

ORDERS = ("epoch", "random")


class Batcher:
  """Global batches of a source, sliced to this process's share."""

  def __init__(self, data, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
               order: str | None = None):
    """Creates the batcher.

    Args:
      data: a mapping of arrays with a shared leading dimension, or a random-access source.
      batch_size: the global batch size (over all processes).
      seed: the data-order seed.
      process_index: this process's index; it gets rows [i*b/n, (i+1)*b/n) of each batch.
      process_count: the number of processes sharing the global batch.
      order: "epoch" or "random"; by default the source's own `order`.

    Raises:
      ValueError: if the arrays disagree in length, or the batch is larger than the data
        (order "epoch") or not divisible by the process count.
    """
    self.source = as_source(data)
    self.order = order or getattr(self.source, "order", "epoch")
    if self.order not in ORDERS:
      raise ValueError(f"unknown batch order {self.order!r}; choose one of: {', '.join(ORDERS)}")
    self.num_examples = len(self.source)
    if batch_size <= 0 or (self.order == "epoch" and batch_size > self.num_examples):
      raise ValueError(f"batch_size {batch_size} must be in [1, {self.num_examples}] for this dataset")
    if self.num_examples == 0:
      raise ValueError("the dataset is empty")
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
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
    if self.order == "random":
      return np.random.default_rng([self.seed, step]).integers(0, self.num_examples, self.batch_size)
    epoch, position = divmod(step, self.steps_per_epoch)
    return self._permutation(epoch)[position * self.batch_size:(position + 1) * self.batch_size]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the batch at `step`."""
    return self.source.__getitems__(self.indices(step)[self._rows])

  def stacked(self, start: int, count: int) -> dict[str, np.ndarray]:
    """This process's rows of the batches of steps [start, start + count), stacked: (count, rows, ...)."""
    idx = np.stack([self.indices(s)[self._rows] for s in range(start, start + count)])  # (count, rows)
    flat = self.source.__getitems__(idx.reshape(-1))
    return {k: v.reshape(idx.shape + v.shape[1:]) for k, v in flat.items()}

  def index_table(self, steps: int) -> np.ndarray:
    """Indices for steps [0, steps), shape (steps, batch_size): the feed of a scanned run."""
    return np.stack([self.indices(s) for s in range(steps)]) if steps else np.zeros((0, self.batch_size), int)
