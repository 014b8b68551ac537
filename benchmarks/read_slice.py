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
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from synthetic_ct import pin_to_one_core, write_random_ct

from headct.bench import cpu_name, write_json
from headct.io.dicom import read_slice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the best is kept")
    parser.add_argument("--json", default="benchmarks/results/read_slice.json")
    args = parser.parse_args()
    pin_to_one_core()

    with tempfile.TemporaryDirectory() as tmp:
        files = write_random_ct(Path(tmp), args.files, series_length=args.files)
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
            "cpu": cpu_name(),
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
            "numpy": np.__version__,
        }
    out = Path(args.json)
    write_json(result, out)
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


if __name__ == "__main__":
    main()
