"""CT DICOM to Hounsfield units: one slice fast, a series sorted along its normal, folders.

``read_slice`` is the per-file path the cache builder runs hundreds of
thousands of times, so it reads each file once (:func:`part10_bytes`; the
cache builder fingerprints the same bytes), parses uncompressed little-endian
files with :mod:`headct.io.plain_dicom` (anything else through
``pydicom.dcmread``), reads only the tags it needs and, for uncompressed
little-endian pixels, views PixelData with ``np.frombuffer`` instead of going
through pydicom's pixel handlers. Its numbers equal pydicom's own modality LUT
(``pydicom.pixels.apply_modality_lut``), rounded and clipped to int16; every
other transfer syntax (JPEG lossless, JPEG 2000, RLE, big endian, ...) goes
through pydicom and its pylibjpeg plugins.

No patient identifiers leave this module: slices carry UIDs and a salted
``patient_key`` (see :mod:`headct.io.privacy`), never names or ids.

A file is untrusted input: every fault in it, including the exceptions that
pydicom and its decoders raise on malformed bytes, becomes one
:class:`InputError` line naming the file and the fault (the traceback only at
debug level), so a batch reports it and goes on. Header values that would give
silently wrong HU (NaN, infinite, zero or absurd rescale, PixelRepresentation
other than 0/1) are refused, not guessed.
"""

from __future__ import annotations

import errno
import io
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from tqdm import tqdm

from headct.errors import InputError
from headct.io.discovery import entry_fault, find_dicom_files
from headct.io.faults import one_line
from headct.io.gpu_decode import decode_on_gpu
from headct.io.plain_dicom import PREAMBLE, plain_dataset, plain_header
from headct.io.privacy import patient_key, short_hash
from headct.io.volume import SeriesHeader, Volume

logger = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = -32768, 32767
MAX_RESCALE = 1e6
"""Refuse |RescaleSlope| or |RescaleIntercept| above this: CT HU span a few thousand, and such a
value maps every stored value outside int16 (1e308 also overflows the arithmetic)."""
MAX_SIDE = 8192
"""Refuse Rows or Columns above this: no CT slice is larger, and a flipped bit there must not
make a decoder allocate gigabytes."""
MAX_PLAIN_BYTES = 4 * MAX_SIDE * MAX_SIDE + 2**20
"""Files above this are left to pydicom unread: no single CT slice (32-bit pixels at MAX_SIDE) is larger."""
NONUNIFORM_SPACING_TOLERANCE = 0.10
"""Warn when a gap between neighbouring slices differs from the median by more than this fraction."""

MONOCHROME1_WARNING = (
    "MONOCHROME1: for CT the modality LUT gives HU whatever the photometric "
    "interpretation (MONOCHROME1 only inverts the display), so HU were not inverted"
)


@dataclass
class DicomSlice:
    """One CT slice in HU plus the header fields needed to place it in its series.

    ``path`` names the file for messages about it; it is not part of any output.
    """

    hu: np.ndarray
    sop_uid: str | None
    series_uid: str | None
    study_uid: str | None
    patient_key: str | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    instance_number: int | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    warnings: list[str] = field(default_factory=list)
    path: str | None = None
    header: SeriesHeader | None = None


def read_slice(path: str | os.PathLike, *, salt: str | None = None, data: bytes | None = None) -> DicomSlice:
    """Read one CT DICOM file into HU (int16 ``[H, W]``) and its geometry.

    ``data``: the file's bytes when the caller has read them already (:func:`part10_bytes`), so a
    file is read once; ``path`` then names the file in messages only.

    Raises :class:`InputError` (``"<path>: <fault>"``, one line) for a file that
    cannot be used: not DICOM, truncated, not CT, no pixel data, no usable
    rescale, short pixel data, undecodable compressed pixels, or any other
    exception pydicom raises on its bytes.
    """
    path = str(path)
    try:
        return _read_slice(path, salt, data)
    except InputError:
        raise
    except Exception as exc:  # untrusted bytes: pydicom and its decoders raise any type on them
        logger.debug("%s: unreadable DICOM", path, exc_info=True)
        raise InputError(path, f"unreadable DICOM ({one_line(exc, path)})") from None


