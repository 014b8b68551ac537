"""Group a folder of DICOM files into series by their headers (no pixels read).

Real datasets do not keep one series per folder (RSNA puts 750k slices in one
flat folder), so a cache build first reads every header up to the pixel data
to learn SOP, series and study UIDs, then hands each series to one worker.
The PatientID is hashed at once (:func:`headct.io.privacy.patient_key`) and
never kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from headct.io.privacy import patient_key

log = logging.getLogger(__name__)

NOT_DICOM_SUFFIXES = frozenset({
    ".csv", ".npz", ".npy", ".json", ".txt", ".md", ".html", ".yaml", ".yml", ".png", ".jpg",
    ".jpeg", ".nii", ".gz", ".zip", ".py", ".pdf",
})


@dataclass
class ScannedFile:
    """What the header says about one DICOM file."""

    path: str
    name: str
    sop_uid: str
    series_uid: str | None
    study_uid: str | None
    patient: str  # salted hash of PatientID, "" when absent


def list_dicom_candidates(root: Path, *, skip_dirs: tuple[str, ...] = ("masks",)) -> list[Path]:
    """Every file under ``root`` that may be DICOM, sorted; a single file is its own list."""
    if root.is_file():
        return [root]
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or (rel.parts and rel.parts[0] in skip_dirs):
            continue
        if path.is_file() and path.suffix.lower() not in NOT_DICOM_SUFFIXES:
            files.append(path)
    return sorted(files)


def scan_headers(paths: list[str], root: str) -> tuple[list[ScannedFile], list[dict[str, str]]]:
    """Read the headers of ``paths``; returns the usable files and ``{file, reason}`` for the rest.

    A top-level function so a process pool can run it on chunks of files.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    scanned, skipped = [], []
    base = Path(root)
    for path in paths:
        name = _relative(Path(path), base)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped.append({"file": name, "reason": "not a DICOM file"})
            continue
        except Exception as err:  # pydicom raises many types on damaged files
            skipped.append({"file": name, "reason": f"unreadable DICOM header ({type(err).__name__})"})
            continue
        sop = str(ds.get("SOPInstanceUID", "") or "").strip()
        modality = str(ds.get("Modality", "") or "").strip().upper()
        if not sop:
            skipped.append({"file": name, "reason": "no SOPInstanceUID"})
        elif modality and modality != "CT":
            skipped.append({"file": name, "reason": f"modality {modality}, not CT"})
        else:
            scanned.append(ScannedFile(
                path=str(path), name=name, sop_uid=sop,
                series_uid=_text(ds.get("SeriesInstanceUID")), study_uid=_text(ds.get("StudyInstanceUID")),
                patient=patient_key(_text(ds.get("PatientID"))) or "",
            ))
    return scanned, skipped


def group_by_series(scanned: list[ScannedFile]) -> tuple[dict[str, list[ScannedFile]], list[dict[str, str]]]:
    """Series UID (or folder, when a file has none) → its files; later copies of a SOP UID are skipped."""
    series: dict[str, list[ScannedFile]] = {}
    seen: dict[str, str] = {}
    skipped = []
    for item in sorted(scanned, key=lambda s: s.name):
        if item.sop_uid in seen:
            skipped.append({"file": item.name, "reason": f"duplicate SOPInstanceUID (same slice as {seen[item.sop_uid]})"})
            continue
        seen[item.sop_uid] = item.name
        group = item.series_uid or f"{item.study_uid or ''}|{Path(item.name).parent}"
        series.setdefault(group, []).append(item)
    return series, skipped


def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _relative(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return path.name
    return path.name if rel in ("", ".") else rel
