"""NIfTI CT volumes (HU) to a Volume laid out as a stack of DICOM axial slices.

nibabel applies scl_slope/scl_inter and reorients to the closest RAS+ axes;
we then take slices along the superior axis in scan order (inferior first) and
lay each one out as a DICOM axial image: rows run toward posterior, columns
toward the patient's left. So a NIfTI and the DICOM series it was made from
give the same pixels, whatever orientation the NIfTI was written in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from headct.errors import InputError
from headct.io.faults import one_line
from headct.io.privacy import short_hash
from headct.io.volume import Volume

logger = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = -32768, 32767
NAN_HU = -1024
"""HU given to NaN voxels (air), with a warning."""


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a 3-D (or 4-D with one volume) NIfTI of HU into an int16 Volume.

    Values are rounded and clipped to int16 (with a warning when clipping).
    ``pixel_spacing`` is ``(row_mm, col_mm)`` and ``slice_spacing`` the
    superior-axis voxel size, both from the header zooms. Slice uids are a hash
    of the file name plus the slice index (the name itself may identify).
    """
    path = Path(path)
    image = _load(path)
    canonical = nib.as_closest_canonical(image)
    warnings: list[str] = []
    ras = np.asanyarray(canonical.dataobj)  # scaled by nibabel: [x right, y anterior, z superior]
    pixels = _to_int16(ras, warnings)
    # [x, y, z] -> [z, y, x], then flip y (rows toward posterior) and x (columns toward left)
    pixels = np.ascontiguousarray(pixels.transpose(2, 1, 0)[:, ::-1, ::-1])
    zoom_x, zoom_y, zoom_z = (float(z) for z in canonical.header.get_zooms()[:3])
    name = short_hash(path.name)
    return Volume(
        pixels=pixels,
        kind="hu",
        pixel_spacing=(zoom_y, zoom_x),
        slice_spacing=zoom_z,
        slice_uids=[f"{name}-{k:04d}" for k in range(pixels.shape[0])],
        series_uid=name,
        warnings=warnings,
    )


def _load(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types for a bad file; one line names the fault
        raise InputError(path, f"not a readable NIfTI file ({one_line(exc, path)})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"{type(image).__name__} is not NIfTI")
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        return image.slicer[:, :, :, 0]
    if len(shape) != 3:
        raise InputError(path, f"shape {shape}: need a 3-D volume (or 4-D with one volume)")
    return image


def _to_int16(values: np.ndarray, warnings: list[str]) -> np.ndarray:
    if np.issubdtype(values.dtype, np.floating):
        nan = np.isnan(values)
        if nan.any():
            warnings.append(f"{int(nan.sum())} NaN voxels set to {NAN_HU} HU")
            values = np.where(nan, NAN_HU, values)
        values = np.rint(values)
    elif values.dtype == np.int16:
        return values
    outside = (values < INT16_MIN) | (values > INT16_MAX)
    if outside.any():
        warnings.append(f"{int(outside.sum())} voxels outside the int16 range were clipped")
        values = np.clip(values, INT16_MIN, INT16_MAX)
    return values.astype(np.int16)
