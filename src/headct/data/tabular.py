"""A CSV that lists images and their labels (``--format csv``).

Layout expected: INPUT is a CSV file with a header; one row per image::

    path,patient,study,slice,hemorrhage,fracture
    scans/a/001.dcm,P7,,1,0,1
    scans/a/002.png,P7,,2,1,,

Columns (flags of ``headct prepare``; names are matched case-insensitively):

- ``--path-column`` (default: the first of path, image, file, filename,
  filepath, image_path): the image, relative to the CSV's folder. PNG or JPG
  (8-bit; cache kind uint8) or DICOM (anything else; kind hu). One
  cache holds one kind: rows of the minority kind are skipped.
  Several columns (``--path-column brain,bone``: data sets that ship each
  window as its own pre-windowed image, as PhysioNet CT-ICH does) make one
  slice of C 8-bit images, the cache's C channels in column order; every
  image of such a row must be a PNG/JPG, and a row with a missing, empty or
  (when read) unusable image is skipped as a whole, named by its line.
- ``--patient-column`` (default: patient, patient_id, patientid,
  patientnumber): optional; hashed with the site salt, never stored raw.
- ``--study-column`` (default: study, study_id, studyinstanceuid): optional.
- ``--slice-column`` (default: slice, slice_index, slicenumber,
  slice_number, instance): optional slice order within a study.
- ``--label-columns a,b,c`` (default: every other column): 1/0 (also
  true/false, yes/no, 1.0/0.0); empty means unknown (-1).

Rows are grouped into studies by the study column, else the patient column,
else each image is its own study (split by image). Within a study, slices
follow the slice column, else the CSV order. Study values are kept as given
(use UIDs or codes, not accession numbers); patient values are only hashed.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from headct.data.plan import Plan, SeriesJob, SliceSource, report_examples, series_key
from headct.errors import InputError
from headct.io.png import IMAGE_SUFFIXES
from headct.io.privacy import patient_key

log = logging.getLogger(__name__)

PATH_NAMES = ("path", "image", "file", "filename", "filepath", "image_path")
PATIENT_NAMES = ("patient", "patient_id", "patientid", "patientnumber", "patient_number")
STUDY_NAMES = ("study", "study_id", "studyinstanceuid", "study_uid")
SLICE_NAMES = ("slice", "slice_index", "slicenumber", "slice_number", "instance")
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


@dataclass
class TableColumns:
    """Which CSV columns hold what; None picks the first present default name."""

    path: str | None = None  # one column, or several separated by commas (one 8-bit channel each)
    patient: str | None = None
    study: str | None = None
    slice: str | None = None
    labels: list[str] | None = None


def parse_label(value: str | None) -> int | None:
    """'1'/'true'/'yes' → 1, '0'/'false'/'no' → 0, '' → -1; anything else → None (bad value)."""
    text = (value or "").strip().lower()
    if text == "":
        return -1
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    return None


def label_vector(row: dict[str, str], label_names: list[str], line: int, bad: list[str]) -> tuple[int, ...]:
    """One row's labels in ``label_names`` order; a bad value reads as -1 (unknown) and is noted in ``bad``."""
    vector = []
    for name in label_names:
        value = parse_label(row.get(name))
        if value is None:
            bad.append(f"line {line}: {name}={row.get(name)!r}")
            value = -1
        vector.append(value)
    return tuple(vector)


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV's header and rows (as dicts)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def resolve_column(header: list[str], given: str | None, defaults: tuple[str, ...], *, what: str,
                   source: Path, required: bool = False) -> str | None:
    """The header name for a role: the one given (must exist), else the first default present."""
    lower = {name.strip().lower(): name for name in header}
    if given is not None:
        if given.strip().lower() not in lower:
            raise InputError(source, f"no {what} column {given!r}; columns are {header}")
        return lower[given.strip().lower()]
    for name in defaults:
        if name in lower:
            return lower[name]
    if required:
        raise InputError(source, f"no {what} column (tried {', '.join(defaults)}); name it with --{what}-column")
    return None


