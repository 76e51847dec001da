"""Datasets through TFDS: bundled offline builders plus the TFDS catalog.

    data = research.data.load("digits", "train")   # {'image': uint8 (N,8,8,1), 'label': ...}
    batches = research.data.Batcher(data, batch_size=64, seed=0)
    batch = batches(step)                           # deterministic in (seed, step)
    records = research.data.source("digits", "train")  # random access, read by index (ArrayRecord)

The package's modules import each other, never the package itself: `catalog` (preparing,
loading and reading datasets), `sources` and `batching` (what the loop reads), `tokens` (token
streams, read through `catalog`), `encoder`, `tokenizers`, `toy2d` and `builders`.
"""

from research.data import encoder, tokens, toy2d
from research.data.batching import Batcher
from research.data.catalog import BUNDLED, CATALOG, check_name, data_dir, load, lock, source
from research.data.sources import ArraySource, RecordSource, Source, TokenWindows, as_source

__all__ = ["BUNDLED", "CATALOG", "ArraySource", "Batcher", "RecordSource", "Source", "TokenWindows", "as_source",
           "check_name", "data_dir", "encoder", "load", "lock", "source", "tokens", "toy2d"]
