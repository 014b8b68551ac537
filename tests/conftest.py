"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@pytest.fixture(scope="session")
def write_ct_series() -> Callable[..., tuple[str, list[str], np.ndarray]]:
    """Writer of small CT DICOM series that carry patient identifiers (which no output may echo)."""
    return _write_ct_series


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RSNA-style cache (see :func:`_tiny_cache`), one per test module."""
    return _tiny_cache(tmp_path_factory.mktemp("cache"))


TINY_MODEL = "tiny-test-effnet-shared"


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The name of a registered 2-D model small enough to train in seconds on the CPU."""
    from headct.models.backbones import SliceClassifier
    from headct.models.registry import list_models, register_model

    if TINY_MODEL not in list_models():
        register_model(TINY_MODEL)(lambda num_classes, *, input_kind="hu", drop_rate=0.0, pretrained=False:
                                   SliceClassifier("test_efficientnet", num_classes,
                                                   target_layers=["encoder.conv_head"], input_kind=input_kind,
                                                   drop_rate=drop_rate, pretrained=pretrained))
    return TINY_MODEL


@pytest.fixture(scope="module")
def fold_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cache with 3 folds over its train and val studies (study s → fold s % 3; test → -1)."""
    path = _tiny_cache(tmp_path_factory.mktemp("fold_cache"))
    index = path / "index.csv"
    lines = index.read_text().splitlines()
    header = lines[0].split(",")
    split_col, fold_col, study_col = header.index("split"), header.index("fold"), header.index("study")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[fold_col] = "-1" if row[split_col] == "test" else str(int(row[study_col].removeprefix("study")) % 3)
    index.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    return path


def _tiny_cache(path: Path, n_series: int = 20, slices: int = 6, size: int = 32) -> Path:
    """A small RSNA-style cache: half the series have a bright intraparenchymal blob on slices 1..3."""
    from headct.data.cache import (
        FORMAT_VERSION,
        INDEX_COLUMNS,
        write_index,
        write_meta,
        write_shard,
    )

    rng = np.random.default_rng(0)
    labels = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    columns: dict[str, list] = {k: [] for k in (*INDEX_COLUMNS, *labels)}
    splits = ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    yy, xx = np.mgrid[:size, :size]
    head = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    for s in range(n_series):
        key = f"s{s:03d}"
        pixels = np.full((slices, size, size), -1000, np.int16)
        pixels[:, head] = 30
        pixels += rng.normal(0, 5, pixels.shape).astype(np.int16)
        for k in range(slices):
            label = [0] * 6
            if s % 2 == 0 and 1 <= k <= 3:
                cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
                pixels[k][(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = 75
                label[1] = label[5] = 1
            values = (len(columns["row"]), f"study{s}", "", f"series{s}", k, f"uid{s}.{k}", key, k, splits[s], -1)
            for name, value in zip((*INDEX_COLUMNS, *labels), (*values, *label), strict=True):
                columns[name].append(value)
        write_shard(path, key, pixels, None, {"key": key, "slices": slices,
                                              "uids": [f"uid{s}.{k}" for k in range(slices)]})
    write_index(path, columns, labels)
    write_meta(path, {"format_version": FORMAT_VERSION, "source_format": "rsna", "kind": "hu", "size": size,
                      "labels": labels, "summary": {}, "has_masks": False,
                      "split": {"how": "study", "seed": 0, "n_train": 12, "n_val": 4, "n_test": 4}})
    return path


def _write_ct_series(folder: Path, slices: int = 4, size: int = 40, seed: int = 0, study_uid: str | None = None) -> tuple[str, list[str], np.ndarray]:
    """CT DICOM files named against scan order (IM000 is the top slice). Returns (study uid, sop uids in scan order, HU)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    hu = rng.integers(-1000, 1000, (slices, size, size)).astype(np.int16)
    uids = [generate_uid() for _ in range(slices)]
    for i in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uids[i]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uids[i]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Doe^Jane", "PID-SECRET-42"
        ds.PatientBirthDate, ds.AccessionNumber = "19700101", "ACC-SECRET-7"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 5.0 * i], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [0.5, 0.5], 5.0, i + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = hu[i].tobytes()
        ds.save_as(folder / f"IM{slices - 1 - i:03d}.dcm", enforce_file_format=True)
    return study_uid, uids, hu
