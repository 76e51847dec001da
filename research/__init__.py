"""A JAX/Flax research codebase: pure functional models, one training loop, scans for RL and EM.

Subpackages and modules (import what you use):
  research.train    the one training loop (Task, train, TrainState, checkpoints, cli)
  research.data     bundled TFDS datasets and deterministic batching
  research.models   model families: modules, losses, samplers (FAMILIES: name -> model module)
  research.tasks    each family's plug-in for the loop (FAMILIES: name -> task module with make_task)
  research.metrics  FID, precision/recall and class shares in any feature space, NLL / bits per dim,
                    GAN mode coverage
  research.rl       tabular RL, REINFORCE and PPO as scans
  research.em       EM for Gaussian mixtures
  research.optim    the optimizer factory
  research.sweep    many runs of one train step in one vmapped program

Importing the package keeps freed host memory in the process (research.host_memory): XLA:CPU
would otherwise page-fault its whole temporary arena in at every step.
"""

from research import host_memory

host_memory.keep_freed_memory()

__version__ = "0.1.0"
