"""Fixtures for the io tests: a small CT DICOM writer (64x64 by default)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)

from headct.phantom.writers import compress_jpeg_lossless

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
            compress_jpeg_lossless(ds)
        else:
            ds.compress(syntax)
        return ds

    return run
