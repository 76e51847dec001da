"""A JAX/Flax research codebase: pure functional models, one training loop, scans for RL and EM."""

__version__ = "0.1.0"
