"""What the benchmarks share: parameter counts and research.train's step, timed one update at a time."""

import time

import flax.linen as nn
import jax
import numpy as np

from research.train import Keys, Task, init_state, make_train_step


def param_count(tree) -> int:
  """Number of parameters in a tree of arrays (Flax partitioning boxes unwrapped)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(tree)))


class StepTimer:
  """research.train's jitted train step of `task`, the state donated, on a fixed list of batches.

  Attributes:
    state: the TrainState after the steps run so far.
    param_count: parameters of the task's model.
    losses: the loss of every step run so far.
  """

  def __init__(self, task: Task, batches: list, seed: int):
    self.batches = batches
    self.keys = Keys.from_seed(seed)
    self.state = init_state(task, self.keys.init, batches[0], 0.0)
    self.step = jax.jit(make_train_step(task, 0.0), donate_argnums=0)
    self.param_count = param_count(self.state.params)
    self.losses: list[float] = []

  def run(self, steps: int) -> list[float]:
    """Runs `steps` updates (batches in turn, keys as the loop derives them); returns the seconds of each."""
    times = []
    for _ in range(steps):
      s = int(self.state.step)
      start = time.perf_counter()
      self.state, metrics = self.step(self.state, self.batches[s % len(self.batches)],
                                      jax.random.fold_in(self.keys.train, s))
      self.losses.append(float(metrics["loss"]))  # waits for the step
      times.append(time.perf_counter() - start)
    return times
