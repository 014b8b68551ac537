"""DICOM trees in one read pass: stage every file resampled, then group and sort series.

Real datasets do not keep one series per folder (RSNA puts 750k slices in one
flat folder), so the series a file belongs to is known only from its header.
Reading headers first and pixels later would parse every file twice. Instead
each file is read once with :func:`headct.io.dicom.read_slice`, resampled to
the cache size at once, and staged: chunks of files become ``work/<chunk>.npy``
(small slices) plus ``work/<chunk>.json`` (UIDs, geometry, the salted patient
key; never a raw identifier, and no file path or name either: files are
numbered within their chunk, whose digest covers their names and content).
Series are then grouped from the staged headers and sorted by
:func:`headct.io.dicom.assemble_series` on the small slices.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from headct.data.cache import atomic_save_npy, atomic_write_text
from headct.data.resample import resample_slices
from headct.errors import InputError
from headct.io.discovery import file_fingerprint
from headct.io.privacy import short_hash

log = logging.getLogger(__name__)

CHUNK_FILES = 64


def chunk_digest(names: list[str], fingerprints: list[str], size: int) -> str:
    """Fingerprint of a chunk: its files' names and content (see ``file_fingerprint``) and the staged size."""
    return hashlib.sha256(json.dumps([size, names, fingerprints]).encode()).hexdigest()[:16]


def fingerprint_chunk(key: str, paths: list[str]) -> tuple[str, list[str]]:
    """``(key, file_fingerprint of each file)``: a top-level function, so the pool checks chunks in parallel."""
    return key, [file_fingerprint(path) for path in paths]


def stage_chunk(paths: list[str], names: list[str], work_dir: str, key: str, size: int) -> dict[str, Any]:
    """Read, resample and stage one chunk of files; returns (and writes) its record.

    A top-level function so a process pool can run it. The record numbers
    files by their ``index`` in ``paths`` (unusable ones become ``skipped``
    entries ``{index, reason}``) and keeps each file's content fingerprint and
    the chunk's :func:`chunk_digest`; ``names`` go into the digest only.
    """
    from headct.io.dicom import part10_bytes, read_slice

    fingerprints, slices, headers, skipped = [], [], [], []
    for index, path in enumerate(paths):
        data = part10_bytes(path)  # read once: the fingerprint is of the very bytes staged
        fingerprints.append(file_fingerprint(path, data))
        try:
            item = read_slice(path, data=data)
        except InputError as err:
            skipped.append({"index": index, "reason": err.fault})
            continue
        headers.append({
            "index": index, "row": len(slices), "sop": item.sop_uid, "series": item.series_uid,
            "study": item.study_uid, "patient": item.patient_key or "", "shape": list(item.hu.shape),
            "position": _list(item.position), "orientation": _list(item.orientation),
            "instance": item.instance_number, "pixel_spacing": _list(item.pixel_spacing),
            "thickness": item.slice_thickness, "warnings": item.warnings,
        })
        slices.append(resample_slices(item.hu[None], size)[0])
    work = Path(work_dir)
    if slices:
        atomic_save_npy(work / f"{key}.npy", np.stack(slices))
    record = {"key": key, "digest": chunk_digest(names, fingerprints, size), "fingerprints": fingerprints,
              "headers": headers, "skipped": skipped}
    atomic_write_text(work / f"{key}.json", json.dumps(record))
    return record


def read_chunk_record(work_dir: Path, key: str) -> dict[str, Any] | None:
    try:
        record = json.loads((Path(work_dir) / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or "fingerprints" not in record:
        return None  # another chunk's, or staged by a version that kept no fingerprints: stage again
    return record


def group_by_series(headers: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, str]]]:
    """Series UID (or a hash of study + folder, when a file has none) → its staged headers.

    A SOPInstanceUID seen again is skipped (in-memory entries name the file;
    what is written to the cache hashes names, see ``headct.data.prepare``).
    """
    series: dict[str, list[dict[str, Any]]] = {}
    seen: dict[str, str] = {}
    skipped = []
    for header in sorted(headers, key=lambda h: h["name"]):
        sop = header["sop"]
        if sop and sop in seen:
            skipped.append({"file": header["name"],
                            "reason": f"duplicate SOPInstanceUID (same slice as file {short_hash(seen[sop])})"})
            continue
        if sop:
            seen[sop] = header["name"]
        group = header["series"] or "no-series-uid-" + short_hash(f"{header['study'] or ''}|{Path(header['name']).parent}")
        series.setdefault(group, []).append(header)
    return series, skipped


def assemble_staged(headers: list[dict[str, Any]], work_dir: Path,
                    skipped: list[dict[str, str]]) -> tuple[np.ndarray, list[int], list[str]] | None:
    """Sort staged slices of one series: (pixels [S, size, size], header index per slice, warnings).

    Slices whose original size differs from the series' majority are dropped
    (one skipped entry each), as :func:`headct.io.dicom.assemble_series` does
    for full-size slices; it then orders the rest along the slice normal.
    """
    from headct.io.dicom import DicomSlice, assemble_series

    shapes = Counter(tuple(h["shape"]) for h in headers)
    majority = max(shapes, key=lambda s: (shapes[s], -next(i for i, h in enumerate(headers) if tuple(h["shape"]) == s)))
    kept = []
    for index, header in enumerate(headers):
        if tuple(header["shape"]) != majority:
            skipped.append({"file": header["name"], "reason": f"size {header['shape'][0]}x{header['shape'][1]} differs "
                                                              f"from the series' {majority[0]}x{majority[1]}"})
        else:
            kept.append(index)
    chunks: dict[str, np.ndarray] = {}
    slices = []
    for index in kept:
        header = headers[index]
        chunk = header["chunk"]
        if chunk not in chunks:
            chunks[chunk] = np.load(Path(work_dir) / f"{chunk}.npy", mmap_mode="r")
        slices.append(DicomSlice(
            hu=np.asarray(chunks[chunk][header["row"]]), sop_uid=header["sop"] or f"staged-{index}",
            series_uid=header["series"], study_uid=header["study"], patient_key=header["patient"] or None,
            position=_array(header["position"]), orientation=_array(header["orientation"]),
            instance_number=header["instance"], pixel_spacing=_tuple(header["pixel_spacing"]),
            slice_thickness=header["thickness"], warnings=list(header["warnings"]), path=header["name"],
        ))
    if not slices:
        return None
    errors: list[InputError] = []
    volume = assemble_series(slices, errors=errors)
    skipped += [{"file": err.path or "", "reason": err.fault} for err in errors]
    position = {s.sop_uid: kept[i] for i, s in enumerate(slices)}
    return volume.pixels, [position[uid] for uid in volume.slice_uids], volume.warnings


def _list(value: Any) -> list[float] | None:
    return None if value is None else [float(v) for v in value]


def _array(value: list[float] | None) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float64)


def _tuple(value: list[float] | None) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))