def _read_slice(path: str, salt: str | None, data: bytes | None) -> DicomSlice:
    ds = _open(path, data)
    header = _read_header(ds, path)
    warnings: list[str] = []

    stored = _stored_pixels(ds, header, path)
    stored, intercept, fixed = fix_rsna_header(
        stored, header.bits_stored, header.pixel_representation, header.intercept
    )
    if fixed:
        warnings.append(
            "RSNA header fault (BitsStored 12, unsigned, RescaleIntercept > -100): "
            "stored values shifted by 1000 and wrapped at 4096, intercept set to -1000"
        )
    hu, clipped = _to_hu(stored, ds, header.slope, intercept)
    if clipped:
        warnings.append(f"{clipped} pixels outside the int16 range were clipped")
    if header.photometric == "MONOCHROME1":
        warnings.append(MONOCHROME1_WARNING)
    warnings.extend(header.warnings)

    return DicomSlice(
        hu=hu,
        sop_uid=header.sop_uid,
        series_uid=header.series_uid,
        study_uid=header.study_uid,
        patient_key=patient_key(ds.get("PatientID"), salt),
        position=header.position,
        orientation=header.orientation,
        instance_number=header.instance_number,
        pixel_spacing=header.pixel_spacing,
        slice_thickness=header.slice_thickness,
        warnings=warnings,
        path=path,
        header=_series_header(ds, header),
    )


def fix_rsna_header(
    stored: np.ndarray, bits_stored: int, pixel_representation: int, intercept: float
) -> tuple[np.ndarray, float, bool]:
    """Undo the known RSNA ICH header fault; return ``(stored, intercept, fixed)``.

    Some RSNA 2019 files say BitsStored 12, unsigned, with an intercept near 0
    while their pixels are signed 12-bit values. When BitsStored == 12,
    PixelRepresentation == 0 and RescaleIntercept > -100: add 1000 to the
    stored values, subtract 4096 from those that reach 4096 (i.e. read them as
    signed 12-bit), and use intercept -1000. Other inputs come back unchanged.
    """
    if not (bits_stored == 12 and pixel_representation == 0 and intercept > -100):
        return stored, intercept, False
    shifted = stored.astype(np.int32) + 1000
    shifted[shifted >= 4096] -= 4096
    return shifted, -1000.0, True


def assemble_series(
    slices: Sequence[DicomSlice], *, errors: list[InputError] | None = None
) -> Volume:
    """Stack the slices of one series in scan order into a :class:`Volume`.

    Order is by position along the slice normal (cross product of the row
    and column cosines of ImageOrientationPatient), so oblique series sort
    right; without positions, by InstanceNumber with a warning. Slices whose
    size differs from the majority are dropped, one line each naming the file
    (logged and appended to ``errors`` when given); duplicate SOPInstanceUIDs
    too. The volume's warnings count them and never name files (they reach
    prediction outputs).
    """
    if not slices:
        raise InputError(None, "no slices to assemble")
    warnings: list[str] = []
    kept = _drop_duplicates(list(slices), warnings, errors)
    kept = _drop_odd_sizes(kept, warnings, errors)
    ordered, keys, how = _scan_order(kept)
    if how != "position":
        warnings.append(how)
    _check_orientations(ordered, warnings)
    slice_spacing = _slice_spacing(ordered, keys, warnings)
    pixel_spacing = _pixel_spacing(ordered, warnings)
    warnings.extend(_merged_slice_warnings(ordered))

    positions = np.stack([s.position for s in ordered]) if keys is not None else None
    series_uids = {s.series_uid for s in ordered}
    if len(series_uids) > 1:
        warnings.append(f"slices from {len(series_uids)} different SeriesInstanceUIDs stacked as one")
    return Volume(
        pixels=np.stack([s.hu for s in ordered]).astype(np.int16, copy=False),
        kind="hu",
        pixel_spacing=pixel_spacing,
        slice_spacing=slice_spacing,
        slice_uids=[s.sop_uid or short_hash(os.path.basename(s.path or str(i))) for i, s in enumerate(ordered)],
        series_uid=ordered[0].series_uid,
        study_uid=ordered[0].study_uid,
        patient_key=next((s.patient_key for s in ordered if s.patient_key), None),
        warnings=warnings,
        header=next((s.header for s in ordered if s.header is not None), None),
        positions=positions,
    )


