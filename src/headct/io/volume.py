"""The Volume: one series (or one image stack) of head CT, in scan order."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SeriesHeader:
    """Header facts of one DICOM series that series selection and the input checks read.

    Read once per slice by :func:`headct.io.dicom.read_slice` (the first slice's
    facts stand for the series). Acquisition facts only: no patient identifier.
    ``orientation`` is ImageOrientationPatient (row then column cosines);
    ``gantry_tilt`` is GantryDetectorTilt in degrees as the scanner wrote it.
    """

    modality: str | None = None
    image_type: tuple[str, ...] = ()
    kernel: str | None = None
    manufacturer: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    slice_thickness: float | None = None
    contrast_agent: str | None = None
    contrast_route: str | None = None
    gantry_tilt: float | None = None
    orientation: tuple[float, ...] | None = None


@dataclass
class Volume:
    """One series as a pixel stack plus the geometry and identifiers models need.

    ``pixels`` is ``[S, H, W]``: int16 Hounsfield units when ``kind == "hu"``,
    uint8 already-windowed grey levels when ``kind == "uint8"``. Slices are in
    scan order (along the slice normal, feet to head for axial CT).

    No patient identifiers are kept. ``patient_key`` is a salted one-way hash
    of PatientID (see :func:`headct.io.privacy.patient_key`), usable for
    splitting by patient and nothing else.

    DICOM series also carry ``header`` (:class:`SeriesHeader`) and
    ``positions``, which series selection and gantry-tilt correction read.
    """

    pixels: np.ndarray
    kind: str = "hu"
    pixel_spacing: tuple[float, float] | None = None
    slice_spacing: float | None = None
    slice_uids: list[str] = field(default_factory=list)
    series_uid: str | None = None
    study_uid: str | None = None
    patient_key: str | None = None
    warnings: list[str] = field(default_factory=list)
    header: SeriesHeader | None = None
    positions: np.ndarray | None = None  # float64 [S, 3] ImagePositionPatient per slice, scan order

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3:
            raise ValueError(f"Volume pixels must be [S, H, W], got shape {self.pixels.shape}")
        if self.kind not in ("hu", "uint8"):
            raise ValueError(f"Volume kind must be 'hu' or 'uint8', got {self.kind!r}")
        expected = np.int16 if self.kind == "hu" else np.uint8
        if self.pixels.dtype != expected:
            raise ValueError(f"Volume of kind {self.kind!r} needs {np.dtype(expected)} pixels, got {self.pixels.dtype}")
        if self.slice_uids and len(self.slice_uids) != self.pixels.shape[0]:
            raise ValueError(f"{len(self.slice_uids)} slice uids for {self.pixels.shape[0]} slices")
        if self.positions is not None and self.positions.shape != (self.pixels.shape[0], 3):
            raise ValueError(f"positions must be [S, 3] for {self.pixels.shape[0]} slices, got {self.positions.shape}")

    @property
    def num_slices(self) -> int:
        return int(self.pixels.shape[0])
