"""Tiny datasets for the data tests, written with pydicom / PIL / nibabel (64 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headct.data.cache import FORMAT_VERSION, Cache, write_index, write_meta, write_shard


def write_ct(path: Path, pixels: np.ndarray, *, sop: str, series: str, study: str, patient: str | None,
             z: float, modality: str = "CT", intercept: float = -1024.0) -> Path:
    """One uncompressed CT slice whose HU are ``pixels`` (stored = HU - intercept)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series, study, modality
    if patient is not None:
        ds.PatientID = patient
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 5.0
    ds.InstanceNumber = int(z) + 1
    ds.PixelData = (pixels.astype(np.int32) - int(intercept)).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def slice_hu(value: int, size: int = 64) -> np.ndarray:
    """A slice of air with a constant square of ``value`` HU in the middle."""
    pixels = np.full((size, size), -1000, dtype=np.int16)
    pixels[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = value
    return pixels


@pytest.fixture
def ct_writer():
    return write_ct


@pytest.fixture
def hu_slice():
    return slice_hu


def build_cache(path, lengths=(3, 1, 4), size=8, labels=("non-stroke", "hemorrhagic", "ischemic")):
    """Series i has lengths[i] slices; every pixel of cache row r equals r; labels cycle through classes."""
    columns = {name: [] for name in ("row", "study", "patient", "series", "slice_index", "uid", "shard",
                                     "offset", "split", "fold", *labels)}
    row = 0
    for i, length in enumerate(lengths):
        key = f"series{i}"
        pixels = np.stack([np.full((size, size), row + k, np.int16) for k in range(length)])
        masks = (pixels % 2).astype(np.uint8) if i == 0 else None
        write_shard(path, key, pixels, masks, {"key": key, "slices": length, "uids": [f"u{row + k}" for k in range(length)],
                                               "has_mask": masks is not None})
        for k in range(length):
            values = dict(row=row, study=f"st{i}", patient=f"p{i}", series=key, slice_index=k, uid=f"u{row}",
                          shard=key, offset=k, split=["train", "val", "test"][min(i, 2)], fold=-1)
            for name, value in values.items():
                columns[name].append(value)
            for j, name in enumerate(labels):
                columns[name].append(int(row % len(labels) == j))
            row += 1
    write_index(path, columns, list(labels))
    write_meta(path, {"format_version": FORMAT_VERSION, "kind": "hu", "size": size, "labels": list(labels),
                      "has_masks": True, "split": {"how": "patient"}, "summary": {}})
    return Cache(path)


@pytest.fixture(name="build_cache")
def build_cache_fixture():
    return build_cache
