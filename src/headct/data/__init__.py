"""Datasets, labels, splits and the prepared cache (``headct prepare``).

``Cache`` reads a prepared cache; ``SliceDataset``/``SeriesDataset`` and
``collate_series`` feed training; ``prepare`` builds a cache.
"""

from headct.data.cache import Cache
from headct.data.datasets import SeriesDataset, SliceDataset, collate_series
from headct.data.prepare import PrepareConfig, prepare

__all__ = ["Cache", "PrepareConfig", "SeriesDataset", "SliceDataset", "collate_series", "prepare"]
