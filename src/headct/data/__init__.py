"""Datasets, labels, splits and the prepared cache (``headct prepare``).

``Cache`` reads a prepared cache; ``SliceDataset``/``SeriesDataset`` and
``collate_series`` feed training; ``prepare`` builds a cache. Imported lazily
so ``import headct.data`` stays light.
"""

from __future__ import annotations

__all__ = ["Cache", "PrepareConfig", "SeriesDataset", "SliceDataset", "collate_series", "prepare"]

_WHERE = {
    "Cache": "headct.data.cache",
    "SliceDataset": "headct.data.datasets",
    "SeriesDataset": "headct.data.datasets",
    "collate_series": "headct.data.datasets",
    "PrepareConfig": "headct.data.prepare",
    "prepare": "headct.data.prepare",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'headct.data' has no attribute {name!r}")