def read_dicom(
    path: str | os.PathLike,
    *,
    salt: str | None = None,
    errors: list[InputError] | None = None,
) -> list[Volume]:
    """Read a DICOM file, a series folder or a tree of many series/studies.

    Returns one :class:`Volume` per SeriesInstanceUID, ordered by study then
    series UID. Unusable files are skipped, logged and appended to ``errors``
    (when given) as :class:`InputError`; the rest is read. Raises
    :class:`InputError` for ``path`` when nothing usable is left.
    """
    root = Path(path)
    found = find_dicom_files(root)
    if root.is_file():
        return [assemble_series([read_slice(root, salt=salt)], errors=errors)]
    if errors is not None:
        errors.extend(found.refused)
    if not found.files:
        raise InputError(root, f"folder holds no DICOM candidates ({found.describe()})")
    return read_dicom_files(found.files, root, salt=salt, errors=errors, refused=len(found.refused))


def read_dicom_files(files: Sequence[Path], root: Path, *, salt: str | None = None,
                     errors: list[InputError] | None = None, refused: int = 0) -> list[Volume]:
    """:func:`read_dicom` on a given list of files (e.g. one study of a flat folder, see
    :func:`dicom_studies`); ``root`` names them in messages."""
    by_series: dict[tuple[str, str], list[DicomSlice]] = defaultdict(list)
    skipped = 0
    for file in tqdm(files, desc="reading DICOM", unit="file", disable=len(files) < 100, leave=False):
        try:
            sl = read_slice(file, salt=salt)
        except InputError as err:
            skipped += 1
            _report(err, errors)
            continue
        series = sl.series_uid or f"no-series-uid:{short_hash(str(file.parent))}"
        by_series[(sl.study_uid or "", series)].append(sl)
    if not by_series:
        raise InputError(root, f"no usable CT DICOM slices ({skipped} of {len(files)} files skipped)")

    volumes = []
    for key in sorted(by_series):
        try:
            volumes.append(assemble_series(by_series[key], errors=errors))
        except InputError as err:
            _report(err, errors)
    logger.info("%s: %d series, %d files skipped, %d refused", root, len(volumes), skipped, refused)
    return volumes


HEADER_PREFIX_BYTES = 64 * 1024
"""Bytes read to find a file's StudyInstanceUID: CT headers end well before this (pixels follow)."""


def dicom_studies(files: Sequence[Path]) -> dict[str | None, list[Path]]:
    """``files`` by StudyInstanceUID from their headers alone (no pixels read), in the order given.

    For folders that hold many studies side by side (the RSNA sets put every
    slice in one folder): each study can then be read, predicted and dropped in
    turn instead of the whole folder held in memory. A file whose study cannot
    be told (not DICOM, unreadable, no UID) goes under None; reading it later says why.
    """
    studies: dict[str | None, list[Path]] = {}
    for file in files:
        studies.setdefault(study_uid_of(file), []).append(file)
    return studies


def study_uid_of(path: str | os.PathLike) -> str | None:
    """A file's StudyInstanceUID, read from its header (plain files: its first 64 KiB), or None."""
    if entry_fault(path) is not None:
        return None
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(HEADER_PREFIX_BYTES)
        header = plain_header(prefix)
        if header is None:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[_T["StudyInstanceUID"]])
        return _text(header, _T["StudyInstanceUID"])
    except Exception:  # noqa: BLE001 - untrusted bytes; read_slice reports the fault when the file is read
        return None


# --- helpers: opening and the header -------------------------------------------------

_NATIVE_LITTLE_ENDIAN = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}

