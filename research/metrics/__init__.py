"""Evaluation metrics: importance-sampled NLL / bits per dim, and GAN mode coverage."""

from research.metrics import modes
from research.metrics import nll

__all__ = ["modes", "nll"]
