"""The data pipeline: sources -> ``prepare`` (decode once, uint8 cache + statistics) ->
``open_cache`` -> ``build_loader`` (sharded, seeded batches with the paper's augmentation).

Never imports ``alexnet.models`` or ``alexnet.train``.
"""

from .cache import Cache, Split, open_cache
from .loader import Loader
from .pipeline import build_loader
from .prepare import PrepareSummary, prepare
from .sources import open_source

__all__ = ["Cache", "Split", "open_cache", "Loader", "build_loader", "PrepareSummary", "prepare", "open_source"]