_T = {
    name: Tag(name)
    for name in (
        "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality",
        "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber", "PixelSpacing",
        "SliceThickness", "Rows", "Columns", "BitsAllocated", "BitsStored",
        "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation",
        "SamplesPerPixel", "NumberOfFrames",
        # series facts for series selection (SeriesHeader)
        "ImageType", "ConvolutionKernel", "Manufacturer", "SeriesDescription", "SeriesNumber",
        "ContrastBolusAgent", "ContrastBolusRoute", "GantryDetectorTilt",
    )
}  # fmt: skip
_PIXEL_DATA = Tag("PixelData")
_US_TAGS = {_T[n] for n in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel")}


@dataclass
class _Header:
    sop_uid: str | None
    series_uid: str | None
    study_uid: str | None
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    frames: int
    slope: float
    intercept: float
    photometric: str | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    instance_number: int | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    warnings: list[str]


def _open(path: str, data: bytes | None = None) -> pydicom.Dataset:
    if data is None:
        fault = entry_fault(path)
        if fault is not None:
            raise InputError(path, fault)
        data = _part10_file(path)
    ds = plain_dataset(data) if data is not None else None
    if ds is not None:
        return ds  # the plain case, parsed whole (plain_dataset refuses a file cut short)
    try:
        ds = pydicom.dcmread(path if data is None else io.BytesIO(data))
    except InvalidDicomError:
        raise InputError(path, "not a DICOM file (no DICM preamble or readable header)") from None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM):  # gone or unreadable since entry_fault
            raise InputError(path, f"cannot open ({exc.strerror})") from None
        logger.debug("%s: corrupt DICOM", path, exc_info=True)
        raise InputError(path, f"truncated or corrupt DICOM ({one_line(exc, path)})") from None
    except Exception as exc:  # pydicom raises many types when a file stops mid-element or lies
        logger.debug("%s: corrupt DICOM", path, exc_info=True)
        raise InputError(path, f"truncated or corrupt DICOM ({one_line(exc, path)})") from None
    _check_not_truncated(ds, path)
    return ds


def part10_bytes(path: str | os.PathLike) -> bytes | None:
    """The whole file when it is a regular file that starts as DICOM Part 10 and is no larger than any
    CT slice, else None (:func:`read_slice` then opens it itself and says what is wrong)."""
    if entry_fault(path) is not None:
        return None  # a named pipe would block the read
    return _part10_file(path)


