"""Gantry tilt: resample a sheared (tilted-gantry) CT series to slices perpendicular to the table.

With a tilted gantry the image planes lean (ImageOrientationPatient's column
direction has a z component) while the table, and so ImagePositionPatient,
steps along the patient axis: slice positions do not move along the slice
normal and the stacked volume is sheared. :func:`correct_gantry_tilt` finds
the tilt from the geometry alone (GantryDetectorTilt is only quoted) and
resamples every column of pixels onto planes perpendicular to the table step
(true axial for a head scanned feet-first or head-first), keeping the in-plane
pixel spacing and one output slice per input slice, centred where the input
slice's centre was, so slice UIDs still name the slice they came from.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np

from headct.io.volume import Volume

log = logging.getLogger(__name__)

TILT_TOLERANCE_DEG = 0.5
"""Shears smaller than this are left alone (rounding in the headers reaches ~0.1°)."""
AIR_HU = -1024


def series_tilt(volume: Volume) -> float | None:
    """The shear angle (degrees) between the slice normal and the table step; None without geometry.

    Positive when the step leans toward the image's column direction.
    """
    geometry = _geometry(volume)
    if geometry is None:
        return None
    row, col, normal, step = geometry
    return math.degrees(math.atan2(float(step @ col), float(step @ normal)))


def correct_gantry_tilt(volume: Volume, *, tolerance_deg: float = TILT_TOLERANCE_DEG) -> Volume:
    """The volume resampled to planes perpendicular to the table step when it is sheared; else itself.

    Bilinear in (slice, row), the same weights for every column. Output voxels
    whose source lies outside the acquired slab (the first and last slices'
    far rows) are air (-1024 HU); the warning names the angle and their share.
    """
    angle = series_tilt(volume)
    if angle is None or abs(angle) < tolerance_deg or volume.pixel_spacing is None:
        return volume
    row, col, normal, step = _geometry(volume)  # type: ignore[misc]
    spacing = float(np.linalg.norm(step))
    if abs(float(step @ row)) > 0.01 * spacing:
        volume.warnings.append(f"slices shift along the image rows by {float(step @ row):.3g} mm per slice; "
                               f"not a gantry tilt, left uncorrected")
        return volume
    axis = step / spacing
    heights = volume.positions @ axis  # type: ignore[operator]
    if np.any(np.diff(heights) <= 0):
        volume.warnings.append("slice positions do not advance steadily along the table; gantry tilt left uncorrected")
        return volume
    new_col = np.cross(axis, row)
    new_col /= np.linalg.norm(new_col)
    pixels, outside = _shear(volume.pixels, volume.pixel_spacing[0], heights,
                             col_along_new_col=float(col @ new_col), col_along_axis=float(col @ axis))
    dy, dx = volume.pixel_spacing
    rows, cols = volume.pixels.shape[1:]
    centres = volume.positions + ((rows - 1) / 2) * dy * col  # type: ignore[operator]
    positions = centres - ((rows - 1) / 2) * dy * new_col
    header = volume.header
    stated = "" if header is None or header.gantry_tilt is None else f" (GantryDetectorTilt {header.gantry_tilt:g}°)"
    message = (f"gantry tilt {angle:.1f}°{stated}: resampled to slices perpendicular to the table "
               f"(axial), {100 * outside / pixels.size:.1f}% of voxels outside the acquired slab set to {AIR_HU} HU")
    log.info("%s", message)
    if header is not None:
        header = replace(header, orientation=tuple(float(v) for v in (*row, *new_col)))
    return replace(volume, pixels=pixels, slice_spacing=spacing, positions=positions, header=header,
                   warnings=[*volume.warnings, message])


def _geometry(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(row cosine, column cosine, unit normal, median step between slices) or None."""
    header = volume.header
    if header is None or header.orientation is None or volume.positions is None or volume.num_slices < 2:
        return None
    row, col = np.asarray(header.orientation[:3], float), np.asarray(header.orientation[3:], float)
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-6:
        return None
    normal /= np.linalg.norm(normal)
    step = np.median(np.diff(volume.positions, axis=0), axis=0)
    if np.linalg.norm(step) < 1e-6:
        return None
    return row, col, normal, step


def _shear(pixels: np.ndarray, row_mm: float, heights: np.ndarray, *, col_along_new_col: float,
           col_along_axis: float) -> tuple[np.ndarray, int]:
    """Resample ``[S, H, W]`` onto the new planes; returns (int16 pixels, voxels filled with air).

    ``heights`` are the slices' positions along the table axis (increasing).
    Output row j of slice m lies at in-plane offset ``a = j - centre`` rows
    along the new column direction. Its source row is ``centre + a / cos``
    (the old column direction projects onto the new one by ``cos``), and its
    source slice the one whose height is ``heights[m] - (source row - centre)
    * row_mm * sin``, interpolated between slices (so uneven gaps are honoured).
    Hand-written rather than ``scipy.ndimage.map_coordinates`` because the
    source (slice, row) is shared by all W columns: map_coordinates would
    need a ``[3, S, H, W]`` coordinate array, here it is ``[S, H]``.
    """
    slices, rows, _ = pixels.shape
    centre = (rows - 1) / 2
    source_row = centre + (np.arange(rows) - centre) / col_along_new_col  # [H]
    wanted = heights[:, None] - ((source_row - centre) * row_mm * col_along_axis)[None, :]  # [S, H] mm
    source_slice = np.interp(wanted, heights, np.arange(slices, dtype=np.float64))
    inside = (((source_row >= 0) & (source_row <= rows - 1))[None, :]
              & (wanted >= heights[0] - 1e-6) & (wanted <= heights[-1] + 1e-6))
    r0 = np.clip(np.floor(source_row).astype(np.intp), 0, rows - 2)
    fr = np.clip(source_row - r0, 0.0, 1.0).astype(np.float32)[None, :, None]
    k0 = np.clip(np.floor(source_slice).astype(np.intp), 0, max(slices - 2, 0))
    fk = np.clip(source_slice - k0, 0.0, 1.0).astype(np.float32)[:, :, None]
    k1 = np.minimum(k0 + 1, slices - 1)
    r0b, r1b = r0[None, :], (r0 + 1)[None, :]
    top = pixels[k0, r0b].astype(np.float32) * (1 - fr) + pixels[k0, r1b] * fr
    bottom = pixels[k1, r0b].astype(np.float32) * (1 - fr) + pixels[k1, r1b] * fr
    out = top * (1 - fk) + bottom * fk
    out[~inside] = AIR_HU
    return np.rint(out).astype(np.int16), int((~inside).sum()) * pixels.shape[2]
