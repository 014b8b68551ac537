"""Slices per second of ``headct.io.dicom.read_slice`` on one core.

Writes N uncompressed 512x512 int16 CT files (Explicit VR Little Endian, a
typical anonymised header) to a temporary folder, reads them with
``read_slice`` and, for reference, with plain ``dcmread`` + ``pixel_array`` +
``apply_modality_lut``; prints and writes the figures as JSON.

    python benchmarks/read_slice.py [--files 200] [--repeats 5] [--json benchmarks/results/read_slice.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from headct.io.dicom import read_slice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the best is kept")
    parser.add_argument("--json", default="benchmarks/results/read_slice.json")
    args = parser.parse_args()
    _one_core()

    with tempfile.TemporaryDirectory() as tmp:
        files = [_write_ct(Path(tmp) / f"{i:04d}.dcm", i) for i in range(args.files)]
        for f in files:  # warm the page cache so both readers see the same disk
            f.read_bytes()
        rates = _best_rates({"read_slice": read_slice, "pydicom_lut": _pydicom_reference}, files, args.repeats)
        result = {
            "files": args.files,
            "shape": [512, 512],
            "transfer_syntax": "Explicit VR Little Endian",
            "repeats": args.repeats,
            "read_slice_per_s": rates["read_slice"],
            "pydicom_lut_per_s": rates["pydicom_lut"],
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
            "numpy": np.__version__,
        }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


def _pydicom_reference(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds)


def _best_rates(readers: dict, files: list[Path], repeats: int) -> dict[str, float]:
    """Files per second of each reader, best of ``repeats`` interleaved passes.

    Interleaving and keeping the best pass make the two figures comparable on a
    machine that other work shares.
    """
    for read in readers.values():
        for f in files[:20]:
            read(f)
    best = dict.fromkeys(readers, 0.0)
    for _ in range(repeats):
        for name, read in readers.items():
            start = time.perf_counter()
            for f in files:
                read(f)
            best[name] = max(best[name], len(files) / (time.perf_counter() - start))
    return {name: round(rate, 1) for name, rate in best.items()}


def _one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def _write_ct(path: Path, index: int) -> Path:
    rng = np.random.default_rng(index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.10"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.11"
    ds.Modality = "CT"
    ds.PatientID = "ID_bench"
    ds.StudyDate = "20200101"
    ds.Manufacturer = "bench"
    ds.KVP = 120
    ds.SliceThickness = 5.0
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-125.0, -125.0, 5.0 * index]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.488281, 0.488281]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter, ds.WindowWidth = 40, 80
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.RescaleType = "HU"
    ds.PixelData = rng.integers(-1000, 3000, (512, 512), dtype=np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


if __name__ == "__main__":
    main()