def _part10_file(path: str | os.PathLike) -> bytes | None:
    """:func:`part10_bytes` for a path already known to be a regular file (read_slice checked it)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:  # pread: one read of the whole file into one bytes object, no buffer copies
        size = os.fstat(handle).st_size
        if size > MAX_PLAIN_BYTES or os.pread(handle, 4, PREAMBLE) != b"DICM":
            return None
        return os.pread(handle, size, 0)
    except OSError:
        return None
    finally:
        os.close(handle)


def _check_not_truncated(ds: pydicom.Dataset, path: str) -> None:
    """pydicom silently keeps a short last value when a file ends early; we refuse it."""
    if len(ds) == 0:
        return
    last = max(ds.keys())
    elem = ds.get_item(last)
    if not isinstance(elem, RawDataElement) or elem.value is None:
        return
    declared = elem.length
    if declared != 0xFFFFFFFF and len(elem.value) < declared:
        name = pydicom.datadict.keyword_for_tag(last) or str(last)
        raise InputError(
            path, f"truncated file: {name} {last} has {len(elem.value)} of {declared} bytes"
        )


def _read_header(ds: pydicom.Dataset, path: str) -> _Header:
    """The tags read_slice needs, checked; refuse what CT must have and lacks."""
    modality = _text(ds, _T["Modality"])
    if modality is None:
        raise InputError(path, "no Modality (0008,0060); expected CT")
    if modality.upper() != "CT":
        raise InputError(path, f"modality {modality} is not CT")
    if "PixelData" not in ds:
        raise InputError(path, "no pixel data (7FE0,0010); the file may also be truncated")
    slope, intercept = _number(ds, _T["RescaleSlope"]), _number(ds, _T["RescaleIntercept"])
    if (slope is None or intercept is None) and not ds.get("ModalityLUTSequence"):
        raise InputError(path, "missing RescaleSlope/RescaleIntercept (absent or not a number; CT needs them to give HU)")
    _check_rescale(slope, intercept, path)
    samples = _int(ds, _T["SamplesPerPixel"]) or 1
    if samples != 1:
        raise InputError(path, f"{samples} samples per pixel; CT slices must be monochrome")
    rows, columns = _int(ds, _T["Rows"]), _int(ds, _T["Columns"])
    bits_allocated, bits_stored = _int(ds, _T["BitsAllocated"]), _int(ds, _T["BitsStored"])
    pixel_representation = _int(ds, _T["PixelRepresentation"])
    if None in (rows, columns, bits_allocated, pixel_representation) or not rows or not columns:
        raise InputError(path, "missing Rows/Columns/BitsAllocated/PixelRepresentation")
    _check_pixel_format(rows, columns, bits_allocated, bits_stored, pixel_representation, path)
    frames = _frames(ds, path)

    warnings: list[str] = []
    instance_number = _int(ds, _T["InstanceNumber"])
    if instance_number is None and _strings(ds, _T["InstanceNumber"]):
        warnings.append("InstanceNumber is malformed (not a finite integer); ignored")
    position = _vector(ds, _T["ImagePositionPatient"], 3, warnings)
    orientation = _vector(ds, _T["ImageOrientationPatient"], 6, warnings)
    spacing = _vector(ds, _T["PixelSpacing"], 2, warnings)
    return _Header(
        sop_uid=_text(ds, _T["SOPInstanceUID"]),
        series_uid=_text(ds, _T["SeriesInstanceUID"]),
        study_uid=_text(ds, _T["StudyInstanceUID"]),
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored or bits_allocated,
        pixel_representation=pixel_representation,
        frames=frames,
        slope=1.0 if slope is None else slope,
        intercept=0.0 if intercept is None else intercept,
        photometric=_text(ds, _T["PhotometricInterpretation"]),
        position=position,
        orientation=orientation,
        instance_number=instance_number,
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        slice_thickness=_finite(_number(ds, _T["SliceThickness"])),
        warnings=warnings,
    )


def _check_rescale(slope: float | None, intercept: float | None, path: str) -> None:
    """Refuse a rescale that would give NaN, constant or overflowing HU instead of guessing."""
    for name, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        if value is None:
            continue
        if not math.isfinite(value):
            raise InputError(path, f"{name} is {value}; HU would be undefined")
        if abs(value) > MAX_RESCALE:
            raise InputError(path, f"{name} {value:g} is beyond +-{MAX_RESCALE:g}; HU would overflow")
    if slope == 0:
        raise InputError(path, "RescaleSlope is 0; every pixel would get the intercept")


def _check_pixel_format(rows: int, columns: int, bits_allocated: int, bits_stored: int | None,
                        pixel_representation: int, path: str) -> None:
    if pixel_representation not in (0, 1):
        raise InputError(path, f"PixelRepresentation {pixel_representation} is neither 0 (unsigned) nor 1 (signed)")
    if rows > MAX_SIDE or columns > MAX_SIDE:
        raise InputError(path, f"{rows}x{columns} pixels is beyond the {MAX_SIDE}x{MAX_SIDE} of any CT slice")
    if bits_allocated not in (8, 16, 32):
        raise InputError(path, f"BitsAllocated {bits_allocated}; CT pixels are 8, 16 or 32 bits")
    if bits_stored is not None and not 1 <= bits_stored <= bits_allocated:
        raise InputError(path, f"BitsStored {bits_stored} does not fit BitsAllocated {bits_allocated}")


def _frames(ds: pydicom.Dataset, path: str) -> int:
    """NumberOfFrames (1 when absent); refuse a malformed count or more than one frame."""
    if not _strings(ds, _T["NumberOfFrames"]):
        return 1
    frames = _int(ds, _T["NumberOfFrames"])
    if frames is None:
        raise InputError(path, "NumberOfFrames is malformed (not a finite integer)")
    if frames != 1:
        raise InputError(path, f"{frames} frames; only single-frame CT slices are read")
    return frames


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _series_header(ds: pydicom.Dataset, header: _Header) -> SeriesHeader:
    """The acquisition facts series selection reads (no patient identifiers)."""
    kernel = _strings(ds, _T["ConvolutionKernel"])
    orientation = header.orientation
    return SeriesHeader(
        modality=_text(ds, _T["Modality"]),
        image_type=tuple(p.upper() for p in (_strings(ds, _T["ImageType"]) or []) if p),
        kernel="\\".join(kernel) if kernel else None,
        manufacturer=_text(ds, _T["Manufacturer"]),
        series_description=_text(ds, _T["SeriesDescription"]),
        series_number=_int(ds, _T["SeriesNumber"]),
        slice_thickness=header.slice_thickness,
        contrast_agent=_text(ds, _T["ContrastBolusAgent"]),
        contrast_route=_text(ds, _T["ContrastBolusRoute"]),
        gantry_tilt=_number(ds, _T["GantryDetectorTilt"]),
        orientation=None if orientation is None else tuple(float(v) for v in orientation),
    )


# pydicom converts every element it is asked for into rich Python objects
# (DSfloat with validation, MultiValue, PersonName), which is most of the time
# of a plain dcmread + attribute access. The tags below are ASCII (UI, CS, DS,
# IS) or little-endian US, so we decode their raw bytes directly; anything
# else (already converted, big endian) goes through pydicom's own conversion.


def _raw(ds: pydicom.Dataset, tag: Tag) -> bytes | object | None:
    try:
        elem = ds.get_item(tag)
    except KeyError:
        return None
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        if tag in _US_TAGS and not ds.original_encoding[1]:
            return ds[tag].value  # big endian: let pydicom convert
        return elem.value
    return elem.value


def _strings(ds: pydicom.Dataset, tag: Tag) -> list[str] | None:
    value = _raw(ds, tag)
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace").strip("\x00 ")
        parts = [p.strip("\x00 ") for p in text.split("\\")]
    elif isinstance(value, str | int | float):
        parts = [str(value).strip()]
    else:
        parts = [str(v).strip() for v in value]
    return parts if any(parts) else None


def _text(ds: pydicom.Dataset, tag: Tag) -> str | None:
    parts = _strings(ds, tag)
    return parts[0] if parts else None


def _number(ds: pydicom.Dataset, tag: Tag) -> float | None:
    parts = _strings(ds, tag)
    if not parts:
        return None
    try:
        return float(parts[0])
    except ValueError:
        return None


def _int(ds: pydicom.Dataset, tag: Tag) -> int | None:
    if tag in _US_TAGS:
        value = _raw(ds, tag)
        if isinstance(value, bytes):
            return int.from_bytes(value[:2], "little") if len(value) >= 2 else None
        return None if value is None else int(value)
    number = _number(ds, tag)
    return int(number) if number is not None and math.isfinite(number) else None


def _vector(ds: pydicom.Dataset, tag: Tag, length: int, warnings: list[str]) -> np.ndarray | None:
    parts = _strings(ds, tag)
    if parts is None:
        return None
    try:
        values = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        values = np.empty(0)
    if values.shape != (length,) or not np.all(np.isfinite(values)):
        warnings.append(f"{pydicom.datadict.keyword_for_tag(tag)} is malformed ({len(parts)} values); ignored")
        return None
    return values


# --- helpers: pixels and HU --------------------------------------------------------


def _stored_pixels(ds: pydicom.Dataset, header: _Header, path: str) -> np.ndarray:
    """Stored values [H, W] as pydicom's pixel_array would give them."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not syntax:
        raise InputError(path, "no TransferSyntaxUID in the file meta; the pixel encoding is unknown")
    if syntax in _NATIVE_LITTLE_ENDIAN and header.bits_allocated == 16:
        data = _raw(ds, _PIXEL_DATA)
        if not isinstance(data, bytes | memoryview):  # memoryview: plain_dataset's view of the file
            data = ds.PixelData
        return _native_pixels(data or b"", header, path)
    _quiet_decoder_tracebacks()
    try:
        arr = decode_on_gpu(ds)  # nvImageCodec for JPEG lossless / 2000 where it imports, else None
        arr = ds.pixel_array if arr is None else arr
    except Exception as exc:  # pydicom's handlers raise many types; one line names the fault
        name = getattr(syntax, "name", None) or str(syntax)
        logger.debug("%s: cannot decode pixel data", path, exc_info=True)
        raise InputError(path, f"cannot decode pixel data ({name}): {one_line(exc, path)}") from None
    if arr.shape != (header.rows, header.columns):
        raise InputError(path, f"pixel data has shape {arr.shape}, Rows x Columns say {header.rows}x{header.columns}")
    return arr


