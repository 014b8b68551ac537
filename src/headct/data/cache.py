"""The prepared cache: per-series memory-mapped shards, an index and a meta file.

Layout (docs/internals.md, "The cache")::

    CACHE/
      meta.json          format_version, source_format, kind, size, labels, split {...}, summary {...}, has_masks
      index.csv          one row per slice, series by series in scan order
      shards/<key>.npy   one series [S, size, size], int16 HU or uint8; [S, C, size, size] uint8 when
                         meta.json lists C > 1 ``channels`` (several images per CSV row, e.g. brain, bone)
      shards/<key>.json  the shard's sidecar: its slice uids and sources, skipped files
      masks/<key>.npy    optional uint8 lesion bit flags, same shape as the shard
      work/              DICOM inputs: staged chunks (see headct.data.dicom_series); their
                         pixels are deleted once the build finishes, their headers kept

Every file is written to a temporary name and renamed into place, so a build
killed at any moment leaves only whole files. A shard counts as done once its
sidecar exists (the sidecar is written after the shard and its mask), which is
what lets ``headct prepare`` resume. ``index.csv`` and ``meta.json`` are
written last: a cache without ``meta.json`` is unfinished.

:class:`Cache` reads it back for training: the index as numpy columns, slices
as views into memory-mapped shards (a bounded number of shards kept open).
"""

from __future__ import annotations

import csv
import io
import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headct import atomic
from headct.atomic import write_text as atomic_write_text  # the name the cache builders import
from headct.errors import InputError

FORMAT_VERSION = 1
INDEX_COLUMNS: tuple[str, ...] = (
    "row", "study", "patient", "series", "slice_index", "uid", "shard", "offset", "split", "fold",
)
_INT_COLUMNS = ("row", "slice_index", "offset", "fold")


# --- writing ---------------------------------------------------------------

def write_shard(cache_dir: Path, key: str, pixels: np.ndarray | None, masks: np.ndarray | None,
                record: dict[str, Any]) -> None:
    """Write one series: shard, then its mask, then the sidecar that marks it done."""
    cache_dir = Path(cache_dir)
    if pixels is not None:
        atomic_save_npy(cache_dir / "shards" / f"{key}.npy", pixels)
    if masks is not None:
        atomic_save_npy(cache_dir / "masks" / f"{key}.npy", masks)
    atomic_write_text(cache_dir / "shards" / f"{key}.json", json.dumps(record))


def read_record(cache_dir: Path, key: str) -> dict[str, Any] | None:
    """The sidecar of a finished shard, or None when the shard is missing, partial or unreadable."""
    sidecar = Path(cache_dir) / "shards" / f"{key}.json"
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    if record.get("slices", 0):
        try:
            shape = np.load(Path(cache_dir) / "shards" / f"{key}.npy", mmap_mode="r").shape
            if record.get("has_mask"):
                if np.load(Path(cache_dir) / "masks" / f"{key}.npy", mmap_mode="r").shape != shape:
                    return None
        except (OSError, ValueError):
            return None
        if shape[0] != record["slices"] or len(record.get("uids", ())) != shape[0]:
            return None
    return record


def write_index(cache_dir: Path, columns: dict[str, Sequence[Any]], label_names: Sequence[str]) -> None:
    """Write index.csv: the fixed columns then one column per label (1, 0, or -1 unknown)."""
    names = list(INDEX_COLUMNS) + list(label_names)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    writer.writerows(zip(*(columns[name] for name in names), strict=True))
    atomic_write_text(Path(cache_dir) / "index.csv", buffer.getvalue())


