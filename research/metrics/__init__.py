"""Evaluation metrics: FID, precision/recall and class shares on classifier features, importance-sampled
NLL / bits per dim, and GAN mode coverage."""

from research.metrics import features
from research.metrics import fid
from research.metrics import modes
from research.metrics import nll

__all__ = ["features", "fid", "modes", "nll"]