def plan_csv(csv_path: Path, columns: TableColumns) -> Plan:
    """One job per study (or per image); rows whose file is missing are skipped."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(csv_path, "CSV not found")
    header, rows = read_table(csv_path)
    path_cols = path_columns(header, columns.path, csv_path)
    patient_col = resolve_column(header, columns.patient, PATIENT_NAMES, what="patient", source=csv_path)
    study_col = resolve_column(header, columns.study, STUDY_NAMES, what="study", source=csv_path)
    slice_col = resolve_column(header, columns.slice, SLICE_NAMES, what="slice", source=csv_path)
    roles = {*path_cols, patient_col, study_col, slice_col} - {None}
    if columns.labels is not None:
        label_cols = [resolve_column(header, name, (), what="label", source=csv_path) for name in columns.labels]
    else:
        label_cols = [name for name in header if name not in roles]
    label_names = [str(name) for name in label_cols]

    base = csv_path.parent
    skipped: list[dict[str, str]] = []
    bad_values: list[str] = []
    entries = []  # (group, patient key, order, source, the row's first image relative to the CSV)
    for line, row in enumerate(rows, start=2):
        found = _row_images(row, path_cols, base, f"{csv_path.name} line {line}", skipped)
        if found is None:
            continue
        vector = label_vector(row, label_names, line, bad_values)
        patient_raw = (row.get(patient_col) or "").strip() if patient_col else ""
        pkey = (patient_key(patient_raw) or "") if patient_raw else ""
        study_raw = (row.get(study_col) or "").strip() if study_col else ""
        group = study_raw or (f"p-{pkey}" if pkey else "")
        order = _order(row.get(slice_col) if slice_col else None, line)
        entries.append((group, pkey, order, _row_source(found, f"{csv_path.name} line {line}", vector), found[0][1]))
    if bad_values:
        log.warning("%s: %d label values are not 1/0/true/false/yes/no/empty (read as unknown): %s",
                    csv_path, len(bad_values), report_examples(bad_values))

    kinds = [entry[3].reader for entry in entries]
    reader_kind = "images" if len(path_cols) > 1 else (max(("dicom", "image"), key=kinds.count) if kinds else "image")
    kept = []
    for entry in entries:
        if entry[3].reader != reader_kind:
            skipped.append({"file": entry[3].name,
                            "reason": f"{entry[3].reader} file in a cache of {reader_kind} files"})
        else:
            kept.append(entry)

    grouped: dict[str, list[tuple[str, tuple[float, int], SliceSource, str]]] = {}
    for group, pkey, order, source, first in kept:
        grouped.setdefault(group or f"image:{first}", []).append((pkey, order, source, first))
    jobs: list[SeriesJob] = []
    taken: set[str] = set()
    for group in sorted(grouped):
        members = sorted(grouped[group], key=lambda m: m[1])
        sources = [m[2] for m in members]
        stems = [Path(m[3]).stem for m in members]
        for i, source in enumerate(sources):  # DICOM slices get their SOPInstanceUID when read
            source.uid = stems[i] if len(set(stems)) == len(stems) else f"{stems[i]}_{i:04d}"
        study = group[len("image:"):] if group.startswith("image:") else group
        patient = next((m[0] for m in members if m[0]), "")
        jobs.append(SeriesJob(key=series_key(study, taken), study=study, patient=patient, series=study,
                              sources=sources))
    notes = {"bad_label_values": len(bad_values)} if bad_values else {}
    return Plan(source_format="csv", kind="hu" if reader_kind == "dicom" else "uint8", label_names=label_names,
                jobs=jobs, skipped=skipped, image_level=study_col is None and patient_col is None, notes=notes,
                channels=path_cols if len(path_cols) > 1 else None)


def path_columns(header: list[str], given: str | None, source: Path) -> list[str]:
    """The image column(s): ``--path-column`` split at commas (each must exist, none twice), else the default."""
    names = [name.strip() for name in (given or "").split(",") if name.strip()]
    if not names:
        return [str(resolve_column(header, None, PATH_NAMES, what="path", source=source, required=True))]
    resolved = [str(resolve_column(header, name, (), what="path", source=source)) for name in names]
    if len(set(resolved)) != len(resolved):
        raise InputError(source, f"--path-column names a column twice: {given!r}")
    return resolved


def _row_images(row: dict[str, str], path_cols: list[str], base: Path, where: str,
                skipped: list[dict[str, str]]) -> list[tuple[str, str, Path]] | None:
    """(column, relative path, file) of each image of a row; None (and a ``skipped`` entry) when one is unusable.

    One column keeps its historical entries (naming the image); several name the row and the column.
    """
    found = []
    several = len(path_cols) > 1
    for column in path_cols:
        rel = (row.get(column) or "").strip()
        file = (base / rel) if not Path(rel).is_absolute() else Path(rel)
        if not rel:
            fault = f"empty {column} path" if several else "empty path"
        elif not file.is_file():
            fault = f"no {column} image (row skipped)" if several else "label row for a missing image"
        elif several and file.suffix.lower() not in IMAGE_SUFFIXES:
            fault = f"{column} image is not a PNG/JPG (several images per row are 8-bit channels; row skipped)"
        else:
            found.append((column, rel, file))
            continue
        skipped.append({"file": where if several or not rel else rel, "reason": fault})
        return None
    return found


def _row_source(found: list[tuple[str, str, Path]], where: str, labels: tuple[int, ...]) -> SliceSource:
    """One slice from a row's image(s): the file itself, or (several columns) its C images as channels."""
    if len(found) > 1:
        return SliceSource(path=str(found[0][2]), name=where, reader="images", labels=labels,
                           channels=[(column, str(file)) for column, _, file in found])
    _, rel, file = found[0]
    reader_name = "image" if file.suffix.lower() in IMAGE_SUFFIXES else "dicom"
    return SliceSource(path=str(file), name=rel, reader=reader_name, labels=labels)


def _order(value: str | None, line: int) -> tuple[float, int]:
    try:
        return (float(value), line) if value not in (None, "") else (float(line), line)
    except ValueError:
        return (float(line), line)