class _DemoteTracebacks(logging.Filter):
    """Turn a record that carries a traceback into a DEBUG one, kept only where DEBUG is on (-vv)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.levelno <= logging.DEBUG:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_DECODER_LOGGER = "pydicom.pixels.decoders.base"
_DEMOTE = _DemoteTracebacks()


def _quiet_decoder_tracebacks() -> None:
    """pydicom logs a full traceback (ERROR) for every plugin that fails on a frame, before raising
    the error we report in one line anyway; with thousands of bad files that buries the log. pydicom
    has no setting for it, so a filter on that one logger demotes those records to DEBUG (added once)."""
    decoder_logger = logging.getLogger(_DECODER_LOGGER)
    if _DEMOTE not in decoder_logger.filters:
        decoder_logger.addFilter(_DEMOTE)


def _native_pixels(data: bytes | memoryview, header: _Header, path: str) -> np.ndarray:
    """np.frombuffer on uncompressed little-endian 16-bit PixelData."""
    needed = header.rows * header.columns * 2
    if len(data) < needed:
        raise InputError(
            path,
            f"pixel data is {len(data)} bytes, Rows x Columns ({header.rows}x{header.columns}) "
            f"x 2 bytes needs {needed}",
        )
    dtype = "<i2" if header.pixel_representation == 1 else "<u2"
    arr = np.frombuffer(data, dtype=dtype, count=header.rows * header.columns)
    arr = arr.reshape(header.rows, header.columns)
    shift = 16 - header.bits_stored
    if shift > 0:
        # As pydicom does (PS3.5 8.1.1): the unused high bits carry no meaning;
        # shifting left then right (arithmetic for signed) drops them.
        arr = np.right_shift(np.left_shift(arr, shift), shift)
    return arr


def _to_hu(
    stored: np.ndarray, ds: pydicom.Dataset, slope: float, intercept: float
) -> tuple[np.ndarray, int]:
    """Modality LUT to int16 HU; returns ``(hu, number of clipped pixels)``.

    Same numbers as pydicom's ``apply_modality_lut`` followed by rounding and
    clipping to int16, without its float64 pass in the usual integer case.
    """
    if ds.get("ModalityLUTSequence"):
        return _clip_int16(apply_modality_lut(stored, ds).astype(np.int64))
    if not (float(slope).is_integer() and float(intercept).is_integer()):
        return _clip_int16(np.rint(stored.astype(np.float64) * slope + intercept))
    slope, intercept = int(slope), int(intercept)
    low, high = int(stored.min()), int(stored.max())
    ends = (low * slope + intercept, high * slope + intercept)
    if min(ends) >= INT16_MIN and max(ends) <= INT16_MAX:
        # Every result fits in int16, so int16 arithmetic is exact even where an
        # intermediate wraps (arithmetic modulo 2**16 agrees with the true value).
        hu = stored.astype(np.int16, copy=False)
        if slope != 1:
            hu = hu * _wrap_int16(slope)
        hu = hu + _wrap_int16(intercept)  # a new, writable array even when intercept is 0
        return hu, 0
    values = stored.astype(np.int64) * slope + intercept
    return _clip_int16(values)


def _clip_int16(values: np.ndarray) -> tuple[np.ndarray, int]:
    clipped = int(np.count_nonzero((values < INT16_MIN) | (values > INT16_MAX)))
    if clipped:
        values = np.clip(values, INT16_MIN, INT16_MAX)
    return values.astype(np.int16), clipped


def _wrap_int16(value: int) -> np.int16:
    return np.int16((value - INT16_MIN) % 65536 + INT16_MIN)


# --- helpers: series ---------------------------------------------------------------


def _drop_duplicates(
    slices: list[DicomSlice], warnings: list[str], errors: list[InputError] | None
) -> list[DicomSlice]:
    seen: set[str] = set()
    kept = []
    for s in slices:
        if s.sop_uid is not None and s.sop_uid in seen:
            _report(InputError(s.path, "duplicate SOPInstanceUID; slice dropped"), errors)
            continue
        if s.sop_uid is not None:
            seen.add(s.sop_uid)
        kept.append(s)
    if len(kept) < len(slices):
        warnings.append(f"{len(slices) - len(kept)} slices with a duplicate SOPInstanceUID dropped")
    return kept


def _drop_odd_sizes(
    slices: list[DicomSlice], warnings: list[str], errors: list[InputError] | None
) -> list[DicomSlice]:
    sizes = Counter(s.hu.shape for s in slices)
    majority = max(sizes, key=lambda shape: (sizes[shape], -_first_index(slices, shape)))
    kept = []
    for s in slices:
        if s.hu.shape == majority:
            kept.append(s)
            continue
        err = InputError(
            s.path,
            f"size {s.hu.shape[0]}x{s.hu.shape[1]} differs from the series' "
            f"{majority[0]}x{majority[1]}; slice dropped",
        )
        _report(err, errors)
    if len(kept) < len(slices):
        warnings.append(f"{len(slices) - len(kept)} slices of another size than the series' "
                        f"{majority[0]}x{majority[1]} dropped")
    return kept


def _first_index(slices: list[DicomSlice], shape: tuple[int, ...]) -> int:
    return next(i for i, s in enumerate(slices) if s.hu.shape == shape)


def _scan_order(slices: list[DicomSlice]) -> tuple[list[DicomSlice], np.ndarray | None, str]:
    """Sort along the slice normal; fall back to InstanceNumber, then file name.

    Returns the sorted slices, their positions along the normal (or None) and
    ``"position"`` or the warning that says what was used instead.
    """
    orientation = next((s.orientation for s in slices if s.orientation is not None), None)
    if orientation is not None and all(s.position is not None for s in slices):
        normal = np.cross(orientation[:3], orientation[3:])
        if np.linalg.norm(normal) > 1e-6:
            normal = normal / np.linalg.norm(normal)
            keyed = sorted(
                ((float(np.dot(s.position, normal)), s) for s in slices),
                key=lambda ks: (ks[0], _tiebreak(ks[1])),
            )
            return [s for _, s in keyed], np.array([k for k, _ in keyed]), "position"
    if all(s.instance_number is not None for s in slices):
        ordered = sorted(slices, key=lambda s: (s.instance_number, _tiebreak(s)))
        return ordered, None, (
            "no usable ImagePositionPatient/ImageOrientationPatient; slices sorted by InstanceNumber"
        )
    ordered = sorted(slices, key=_tiebreak)
    return ordered, None, "no slice positions and no InstanceNumber; slices kept in file-name order"


def _check_orientations(slices: list[DicomSlice], warnings: list[str]) -> None:
    oriented = [s.orientation for s in slices if s.orientation is not None]
    if not oriented:
        return
    stacked = np.stack(oriented)
    odd = int((~np.isclose(stacked, stacked[0], atol=1e-3).all(axis=1)).sum())  # np.allclose per slice
    if odd:
        warnings.append(f"{odd} slices have another ImageOrientationPatient than the first")


def _tiebreak(s: DicomSlice) -> tuple:
    return (s.instance_number if s.instance_number is not None else 0, s.sop_uid or "", s.path or "")


def _slice_spacing(
    ordered: list[DicomSlice], keys: np.ndarray | None, warnings: list[str]
) -> float | None:
    if len(ordered) < 2:
        return None
    if keys is None:
        thickness = next((s.slice_thickness for s in ordered if s.slice_thickness), None)
        if thickness is not None:
            warnings.append("slice spacing taken from SliceThickness (no slice positions)")
        return thickness
    gaps = np.diff(keys)
    spacing = float(np.median(gaps))
    if np.any(gaps < 1e-6):
        warnings.append(f"{int(np.sum(gaps < 1e-6))} slices share a position with their neighbour")
    if spacing > 0 and np.max(np.abs(gaps - spacing)) > NONUNIFORM_SPACING_TOLERANCE * spacing:
        warnings.append(
            f"slice spacing not uniform: gaps {gaps.min():.3g}..{gaps.max():.3g} mm, "
            f"median {spacing:.3g} mm used"
        )
    return spacing if spacing > 0 else None


def _pixel_spacing(ordered: list[DicomSlice], warnings: list[str]) -> tuple[float, float] | None:
    spacings = {s.pixel_spacing for s in ordered if s.pixel_spacing is not None}
    if not spacings:
        return None
    chosen = next(s.pixel_spacing for s in ordered if s.pixel_spacing is not None)
    if len(spacings) > 1:
        warnings.append(f"PixelSpacing differs between slices; {chosen[0]:.4g}x{chosen[1]:.4g} mm used")
    return chosen


def _merged_slice_warnings(slices: Iterable[DicomSlice]) -> list[str]:
    """Per-slice warnings once each, with the number of slices they apply to."""
    counts: Counter[str] = Counter()
    for s in slices:
        counts.update(dict.fromkeys(s.warnings, 1))
    return [msg if n == 1 else f"{msg} ({n} slices)" for msg, n in counts.items()]


def _report(err: InputError, errors: list[InputError] | None) -> None:
    logger.warning("%s", err)
    if errors is not None:
        errors.append(err)
