"""The training steps the benchmarks time: research.train's jitted step, and a PyTorch step written plainly.

Both run one update per `step()` call on a fixed list of batches taken in turn and keep every
loss, so `harness.steps(side.step, n)` times either one update at a time. torch is imported only by the
PyTorch side's functions: with its thread pools loaded, XLA CPU computations were seen to stall
in a process that had not yet timed its JAX side (experiments/bench/ppo.py).
"""

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
    self.train_step = jax.jit(make_train_step(task, 0.0), donate_argnums=0)
    self.param_count = param_count(self.state.params)
    self.losses: list[float] = []

  def step(self) -> None:
    """One update (the next batch, the key the loop derives for this step), waited for."""
    s = len(self.losses)  # the state's step, counted here: reading state.step would wait for the device
    self.state, metrics = self.train_step(self.state, self.batches[s % len(self.batches)],
                                          jax.random.fold_in(self.keys.train, s))
    self.losses.append(float(metrics["loss"]))  # waits for the step


class TorchSteps:
  """A PyTorch training step written plainly: loss, loss.backward(), gradient clipping, the optimizer's step.

  Attributes:
    losses: the loss of every step run so far.
    steps: steps run so far.
  """

  def __init__(self, loss, parameters: list, optimizer, batches: list, grad_clip_norm: float = 0.0):
    """Args:
      loss: `loss(batch) -> scalar tensor`, the forward pass of one batch (masking, sampling included).
      parameters: the tensors the optimizer updates (clipped together by their global norm).
      optimizer: a torch.optim optimizer over them.
      batches: taken in turn, one per step.
      grad_clip_norm: clip the gradients' global norm to this; 0: no clipping.
    """
    self.loss, self.parameters, self.optimizer = loss, list(parameters), optimizer
    self.batches, self.grad_clip_norm = batches, grad_clip_norm
    self.steps = 0
    self.losses: list[float] = []

  def step(self) -> None:
    """One update on the next batch."""
    import torch  # pylint: disable=import-outside-toplevel
    loss = self.loss(self.batches[self.steps % len(self.batches)])
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if self.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip_norm)
    self.optimizer.step()
    self.losses.append(float(loss.detach()))
    self.steps += 1


def torch_adamw(named_parameters: dict, optimizer, decays):
  """torch.optim.AdamW with research.optim's hyperparameters and its weight-decay mask.

  Args:
    named_parameters: name -> tensor (a tied tensor once).
    optimizer: a research.optim config; constant-rate AdamW without embedding decay is what this builds.
    decays: `decays(name, tensor) -> bool`, research.optim.decay_mask's choice in PyTorch's names.

  Raises:
    ValueError: for an optimizer config this does not implement.
  """
  import torch  # pylint: disable=import-outside-toplevel
  if (optimizer.name, optimizer.schedule, optimizer.decay_embeddings) != ("adamw", "constant", False):
    raise ValueError(f"the PyTorch side implements constant-rate AdamW without embedding decay, got "
                     f"{optimizer.to_dict()}")
  decayed = [p for n, p in named_parameters.items() if decays(n, p)]
  rest = [p for n, p in named_parameters.items() if not decays(n, p)]
  return torch.optim.AdamW([{"params": decayed, "weight_decay": optimizer.weight_decay},
                            {"params": rest, "weight_decay": 0.0}], lr=optimizer.learning_rate,
                           betas=(optimizer.b1, optimizer.b2), eps=optimizer.eps)
