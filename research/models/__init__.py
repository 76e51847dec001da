"""Model families, one per module; each exposes `make_task(config, ...) -> research.train.Task`.

    from research import models
    task = models.FAMILIES["gan"](config)
"""

from research.models import autoencoder
from research.models import gan

# Family name -> the function building its plug-in for the training loop.
FAMILIES = {"autoencoder": autoencoder.make_task, "gan": gan.make_task}

__all__ = ["FAMILIES", "autoencoder", "gan"]
