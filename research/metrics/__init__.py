"""Evaluation metrics: FID, precision/recall and class shares in any feature space (a network and real
images' statistics in it), importance-sampled NLL / bits per dim, and GAN mode coverage.

Nothing here trains: a feature network is trained by its task (the digits one by
research/tasks/classifier.py) and handed in as a research.metrics.features.FeatureSpace.
"""

from research.metrics import features
from research.metrics import fid
from research.metrics import modes
from research.metrics import nll

__all__ = ["features", "fid", "modes", "nll"]
