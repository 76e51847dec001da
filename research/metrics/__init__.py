"""Evaluation metrics: FID, precision/recall and class shares in any feature space (a network and real
images' statistics in it), importance-sampled NLL / bits per dim, GAN mode coverage, and for
sequences BLEU (sacreBLEU's) and exact match.

Nothing here trains: a feature network is trained by its task (the digits one by
research/tasks/classifier.py) and handed in as a research.metrics.features.FeatureSpace.
"""

from research.metrics import bleu
from research.metrics import exact_match
from research.metrics import features
from research.metrics import fid
from research.metrics import modes
from research.metrics import nll

__all__ = ["bleu", "exact_match", "features", "fid", "modes", "nll"]
