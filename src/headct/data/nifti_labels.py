"""NIfTI volumes with a per-slice label CSV (``--format nifti``), e.g. PhysioNet CT-ICH.

Layout expected::

    INPUT/**/<patient>.nii[.gz]     one HU volume per patient or study; folders named
                                    ``masks`` are ignored (CT-ICH keeps its segmentations there)
    labels CSV                      ``--labels``; when omitted, hemorrhage_diagnosis_raw_ct.csv
                                    or the only *.csv in INPUT

The CSV has one row per slice: a patient column (``--patient-column``,
default PatientNumber or patient), a slice column (``--slice-column``, default
SliceNumber or slice) and one column per label (``--label-columns``, default
all the others, e.g. CT-ICH's Intraventricular, Intraparenchymal,
Subarachnoid, Epidural, Subdural, No_Hemorrhage, Fracture_Yes_No), 1/0, empty
for unknown. Label names are kept as written in the header.

A volume matches the rows whose patient value equals its file name without
``.nii``/``.nii.gz`` (as numbers when both are: ``049.nii`` is patient 49).
Slice numbers count along the file's third (stored slice) axis, from 1
(CT-ICH) or from 0 when the CSV has a slice 0; the cache holds slices in scan
order (inferior first, :func:`headct.io.read_nifti`) and maps them. Slices
without a row keep unknown labels; rows without a volume or slice are counted
and listed. The patient value is hashed before it is stored.
"""

from __future__ import annotations

import logging
from pathlib import Path

from headct.data.plan import Plan, SeriesJob, SliceSource, report_examples, series_key
from headct.data.tabular import (
    PATIENT_NAMES,
    SLICE_NAMES,
    TableColumns,
    label_vector,
    read_table,
    resolve_column,
)
from headct.errors import InputError
from headct.io.privacy import patient_key

log = logging.getLogger(__name__)

CT_ICH_LABELS_CSV = "hemorrhage_diagnosis_raw_ct.csv"
NIFTI_PATIENT_NAMES = ("patientnumber",) + PATIENT_NAMES
NIFTI_SLICE_NAMES = ("slicenumber",) + SLICE_NAMES


def volume_name(path: Path) -> str:
    """``049.nii.gz`` → ``049``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def match_key(value: str) -> str:
    """Patient values and volume names compare as integers when they are digits: "049" == "49"."""
    text = value.strip()
    return str(int(text)) if text.isdigit() else text


def find_nifti_labels(root: Path) -> Path | None:
    """CT-ICH's label file if present, else the only CSV directly in ``root``."""
    if (root / CT_ICH_LABELS_CSV).is_file():
        return root / CT_ICH_LABELS_CSV
    found = sorted(root.glob("*.csv"))
    return found[0] if len(found) == 1 else None


def plan_nifti(root: Path, labels_csv: Path | None, columns: TableColumns) -> Plan:
    """One job per volume, with its slice labels keyed by slice position."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "nifti input must be a folder of NIfTI volumes")
    volumes = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz"))
                     and "masks" not in p.relative_to(root).parts[:-1])
    if not volumes:
        raise InputError(root, "no .nii or .nii.gz volumes found")
    labels_csv = labels_csv or find_nifti_labels(root)
    label_names: list[str] = []
    by_patient: dict[str, dict[int, tuple[int, ...]]] = {}
    notes: dict[str, object] = {}
    if labels_csv is not None:
        label_names, by_patient, bad = _read_slice_labels(Path(labels_csv), columns)
        if bad:
            log.warning("%s: %d rows or values unusable (read as unknown or skipped): %s",
                        labels_csv, len(bad), report_examples(bad))
            notes["bad_label_values"] = len(bad)
    else:
        log.warning("%s: no label CSV given or found; the cache has no labels", root)

    jobs = []
    taken: set[str] = set()
    matched = set()
    for path in volumes:
        name = volume_name(path)
        key = match_key(name)
        frames = by_patient.get(key) if labels_csv is not None else None
        if frames is not None:
            matched.add(key)
        jobs.append(SeriesJob(
            key=series_key(name, taken), study=name, patient=patient_key(key) or "", series=name,
            sources=[SliceSource(path=str(path), name=path.relative_to(root).as_posix(), reader="nifti")],
            frame_labels=dict(frames or {}) if labels_csv is not None else None,
        ))
    missing = sorted(set(by_patient) - matched)
    if missing:
        rows = sum(len(by_patient[m]) for m in missing)
        log.warning("%d label rows name patients with no volume: %s", rows, report_examples(missing))
        notes.update(labels_without_images=rows, labels_without_images_examples=missing[:5])
    return Plan(source_format="nifti", kind="hu", label_names=label_names, jobs=jobs, notes=notes)


def _read_slice_labels(path: Path, columns: TableColumns
                       ) -> tuple[list[str], dict[str, dict[int, tuple[int, ...]]], list[str]]:
    if not path.is_file():
        raise InputError(path, "label CSV not found")
    header, rows = read_table(path)
    patient_col = resolve_column(header, columns.patient, NIFTI_PATIENT_NAMES, what="patient", source=path,
                                 required=True)
    slice_col = resolve_column(header, columns.slice, NIFTI_SLICE_NAMES, what="slice", source=path, required=True)
    if columns.labels is not None:
        label_names = [str(resolve_column(header, n, (), what="label", source=path)) for n in columns.labels]
    else:
        label_names = [n for n in header if n not in (patient_col, slice_col)]
    bad: list[str] = []
    numbered = []
    for line, row in enumerate(rows, start=2):
        try:
            number = int(float((row.get(slice_col) or "").strip()))
        except ValueError:
            bad.append(f"line {line}: slice {row.get(slice_col)!r}")
            continue
        numbered.append((match_key(row.get(patient_col) or ""), number, label_vector(row, label_names, line, bad)))
    base = 0 if any(number == 0 for _, number, _ in numbered) else 1
    by_patient: dict[str, dict[int, tuple[int, ...]]] = {}
    for patient, number, vector in numbered:
        by_patient.setdefault(patient, {})[number - base] = vector
    return label_names, by_patient, bad