def write_meta(cache_dir: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(Path(cache_dir) / "meta.json", json.dumps(meta, indent=2))


def remove_stale_temporaries(cache_dir: Path) -> int:
    """Delete temporary files a killed build left behind; returns how many."""
    removed = 0
    for folder in (Path(cache_dir), *(Path(cache_dir) / name for name in ("shards", "masks", "work"))):
        if folder.is_dir():
            for path in folder.glob(f"*{atomic.TEMP_MARK}*"):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`headct.atomic.writing` (a handle: np.save would add ".npy" to a path)."""
    with atomic.writing(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


# --- reading ---------------------------------------------------------------

class Cache:
    """A prepared cache, opened for reading.

    ``index`` holds the index.csv columns as numpy arrays (ints for row,
    slice_index, offset, fold and the labels; str otherwise); ``label_matrix``
    is the labels as int8 ``[N, L]``. Slices come back as read-only views of
    memory-mapped shards; at most ``max_open`` shards stay mapped at once.
    """

    def __init__(self, path: str | Path, *, max_open: int = 128) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise InputError(self.path, "no meta.json: not a cache, or `headct prepare` did not finish")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise InputError(self.path, f"cache format {self.meta.get('format_version')} is not {FORMAT_VERSION}; "
                                        "run `headct prepare` again")
        self.labels: list[str] = list(self.meta.get("labels", []))
        self.index = _read_index(self.path / "index.csv", self.labels)
        self.label_matrix = (np.stack([self.index[name] for name in self.labels], axis=1).astype(np.int8)
                             if self.labels else np.zeros((len(self), 0), dtype=np.int8))
        self.max_open = max_open
        self._open: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def channels(self) -> int:
        """8-bit images per slice: 1, or C for a cache of C-channel shards ``[S, C, H, W]``."""
        return len(self.meta.get("channels") or []) or 1

    @property
    def has_masks(self) -> bool:
        return bool(self.meta.get("has_masks"))

    def __len__(self) -> int:
        return int(self.index["row"].shape[0])

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row numbers of one split (train | val | test), or of all rows."""
        if split is None:
            return self.index["row"].copy()
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test; got {split!r}")
        return self.index["row"][self.index["split"] == split]

    def slice(self, row: int) -> np.ndarray:
        """One slice ``[H, W]`` (int16 HU or uint8; ``[C, H, W]`` in a C-channel cache), a memory-mapped view."""
        return self.series_slices(str(self.index["shard"][row]))[int(self.index["offset"][row])]

    def series_slices(self, shard: str) -> np.ndarray:
        """All slices of one series ``[S, H, W]`` (``[S, C, H, W]`` in a C-channel cache), scan order, mapped."""
        return self._mapped("shards", shard)

    def series_rows(self, shard: str) -> np.ndarray:
        """The index rows of one series, in scan order."""
        if not hasattr(self, "_rows_by_shard"):
            shards = self.index["shard"]
            order = np.lexsort((self.index["offset"], shards))
            names, starts = np.unique(shards[order], return_index=True)
            bounds = list(starts) + [len(order)]
            self._rows_by_shard = {str(n): order[bounds[i]:bounds[i + 1]] for i, n in enumerate(names)}
        return self._rows_by_shard[shard]

    def mask(self, row: int) -> np.ndarray | None:
        """Lesion bit flags ``[H, W]`` for one slice, or None when the cache has no masks for it."""
        shard = str(self.index["shard"][row])
        if not self.has_masks or not (self.path / "masks" / f"{shard}.npy").is_file():
            return None
        return self._mapped("masks", shard)[int(self.index["offset"][row])]

    def _mapped(self, folder: str, shard: str) -> np.ndarray:
        key = (folder, shard)
        array = self._open.get(key)
        if array is None:
            array = np.load(self.path / folder / f"{shard}.npy", mmap_mode="r")
            self._open[key] = array
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(key)
        return array

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy: send the index, not the mapped shards.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


def display_plane(pixels: np.ndarray) -> np.ndarray:
    """The ``[H, W]`` plane drawn under a heatmap: the slice itself, or a multi-image slice's first
    channel (its first window, e.g. brain, as with HU slices)."""
    pixels = np.asarray(pixels)
    return pixels[0] if pixels.ndim == 3 else pixels


def _read_index(path: Path, label_names: Iterable[str]) -> dict[str, np.ndarray]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        values = list(zip(*reader, strict=True)) or [()] * len(header)
    columns = dict(zip(header, values, strict=True))
    ints = set(_INT_COLUMNS) | set(label_names)
    return {name: (np.asarray(col, dtype=np.int64) if name in ints else np.asarray(col, dtype=str))
            for name, col in columns.items()}
