"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RSNA-style cache (see :func:`_tiny_cache`), one per test module."""
    return _tiny_cache(tmp_path_factory.mktemp("cache"))


def _tiny_cache(path: Path, n_series: int = 20, slices: int = 6, size: int = 32) -> Path:
    """A small RSNA-style cache: half the series have a bright intraparenchymal blob on slices 1..3."""
    from headct.data.cache import (
        FORMAT_VERSION,
        INDEX_COLUMNS,
        write_index,
        write_meta,
        write_shard,
    )

    rng = np.random.default_rng(0)
    labels = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    columns: dict[str, list] = {k: [] for k in (*INDEX_COLUMNS, *labels)}
    splits = ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    yy, xx = np.mgrid[:size, :size]
    head = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    for s in range(n_series):
        key = f"s{s:03d}"
        pixels = np.full((slices, size, size), -1000, np.int16)
        pixels[:, head] = 30
        pixels += rng.normal(0, 5, pixels.shape).astype(np.int16)
        for k in range(slices):
            label = [0] * 6
            if s % 2 == 0 and 1 <= k <= 3:
                cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
                pixels[k][(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = 75
                label[1] = label[5] = 1
            values = (len(columns["row"]), f"study{s}", "", f"series{s}", k, f"uid{s}.{k}", key, k, splits[s], -1)
            for name, value in zip((*INDEX_COLUMNS, *labels), (*values, *label), strict=True):
                columns[name].append(value)
        write_shard(path, key, pixels, None, {"key": key, "slices": slices,
                                              "uids": [f"uid{s}.{k}" for k in range(slices)]})
    write_index(path, columns, labels)
    write_meta(path, {"format_version": FORMAT_VERSION, "source_format": "rsna", "kind": "hu", "size": size,
                      "labels": labels, "summary": {}, "has_masks": False,
                      "split": {"how": "study", "seed": 0, "n_train": 12, "n_val": 4, "n_test": 4}})
    return path
