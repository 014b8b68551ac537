"""Studies the server predicted, kept for the viewer: a temporary folder with a time limit.

Each result gets a random id (never the StudyInstanceUID, never a file name).
Under ``root/<id>/`` lie the prediction JSON, the analysed series as int16 HU
(``volume.nii``: the browser's image, and what Grad-CAM reads back) and, once
asked for, Grad-CAM volumes per class (``cam-<n>.nii``, 0..1 stored as uint8).
Nothing of the DICOM header is kept beyond what the prediction JSON already
holds, so no patient identifier is stored or shown. Results older than
``ttl_s``, and the oldest beyond ``max_results`` or ``max_bytes`` on disk, are
deleted; the folder goes when the store closes.

The NIfTI files carry an RAS affine built from the series' spacing (DICOM
columns run to the patient's left, rows to the back, slices feet to head), so
Niivue draws them as a DICOM viewer would with its radiological convention.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from headct import atomic
from headct.io.volume import Volume

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
VOLUME_FILE = "volume.nii"
_ID_BYTES = 12

MapFunction = Callable[[Volume, str, "Sequence[int] | None"], np.ndarray]
"""``(volume, label, positions or None for all) -> maps [n, H, W]`` in 0..1 (``Predictor.class_maps``)."""


@dataclass(frozen=True)
class StoredResult:
    """One stored result: its id, when it was stored, its folder and its prediction JSON."""

    id: str
    created: float
    folder: Path
    result: dict[str, Any]
    series: str | None = None
    """SeriesInstanceUID of the series kept (the study's longest): the viewer shows its slices."""

    def summary(self) -> dict[str, Any]:
        """What the viewer's study picker lists: no identifiers, just what was found."""
        return {
            "id": self.id,
            "created": round(self.created, 3),
            "series": self.series,
            "slices": len(self.result.get("slices", [])),
            "study_positive": self.result.get("study_positive", []),
            "study_probabilities": self.result.get("study_probabilities", {}),
        }


class ResultStore:
    """Predicted studies kept for ``ttl_s`` seconds (at most ``max_results``) under a temporary folder."""

    def __init__(self, ttl_s: float = 3600.0, max_results: int = 20, max_bytes: int = 2 * 2**30,
                 root: Path | None = None) -> None:
        self.ttl_s = float(ttl_s)
        self.max_results = int(max_results)
        self.max_bytes = int(max_bytes)
        self.root = Path(tempfile.mkdtemp(prefix="headct-results-", dir=root))
        self._results: dict[str, StoredResult] = {}
        self._lock = threading.Lock()
        self._cam_locks: dict[tuple[str, str], threading.Lock] = {}

    def add(self, result: dict[str, Any], volume: Volume) -> str:
        """Store a prediction and the series it shows; returns the new result id."""
        result_id = secrets.token_urlsafe(_ID_BYTES)
        folder = self.root / result_id
        folder.mkdir()
        atomic.write_text(folder / RESULT_FILE, json.dumps(result) + "\n")
        write_nifti(folder / VOLUME_FILE, volume.pixels, volume_affine(volume))
        with self._lock:
            self._results[result_id] = StoredResult(result_id, time.time(), folder, result, volume.series_uid)
        self.purge()
        return result_id

    def get(self, result_id: str) -> StoredResult | None:
        """The stored result, or None when unknown or expired."""
        self.purge()
        with self._lock:
            return self._results.get(result_id)

    def listing(self) -> list[dict[str, Any]]:
        """Summaries of the results still kept, newest first."""
        self.purge()
        with self._lock:
            stored = sorted(self._results.values(), key=lambda r: r.created, reverse=True)
        return [r.summary() for r in stored]

    def cam_path(self, stored: StoredResult, label: str, compute: MapFunction, only: int | None = None) -> Path:
        """The Grad-CAM NIfTI of ``label``, computed once by ``compute(volume, label, positions)``.

        With ``only`` (a slice index) and no full volume yet: a one-slice NIfTI of
        that slice's map, placed by its affine where the slice lies (Niivue reslices
        overlays into the series' space), so the viewer draws its first slice with an
        overlay in a fraction of the time, and bytes, the whole series takes.
        """
        number = list(stored.result["model"]["labels"]).index(label)
        full = stored.folder / f"cam-{number}.nii"
        slices = nib.load(stored.folder / VOLUME_FILE).shape[2]
        if only is not None and not 0 <= only < slices:
            raise ValueError(f"slice {only} is outside the series' {slices} slices")
        if full.is_file() or only is None:
            return self._computed(stored, full, lambda volume: compute(volume, label, None))
        return self._computed(stored, stored.folder / f"cam-{number}-slice-{only}.nii",
                              lambda volume: compute(volume, label, [only]), first_slice=only)

    def _computed(self, stored: StoredResult, path: Path, maps_of: Callable[[Volume], np.ndarray],
                  first_slice: int = 0) -> Path:
        """``path``, written from ``maps_of(volume)`` (maps from slice ``first_slice`` on) by the first caller."""
        with self._lock:
            lock = self._cam_locks.setdefault((stored.id, path.name), threading.Lock())
        with lock:
            if not path.is_file():
                image = nib.load(stored.folder / VOLUME_FILE)
                hu = np.transpose(np.asarray(image.dataobj, dtype=np.int16), (2, 1, 0))
                maps = np.clip(maps_of(Volume(np.ascontiguousarray(hu), kind="hu")), 0.0, 1.0).astype(np.float32)
                affine = np.asarray(image.affine).copy()
                affine[:3, 3] += affine[:3, 2] * first_slice  # the maps' first slice lies there
                write_nifti(path, maps, affine, np.uint8)
        return path

    def purge(self) -> None:
        """Delete results past their time limit, and the oldest beyond ``max_results`` or ``max_bytes``."""
        now = time.time()
        with self._lock:
            by_age = sorted(self._results.values(), key=lambda r: r.created, reverse=True)
            kept_bytes, doomed = 0, []
            for i, stored in enumerate(by_age):
                kept_bytes += _folder_bytes(stored.folder)
                if now - stored.created > self.ttl_s or i >= self.max_results or (i and kept_bytes > self.max_bytes):
                    doomed.append(stored)
            for stored in doomed:
                del self._results[stored.id]
                for key in [k for k in self._cam_locks if k[0] == stored.id]:
                    del self._cam_locks[key]
        for stored in doomed:
            shutil.rmtree(stored.folder, ignore_errors=True)

    def close(self) -> None:
        """Delete every kept result and the folder."""
        with self._lock:
            self._results.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def volume_affine(volume: Volume) -> np.ndarray:
    """RAS affine of a series stored as NIfTI ``[W, H, S]`` (x = column, y = row, z = scan order)."""
    row_mm, col_mm = volume.pixel_spacing or (1.0, 1.0)
    slice_mm = volume.slice_spacing or 1.0
    # DICOM: columns run to the patient's left (-x in RAS), rows to the back (-y), slices feet to head (+z)
    return np.diag([-float(col_mm), -float(row_mm), float(slice_mm), 1.0])


def write_nifti(path: Path, stack: np.ndarray, affine: np.ndarray, dtype: Any = None) -> None:
    """A ``[S, H, W]`` stack as NIfTI-1 ``[W, H, S]`` with ``affine``, written atomically.

    With ``dtype`` (uint8 for the 0..1 maps) nibabel stores the values scaled into
    it, the slope and intercept in the header, so a reader gets the values back.
    """
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(stack, (2, 1, 0))), affine)
    if dtype is not None:
        image.set_data_dtype(dtype)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    atomic.write_bytes(path, image.to_bytes())


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0
