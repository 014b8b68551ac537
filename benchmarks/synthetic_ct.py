"""Synthetic 512x512 CT DICOM series for the I/O benchmarks, written by the phantom's DICOM writer.

Random HU (not anatomy: the benchmarks time reading and resampling, not what
is seen), stored as signed int16 with intercept -1024, Explicit VR Little
Endian, the phantom's full anonymised header. One flat folder, as in RSNA.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from headct.phantom.writers import RESCALES, SeriesInfo, write_dicom_series

INT16_INTERCEPT = next(r for r in RESCALES if r.name == "int16-intercept")


def write_random_ct(folder: Path, slices: int, series_length: int = 40, side: int = 512, seed: int = 0) -> list[Path]:
    """``slices`` CT files in ``folder``, in series of ``series_length`` 5-mm slices; returns their paths."""
    paths: list[Path] = []
    for series, start in enumerate(range(0, slices, series_length)):
        n = min(series_length, slices - start)
        rng = np.random.default_rng([seed, series])
        hu = rng.integers(-1000, 2000, (n, side, side)).astype(np.float32)
        prefix = f"bench-{seed}-{series}"
        info = SeriesInfo(
            patient_id=f"bench{series}",
            study_uid=generate_uid(entropy_srcs=[prefix, "study"]),
            series_uid=generate_uid(entropy_srcs=[prefix, "series"]),
            frame_uid=generate_uid(entropy_srcs=[prefix, "frame"]),
            sop_uids=[generate_uid(entropy_srcs=[prefix, str(k)]) for k in range(n)],
            pixel_spacing=0.488281,
            slice_thickness=5.0,
            table_z=[5.0 * k for k in range(n)],
            rescale=INT16_INTERCEPT,
        )
        paths += write_dicom_series(folder, hu, info)
    return paths


def pin_to_one_core() -> None:
    """Run this process on one core only, so a figure is per core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
