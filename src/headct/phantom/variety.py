"""One phantom study written as the many series a scanner sends: what series selection must sort out.

Same head (one patient seed), same StudyInstanceUID and frame of reference;
each role is one series (``SeriesDescription`` names it):

- ``thin``: axial, original, soft kernel (STANDARD), about 4 mm slices: the one to analyse;
- ``thick``: the same head at about 10 mm slices;
- ``bone``: the thin series reconstructed sharp (BONEPLUS): unsharp-masked, with fine white noise;
- ``contrast``: the thin series with enhancing vessels (cisterns and dura at 220 HU) and ContrastBolusAgent;
- ``localizer``: one lateral projection image, ImageType ORIGINAL/PRIMARY/LOCALIZER;
- ``derived``: the thin series as ImageType DERIVED/SECONDARY/AXIAL/MIP;
- ``coronal``: coronal slices through the thin series (not axial);
- ``few``: the first 6 thin slices only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from headct.phantom.generator import PhantomStudy, generate_study
from headct.phantom.writers import RESCALES, SeriesInfo, write_dicom_series

VARIETY_ROLES = ("thin", "thick", "bone", "contrast", "localizer", "derived", "coronal", "few")
EXPECTED_REASONS = {"thick": "thick", "bone": "bone_kernel", "contrast": "contrast", "localizer": "localizer",
                    "derived": "derived", "coronal": "not_axial", "few": "too_few_slices"}
"""The reason code series selection should give each role it does not choose (``thin`` is chosen)."""
KERNELS = {"thin": "STANDARD", "thick": "STANDARD", "bone": "BONEPLUS", "contrast": "STANDARD",
           "localizer": "STANDARD", "derived": "STANDARD", "coronal": "STANDARD", "few": "STANDARD"}
THIN_SLICES, THICK_SLICES, FEW_SLICES = 30, 12, 6
ENHANCED_HU = 220.0
TABLE_OFFSET = -60.0


def write_series_variety(folder: str | Path, *, seed: int = 0, size: int = 64,
                         roles: Sequence[str] = VARIETY_ROLES, kernels: Mapping[str, str] | None = None,
                         lesions: Sequence[str] = ("intraparenchymal",)) -> dict[str, str]:
    """Write the roles' series under ``folder/<role>/``; returns role → SeriesInstanceUID.

    ``kernels`` overrides ConvolutionKernel per role (e.g. an unknown name, to
    exercise the pixel-sharpness test).
    """
    from pydicom.uid import generate_uid

    unknown = sorted(set(roles) - set(VARIETY_ROLES))
    if unknown:
        raise ValueError(f"unknown series role(s) {unknown}; known: {', '.join(VARIETY_ROLES)}")
    folder = Path(folder)
    names = {**KERNELS, **(kernels or {})}

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["headct-phantom-variety", str(seed), *map(str, parts)])

    study_uid, frame_uid = uid("study"), uid("frame")
    thin = generate_study([seed, 1], patient_seed=[seed, 2], size=size, slices=THIN_SLICES, lesions=lesions)
    written: dict[str, str] = {}
    for number, role in enumerate(VARIETY_ROLES, start=2):
        if role not in roles:
            continue
        study = (generate_study([seed, 1], patient_seed=[seed, 2], size=size, slices=THICK_SLICES, lesions=lesions)
                 if role == "thick" else thin)
        hu, geometry, tags = _series(role, study, seed)
        series_uid = uid(role, "series")
        sop_uids = [uid(role, k) for k in range(hu.shape[0])]
        info = SeriesInfo(f"PHANTOM-VARIETY-{seed:04d}", study_uid, series_uid, frame_uid, sop_uids,
                          study.pixel_spacing, geometry.get("thickness", study.slice_thickness),
                          [TABLE_OFFSET + float(z) for z in study.z[: hu.shape[0]]], RESCALES[1],
                          tags=(("ConvolutionKernel", names[role]), ("SeriesNumber", number),
                                ("SeriesDescription", f"{role.upper()} (synthetic)"), *tags),
                          positions=geometry.get("positions"), orientation=geometry.get("orientation"))
        write_dicom_series(folder / role, hu, info)
        written[role] = series_uid
    return written


def _series(role: str, study: PhantomStudy, seed: int) -> tuple[np.ndarray, dict, tuple]:
    """(HU [S, H, W], geometry overrides, extra tags) of one role."""
    hu = study.hu
    if role == "bone":
        return _sharpened(hu, seed), {}, ()
    if role == "contrast":
        enhanced = hu.copy()
        vessels = study.tissue_mask("cistern") | (study.tissue == 15)  # cisterns' vessels and the dural sinuses
        enhanced[vessels] = ENHANCED_HU
        return enhanced, {}, (("ContrastBolusAgent", "IOHEXOL (synthetic)"), ("ContrastBolusRoute", "IV"))
    if role == "derived":
        return hu, {}, (("ImageType", ["DERIVED", "SECONDARY", "AXIAL", "MIP"]),)
    if role == "few":
        return hu[:FEW_SLICES], {}, ()
    if role == "localizer":
        return _localizer(study)
    if role == "coronal":
        return _coronal(study)
    return hu, {}, ()


def _sharpened(hu: np.ndarray, seed: int) -> np.ndarray:
    """A bone-kernel look: unsharp mask (edges overshoot) plus fine, uncorrelated noise."""
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(hu, sigma=(0, 1, 1))
    noise = np.random.default_rng([seed, 99]).normal(0.0, 40.0, hu.shape).astype(np.float32)
    return np.clip(hu + 2.0 * (hu - blurred) + noise, -1024, 3071).astype(np.float32)


def _localizer(study: PhantomStudy) -> tuple[np.ndarray, dict, tuple]:
    """One lateral projection (mean HU across the head, vertex up), sagittal orientation."""
    projection = study.hu.mean(axis=2)[::-1]  # [z (top first), y]
    size = study.hu.shape[1]
    image = np.repeat(projection, max(size // projection.shape[0], 1), axis=0)[None, :size]
    top = TABLE_OFFSET + float(study.z[-1])
    origin_y = -(size / 2 - 0.5) * study.pixel_spacing
    geometry = {"positions": [[0.0, origin_y, top]], "orientation": [0, 1, 0, 0, 0, -1], "thickness": 1.0}
    return image.astype(np.float32), geometry, (("ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]),)


def _coronal(study: PhantomStudy) -> tuple[np.ndarray, dict, tuple]:
    """Every 4th image row of the thin series as a coronal slice (rows = height, top first)."""
    step = 4
    rows = range(0, study.hu.shape[1], step)
    coronal = np.stack([study.hu[::-1, r, :] for r in rows])  # [n, z, x]
    size = study.hu.shape[2]
    origin = -(size / 2 - 0.5) * study.pixel_spacing
    top = TABLE_OFFSET + float(study.z[-1])
    positions = [[origin, origin + r * study.pixel_spacing, top] for r in rows]
    geometry = {"positions": positions, "orientation": [1, 0, 0, 0, 0, -1],
                "thickness": study.pixel_spacing * step}
    return coronal.astype(np.float32), geometry, ()
