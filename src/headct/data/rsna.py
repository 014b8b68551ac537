"""DICOM folders, with or without an RSNA-format label CSV (``--format rsna`` / ``dicom``).

Layout expected::

    INPUT/                 any tree of DICOM files (one flat folder, or a folder per study/series);
                           series and studies are grouped from the headers, not the folders
    INPUT/masks/<StudyInstanceUID>.npz   optional lesion masks (``uids``, ``masks`` uint8 bit flags)
    labels CSV             ``--labels``; for rsna, when omitted, the only *.csv in INPUT

The label CSV is the RSNA 2019 one: a header ``ID,Label`` and one row per slice
and subtype, ``ID_<SOPInstanceUID>_<subtype>,<0|1>`` with subtypes epidural,
intraparenchymal, intraventricular, subarachnoid, subdural, any. The real RSNA
files set SOPInstanceUID itself to ``ID_<hex>`` (rows read ``ID_<hex>_any``);
dotted UIDs appear as ``ID_1.2.3_any``. Both match. A subtype row missing for
a slice leaves that label unknown (-1). ``--format dicom`` is the same reader
without labels (for prediction or a cache to label later); given ``--labels``
it reads them as above.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headct.data.dicom_series import group_by_series
from headct.data.plan import (
    Plan,
    SeriesJob,
    SliceSource,
    relative_name,
    report_examples,
    series_key,
)
from headct.errors import InputError
from headct.io.discovery import find_dicom_files
from headct.labels import RSNA_LABELS

log = logging.getLogger(__name__)

Stager = Callable[[list[Path], Path], tuple[list[dict[str, Any]], list[dict[str, str]]]]


def read_rsna_labels(path: str | Path) -> tuple[dict[str, list[int]], list[str]]:
    """RSNA label CSV → ({image id (``ID_...``): 6 labels, -1 where a row is missing}, bad rows).

    Raises InputError when the file is missing or has no ID/Label columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "label CSV not found")
    labels: dict[str, list[int]] = {}
    bad: list[str] = []
    position = {name: i for i, name in enumerate(RSNA_LABELS)}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"ID", "Label"} <= set(reader.fieldnames):
            raise InputError(path, f"RSNA label CSV needs columns ID,Label; found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            image_id, _, subtype = (row["ID"] or "").strip().rpartition("_")
            value = (row["Label"] or "").strip()
            if not image_id.startswith("ID_") or subtype not in position or value not in ("0", "1"):
                bad.append(f"line {line}")
                continue
            labels.setdefault(image_id, [-1] * len(RSNA_LABELS))[position[subtype]] = int(value)
    return labels, bad


def lookup_rsna(labels: dict[str, list[int]], sop_uid: str) -> str | None:
    """The label-CSV image id of a slice: its SOPInstanceUID itself (``ID_<hex>``) or ``ID_`` + UID."""
    if sop_uid in labels:
        return sop_uid
    prefixed = f"ID_{sop_uid}"
    return prefixed if prefixed in labels else None


def find_label_csv(root: Path) -> Path | None:
    """The only CSV directly inside ``root``, if there is exactly one."""
    found = sorted(root.glob("*.csv")) if root.is_dir() else []
    return found[0] if len(found) == 1 else None


def plan_dicom(root: Path, labels_csv: Path | None, stage: Stager, *, source_format: str) -> Plan:
    """Read a DICOM tree once (``stage`` reads and resamples, possibly in parallel); one job per series."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, "input not found")
    base = root if root.is_dir() else root.parent
    found = find_dicom_files(root)
    refused = [{"file": relative_name(Path(err.path or root), base), "reason": err.fault} for err in found.refused]
    headers, skipped = stage(found.files, base)
    skipped = refused + skipped
    series, duplicates = group_by_series(headers)
    skipped += duplicates

    labels: dict[str, list[int]] | None = None
    notes: dict[str, object] = {}
    if labels_csv is not None:
        labels, bad_rows = read_rsna_labels(labels_csv)
        if bad_rows:
            log.warning("%s: %d label rows not of the form ID_<uid>_<subtype>,<0|1>: %s",
                        labels_csv, len(bad_rows), report_examples(bad_rows))
            notes["bad_label_rows"] = len(bad_rows)

    jobs: list[SeriesJob] = []
    taken: set[str] = set()
    matched: set[str] = set()
    masks_dir = base / "masks"
    for group in sorted(series):
        items = series[group]
        first = items[0]
        sources = []
        for item in items:
            vector = None
            if labels is not None:
                image_id = lookup_rsna(labels, item["sop"])
                if image_id is not None:
                    matched.add(image_id)
                    vector = tuple(labels[image_id])
            sources.append(SliceSource(path=item["path"], name=item["name"], reader="staged", labels=vector,
                                       uid=item["sop"], header=item))
        study = first["study"] or group
        mask = masks_dir / f"{study}.npz"
        jobs.append(SeriesJob(
            key=series_key(first["series"] or group, taken), study=study, patient=first["patient"],
            series=first["series"] or group, sources=sources, assemble=True,
            mask_file=str(mask) if mask.is_file() else None,
        ))

    if labels is not None:
        missing = sorted(set(labels) - matched)
        if missing:
            log.warning("%d labelled images (ID_<uid>) are not in %s: %s", len(missing), root,
                        report_examples(missing))
        notes.update(labels_without_images=len(missing), labels_without_images_examples=missing[:5])
    return Plan(source_format=source_format, kind="hu", label_names=list(RSNA_LABELS) if labels is not None else [],
                jobs=jobs, skipped=skipped, notes=notes)
