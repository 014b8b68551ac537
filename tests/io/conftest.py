"""Fixtures for the io tests: a small CT DICOM writer (64x64 by default)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-7731-SECRET"


def ct_dataset(
    stored: np.ndarray | None = None,
    *,
    z: float = 0.0,
    position: list[float] | None = None,
    orientation: list[float] | None = None,
    instance: int = 1,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    study_uid: str = "1.2.826.0.1.3680043.8.498.100",
    sop_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    bits_stored: int = 16,
    pixel_representation: int = 1,
    photometric: str = "MONOCHROME2",
    modality: str = "CT",
    pixel_spacing: tuple[float, float] = (0.5, 0.6),
    thickness: float = 5.0,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    omit: tuple[str, ...] = (),
) -> Dataset:
    """A CT dataset with the tags read_slice uses (and patient identifiers to leak).

    ``stored`` are the stored values (random when None); ``omit`` names
    keywords to leave out.
    """
    if stored is None:
        rng = np.random.default_rng(seed)
        high = 2 ** (bits_stored - 1) if pixel_representation else 2**bits_stored
        low = -high if pixel_representation else 0
        stored = rng.integers(max(low, -2000), min(high, 3000), size, endpoint=False)
    dtype = np.int16 if pixel_representation else np.uint16
    stored = np.asarray(stored).astype(dtype)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19500101"
    ds.AccessionNumber = "ACC-99812"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = position if position is not None else [-16.0, -16.0, z]
    ds.ImageOrientationPatient = orientation or [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = thickness
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_representation
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = stored.tobytes()
    for keyword in omit:
        delattr(ds, keyword)
    return ds


@pytest.fixture
def make_ct() -> Callable[..., Dataset]:
    """:func:`ct_dataset`, for tests that change a dataset before writing it."""
    return ct_dataset


@pytest.fixture
def write_ct(tmp_path: Path) -> Callable[..., Path]:
    """``write_ct(name, **ct_dataset_kwargs) -> path`` under this test's tmp_path."""

    def write(name: str, ds: Dataset | None = None, **kwargs) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (ds if ds is not None else ct_dataset(**kwargs)).save_as(path, enforce_file_format=True)
        return path

    return write


@pytest.fixture
def compress() -> Callable[[Dataset, UID], Dataset]:
    """``compress(ds, syntax)``: RLE and JPEG 2000 through pydicom, JPEG lossless by hand."""

    def run(ds: Dataset, syntax: UID) -> Dataset:
        if syntax == JPEGLosslessSV1:
            image = np.frombuffer(ds.PixelData, dtype="<i2" if ds.PixelRepresentation else "<u2")
            frame = encode_jpeg_lossless(image.reshape(ds.Rows, ds.Columns))
            ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        else:
            ds.compress(syntax)
        return ds

    return run


def encode_jpeg_lossless(image: np.ndarray) -> bytes:
    """One 16-bit grey frame as JPEG lossless, process 14, selection value 1 (ITU T.81 H).

    Written here because nothing installed encodes it (pydicom has no encoder
    for it; pylibjpeg-libjpeg only decodes), and the reader's JPEG lossless
    path deserves a test on CT-like data. One Huffman table gives every
    difference category 0..16 a 5-bit code equal to the category.
    """
    rows, cols = image.shape
    x = image.astype(np.uint16).astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << 15  # 2**(P-1): first sample of the scan
    pred[0, 1:] = x[0, :-1]  # first line: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the sample above
    pred[1:, 1:] = x[1:, :-1]  # selection value 1: left neighbour
    diffs = (x - pred) & 0xFFFF
    diffs = np.where(diffs >= 1 << 15, diffs - (1 << 16), diffs)
    acc, nbits, out = 0, 0, bytearray()
    for d in diffs.ravel().tolist():
        size = 16 if d == -(1 << 15) else abs(d).bit_length()
        acc, nbits = (acc << 5) | size, nbits + 5
        if 0 < size < 16:
            acc, nbits = (acc << size) | (d if d > 0 else d + (1 << size) - 1), nbits + size
        while nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
            if out[-1] == 0xFF:
                out.append(0)  # byte stuffing
        acc &= (1 << nbits) - 1
    if nbits:
        out.append(((acc << (8 - nbits)) | ((1 << (8 - nbits)) - 1)) & 0xFF)  # pad with 1s
        if out[-1] == 0xFF:
            out.append(0)
    size = rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    sof3 = b"\xff\xc3\x00\x0b\x10" + size + b"\x01\x01\x11\x00"
    dht = b"\xff\xc4\x00\x24\x00" + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + sof3 + dht + sos + bytes(out) + b"\xff\xd9"
