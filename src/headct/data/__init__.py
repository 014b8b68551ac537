"""Datasets, labels, splits and the prepared cache (``headct prepare``).

``Cache`` reads a prepared cache; ``SliceDataset``/``SeriesDataset`` and
``collate_series`` feed training; ``headct.data.prepare.prepare`` builds a cache
(not re-exported here: the name would hide its module).
"""

from headct.data.cache import Cache
from headct.data.datasets import SeriesDataset, SliceDataset, collate_series

__all__ = ["Cache", "SeriesDataset", "SliceDataset", "collate_series"]
