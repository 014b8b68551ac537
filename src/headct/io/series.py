"""Series selection: which series of a study to analyse, and why every other one was left out.

A head-CT study holds several series: a localizer, soft-tissue and bone
reconstructions of the same scan, thin and thick slices, reformats, sometimes
a contrast scan. The model was trained on one kind (axial, original,
soft-tissue kernel, non-contrast, thin-ish slices), so :func:`select_series`
characterises each series from its header facts (:class:`SeriesHeader`) and,
where the header is silent, from its pixels, then applies these rules:

Excluding (never analysed unless ``--series all``):
  ``not_ct``       Modality is not CT.
  ``localizer``    ImageType holds LOCALIZER, SCOUT, TOPOGRAM or SURVIEW (or the
                   description says SCOUT, TOPOGRAM, SURVIEW, SCANOGRAM, LOCALIZER).
  ``derived``      ImageType DERIVED or SECONDARY, or MPR/MIP/MINIP/REFORMATTED/
                   PROJECTION IMAGE/VOLUME RENDER/CURVED.
Ranking (a series with fewer of these, in this order, is preferred; the
chosen series' own faults become warnings):
  ``not_axial``        the slice axis (the table step, so a gantry tilt is
                       allowed: it is corrected) is more than
                       ``axial_tolerance_deg`` from the patient's z axis.
  ``too_few_slices``   fewer than ``min_slices``.
  ``little_coverage``  (slices - 1) x spacing below ``min_coverage_mm``.
  ``bone_kernel``      ConvolutionKernel on the sharp lists below, or, when the
                       name is unknown, high-frequency energy in the brain
                       above ``sharpness_hu`` (see :func:`brain_sharpness`).
  ``contrast``         ContrastBolusAgent/Route present, or without them, more
                       than ``contrast_fraction`` of the intracranial voxels at
                       enhanced-vessel HU, 150..400 (see :func:`enhancing_fraction`).
  ``thick``/``too_thin`` SliceThickness outside ``thickness_mm``.
Among series with equal faults: thinner (within range) first, then more
slices, then SeriesNumber. Series not chosen are listed with their first
fault as ``reason`` (``lower_rank`` when they have none).

Kernel names (ConvolutionKernel, first value, upper case), by vendor:
  GE: soft STANDARD, SOFT, STND, BRAIN, HEAD; sharp BONE, BONEPLUS, BONE PLUS,
      LUNG, EDGE, DETAIL, CHEST.
  Siemens: letter(s) + two-digit sharpness + suffix (H30s, H31s, J30s, Hr38,
      Qr40, Br40, B30f): 45 or less soft, 50 or more sharp (H60s, H70h, Hr64,
      Br64, B70f); Siemens' index rises ~4 % resolution per step.
  Philips: soft A, B, C, UA, UB, UC, CB; sharp D, E, L, YA, YB, YC, YD, YE, YF, EC.
  Toshiba/Canon: FCnn by family: FC0x/FC1x body and FC2x/FC6x head soft
      (FC21, FC26, FC64), FC3x/FC5x/FC8x/FC9x bone, lung and inner ear sharp
      (FC30, FC35, FC52, FC81).
  Any vendor: a name holding BONE, LUNG, SHARP, EDGE is sharp; SOFT, STANDARD,
      BRAIN is soft. Extra names: ``soft_kernels``/``sharp_kernels`` rules.

The rules are a :class:`SelectionRules`, overridable from YAML
(:func:`load_rules`); ``analyse_all`` analyses every series and still reports
each one's faults. The analysed series are resampled when their gantry was
tilted (:func:`headct.io.tilt.correct_gantry_tilt`). Gaps between slices
larger than 1.5 x the median spacing are reported with the number of slices
they stand for.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from headct.errors import InputError
from headct.io.tilt import correct_gantry_tilt, series_tilt
from headct.io.volume import Volume

log = logging.getLogger(__name__)

EXCLUDING = ("not_ct", "localizer", "derived")
RANKING = ("not_axial", "too_few_slices", "little_coverage", "bone_kernel", "contrast", "thick", "too_thin")
GAP_FACTOR = 1.5

GE_SOFT = frozenset({"STANDARD", "SOFT", "STND", "BRAIN", "HEAD"})
GE_SHARP = frozenset({"BONE", "BONEPLUS", "BONE PLUS", "LUNG", "EDGE", "DETAIL", "CHEST"})
PHILIPS_SOFT = frozenset({"A", "B", "C", "UA", "UB", "UC", "CB"})
PHILIPS_SHARP = frozenset({"D", "E", "L", "YA", "YB", "YC", "YD", "YE", "YF", "EC"})
SIEMENS = re.compile(r"^[A-Z][A-Z]?(\d{2})[A-Z]?$")
CANON = re.compile(r"^FC(\d)(\d)")
CANON_SOFT_FAMILIES = frozenset({0, 1, 2, 6})
CANON_SHARP_FAMILIES = frozenset({3, 5, 8, 9})
SHARP_WORDS = ("BONE", "LUNG", "SHARP", "EDGE")
SOFT_WORDS = ("SOFT", "STANDARD", "BRAIN")
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW"})
LOCALIZER_WORDS = re.compile(r"SCOUT|TOPOGRAM|SURVIEW|SCANOGRAM|LOCALI[SZ]ER")
DERIVED_TYPES = frozenset({"MPR", "MIP", "MINIP", "REFORMATTED", "PROJECTION IMAGE", "VOLUME RENDER", "CURVED"})

BRAIN_HU = (0.0, 80.0)
HEAD_CT_FRACTIONS = {"air": (0.05, 0.90), "brain": (0.05, 1.0), "bone": (0.0, 0.35)}
"""Bounds on the share of voxels below -900 HU, in 0..80 HU and above 300 HU of a head CT series."""


@dataclass
class SelectionRules:
    """The thresholds of series selection; every field can be set from YAML."""

    axial_tolerance_deg: float = 15.0
    min_slices: int = 10
    min_coverage_mm: float = 80.0
    thickness_mm: tuple[float, float] = (0.4, 5.0)
    sharpness_hu: float = 20.0
    contrast_fraction: float = 0.005
    soft_kernels: tuple[str, ...] = ()
    sharp_kernels: tuple[str, ...] = ()
    analyse_all: bool = False

    def __post_init__(self) -> None:
        self.thickness_mm = tuple(float(v) for v in self.thickness_mm)  # type: ignore[assignment]
        if len(self.thickness_mm) != 2 or self.thickness_mm[0] > self.thickness_mm[1]:
            raise ValueError(f"thickness_mm must be [low, high] with low <= high, got {list(self.thickness_mm)}")
        self.soft_kernels = tuple(str(k).strip().upper() for k in self.soft_kernels)
        self.sharp_kernels = tuple(str(k).strip().upper() for k in self.sharp_kernels)


def load_rules(path: str | Path | None = None, *, analyse_all: bool = False) -> SelectionRules:
    """Rules from a YAML mapping of :class:`SelectionRules` fields (defaults without a file)."""
    values: dict[str, Any] = {}
    if path is not None:
        import yaml

        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise InputError(path, f"cannot read series rules: {type(err).__name__}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise InputError(path, "series rules must be a YAML mapping of rule: value")
        values = dict(loaded or {})
        known = {f.name for f in fields(SelectionRules)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(path, f"unknown series rule(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values["analyse_all"] = analyse_all or bool(values.get("analyse_all", False))
    try:
        return SelectionRules(**values)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"bad series rules: {err}") from None


@dataclass
class Fault:
    """One rule a series breaks: a reason code and the facts behind it."""

    code: str
    detail: str


@dataclass
class Selection:
    """What :func:`select_series` decided for one study."""

    analysed: list[Volume]
    report: dict[str, Any]  # {"analysed": [...], "rejected": [...]}
    gaps: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --- the decision ------------------------------------------------------------


def select_series(volumes: list[Volume], rules: SelectionRules | None = None) -> Selection:
    """Choose the series to analyse (all with ``rules.analyse_all``); tilt-correct them; say why.

    Raises :class:`InputError` when every series is excluded (localizer,
    derived, not CT) and ``analyse_all`` is off.
    """
    rules = rules or SelectionRules()
    kernels = {id(volume): _kernel_verdict(volume, rules) for volume in volumes}  # the pixel test runs once
    assessed = [(volume, assess_series(volume, rules, kernel=kernels[id(volume)])) for volume in volumes]
    eligible = [(v, f) for v, f in assessed if not any(x.code in EXCLUDING for x in f)]
    if rules.analyse_all:
        chosen = list(assessed)
    elif eligible:
        chosen = [min(eligible, key=lambda vf: _rank(vf[0], vf[1], rules))]
    else:
        reasons = "; ".join(f"{_name(v)}: {f[0].code}" for v, f in assessed)
        raise InputError(None, f"no series to analyse ({reasons})")

    chosen_ids = {id(v) for v, _ in chosen}
    analysed, records, warnings, gaps = [], [], [], []
    for volume, faults in chosen:
        corrected = correct_gantry_tilt(volume)
        analysed.append(corrected)
        records.append(_analysed_record(corrected, faults, rules, kernels[id(volume)]))
        warnings += input_warnings(corrected, faults)
        gaps += slice_gaps(volume)
    rejected = [{"series": v.series_uid, "reason": f[0].code if f else "lower_rank",
                 "detail": "; ".join(x.detail for x in f) if f else _lower_rank_detail(v, chosen[0][0])}
                for v, f in assessed if id(v) not in chosen_ids]
    for entry in rejected:
        log.info("series %s not analysed: %s (%s)", entry["series"], entry["reason"], entry["detail"])
    return Selection(analysed, {"analysed": records, "rejected": rejected}, gaps, warnings)


def assess_series(volume: Volume, rules: SelectionRules,
                  kernel: tuple[str | None, str] | None = None) -> list[Fault]:
    """Every rule the series breaks, excluding faults first, then in ranking order.

    ``kernel``: :func:`kernel_class`'s verdict when the caller has it already.
    """
    header = volume.header
    if volume.kind != "hu" or header is None:
        return []  # PNG stacks and NIfTI volumes: no header facts to judge
    faults: list[Fault] = []
    if header.modality and header.modality.upper() != "CT":
        faults.append(Fault("not_ct", f"modality {header.modality}"))
    if LOCALIZER_TYPES & set(header.image_type) or LOCALIZER_WORDS.search((header.series_description or "").upper()):
        faults.append(Fault("localizer", "ImageType/description says localizer"))
    derived = _derived(header.image_type)
    if derived:
        faults.append(Fault("derived", f"ImageType {'/'.join(header.image_type)}"))
    angle = axial_angle(volume)
    if angle is not None and angle > rules.axial_tolerance_deg:
        faults.append(Fault("not_axial", f"slice axis {angle:.0f}° from the patient axis (tolerance "
                                         f"{rules.axial_tolerance_deg:g}°)"))
    if volume.num_slices < rules.min_slices:
        faults.append(Fault("too_few_slices", f"{volume.num_slices} slices, fewer than {rules.min_slices}"))
    coverage = _coverage(volume)
    if coverage is not None and coverage < rules.min_coverage_mm and volume.num_slices >= rules.min_slices:
        faults.append(Fault("little_coverage", f"covers {coverage:.0f} mm, less than {rules.min_coverage_mm:g} mm"))
    kernel, how = kernel or kernel_class(volume, rules)
    if kernel == "sharp":
        faults.append(Fault("bone_kernel", f"bone/sharp kernel ({how})"))
    contrast = contrast_evidence(volume, rules)
    if contrast:
        faults.append(Fault("contrast", contrast))
    thickness = _thickness(volume)
    low, high = rules.thickness_mm
    if thickness is not None and thickness > high:
        faults.append(Fault("thick", f"slice thickness {thickness:.3g} mm, more than {high:g} mm"))
    elif thickness is not None and thickness < low:
        faults.append(Fault("too_thin", f"slice thickness {thickness:.3g} mm, less than {low:g} mm"))
    return faults


def _rank(volume: Volume, faults: list[Fault], rules: SelectionRules) -> tuple:
    codes = {f.code for f in faults}
    thickness = _thickness(volume)
    return (*(code in codes for code in RANKING), thickness if thickness is not None else math.inf,
            -volume.num_slices, (volume.header.series_number if volume.header and volume.header.series_number
                                 is not None else 0), volume.series_uid or "")


def _lower_rank_detail(volume: Volume, chosen: Volume) -> str:
    mine, theirs = _thickness(volume), _thickness(chosen)
    if mine is not None and theirs is not None and mine > theirs:
        return f"thicker slices than the chosen series ({mine:.3g} vs {theirs:.3g} mm)"
    return f"the chosen series ranks first ({chosen.num_slices} vs {volume.num_slices} slices)"


# --- characterising one series -------------------------------------------------


def kernel_class(volume: Volume, rules: SelectionRules | None = None) -> tuple[str | None, str]:
    """("soft" | "sharp" | None, how it was decided): by kernel name, else by the pixels."""
    rules = rules or SelectionRules()
    name = (volume.header.kernel if volume.header else None) or ""
    by_name = kernel_class_by_name(name, rules)
    if by_name is not None:
        return by_name, f"kernel {name}"
    sharpness = brain_sharpness(volume.pixels)
    if sharpness is None:
        return None, f"kernel {name or 'not given'}; too little brain to judge the pixels"
    what = "sharp" if sharpness > rules.sharpness_hu else "soft"
    return what, (f"kernel {name or 'not given'}; pixel high-frequency {sharpness:.1f} HU "
                  f"{'>' if what == 'sharp' else '<='} {rules.sharpness_hu:g}")


def kernel_class_by_name(kernel: str, rules: SelectionRules | None = None) -> str | None:
    """"soft", "sharp" or None (unknown) from a ConvolutionKernel value, per the vendor lists above."""
    rules = rules or SelectionRules()
    name = kernel.split("\\")[0].strip().upper()
    if not name:
        return None
    if name in rules.sharp_kernels:
        return "sharp"
    if name in rules.soft_kernels:
        return "soft"
    if name in GE_SHARP or name in PHILIPS_SHARP:
        return "sharp"
    if name in GE_SOFT or name in PHILIPS_SOFT:
        return "soft"
    canon = CANON.match(name)
    if canon:
        family = int(canon.group(1))
        return "soft" if family in CANON_SOFT_FAMILIES else "sharp" if family in CANON_SHARP_FAMILIES else None
    siemens = SIEMENS.match(name)
    if siemens:
        index = int(siemens.group(1))
        return "soft" if index <= 45 else "sharp" if index >= 50 else None
    if any(word in name for word in SHARP_WORDS):
        return "sharp"
    if any(word in name for word in SOFT_WORDS):
        return "soft"
    return None


def brain_sharpness(pixels: np.ndarray, *, max_slices: int = 8) -> float | None:
    """High-frequency energy inside the brain (HU): robust SD of HU minus its 1-pixel Gaussian blur.

    Soft-tissue kernels leave a few HU of fine noise in the brain (up to ~15 HU
    on thin, low-dose slices); bone and sharp kernels tens (the phantom's
    soft series ~3 HU, its bone series ~35 HU), hence the default 20 HU. The brain mask is where the 2-pixel-blurred HU lie in
    0..80 (blurring first keeps a noisy sharp series' brain in the mask),
    eroded by 2 pixels so tissue edges do not count. Central slices only.
    None when fewer than 200 brain pixels.
    """
    residuals = []
    for plane in _central(pixels, max_slices).astype(np.float32):
        smooth = _blur(plane, 2.0)
        brain = _erode(((smooth >= BRAIN_HU[0]) & (smooth <= BRAIN_HU[1])).astype(np.uint8), 5).astype(bool)
        residuals.append((plane - _blur(plane, 1.0))[brain])
    residual = np.concatenate(residuals)
    if residual.size < 200:
        return None
    residual = residual[::_sample_stride(residual.size)]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


MEDIAN_SAMPLES = 100_000
"""A robust SD from a regular sample of this many brain pixels is within a fraction of an HU of the full
one (its standard error is ~0.3 % of the SD), and the two medians over a whole 512² series are the
slowest part of the pixel checks."""


def _sample_stride(count: int) -> int:
    return max(1, count // MEDIAN_SAMPLES)


def enhancing_fraction(pixels: np.ndarray, *, max_slices: int = 16) -> float | None:
    """Share of intracranial voxels at enhanced-vessel HU (150..400), on up to 16 slices spread over the series.

    Intracranial: inside the skull (HU > 300, closed by one pixel, holes filled
    per slice), 2 pixels away from bone (partial volume). Raw HU, since thin
    vessels vanish under smoothing; soft-kernel noise never reaches 150 HU and
    calcifications or clotted blood stay below the default 0.5 % in
    non-contrast scans, while enhancing vessels, sinuses and dura add more.
    None when fewer than 500 voxels are enclosed by skull.
    """
    pixels = pixels[np.unique(np.linspace(0, pixels.shape[0] - 1, min(max_slices, pixels.shape[0])).round().astype(int))]
    enclosed = enhanced = 0
    for plane in pixels:
        inside = _intracranial(plane)
        enclosed += np.count_nonzero(inside)
        enhanced += np.count_nonzero(inside & (plane >= 150) & (plane <= 400))
    if enclosed < 500:
        return None
    return enhanced / enclosed


def contrast_evidence(volume: Volume, rules: SelectionRules | None = None) -> str | None:
    """Why the series looks contrast-enhanced (tags, else pixels), or None."""
    rules = rules or SelectionRules()
    header = volume.header
    if header is not None and (header.contrast_agent or header.contrast_route):
        return "ContrastBolusAgent/Route present"
    share = enhancing_fraction(volume.pixels)
    if share is not None and share > rules.contrast_fraction:
        return (f"no contrast tags, but {100 * share:.1f}% of intracranial voxels at enhanced-vessel HU "
                f"(> {100 * rules.contrast_fraction:g}%)")
    return None


def axial_angle(volume: Volume) -> float | None:
    """Degrees between the series' slice axis and the patient's z axis (table step, else normal)."""
    axis = None
    if volume.positions is not None and volume.num_slices > 1:
        step = np.median(np.diff(volume.positions, axis=0), axis=0)
        if np.linalg.norm(step) > 1e-6:
            axis = step / np.linalg.norm(step)
    if axis is None and volume.header is not None and volume.header.orientation is not None:
        o = np.asarray(volume.header.orientation, float)
        normal = np.cross(o[:3], o[3:])
        if np.linalg.norm(normal) > 1e-6:
            axis = normal / np.linalg.norm(normal)
    if axis is None:
        return None
    return math.degrees(math.acos(min(1.0, abs(float(axis[2])))))


def slice_gaps(volume: Volume) -> list[dict[str, Any]]:
    """Gaps between neighbouring slices above 1.5 x the median spacing, with the slices they stand for."""
    if volume.positions is None or volume.num_slices < 3:
        return []
    step = np.median(np.diff(volume.positions, axis=0), axis=0)
    if np.linalg.norm(step) < 1e-6:
        return []
    distances = np.diff(volume.positions @ (step / np.linalg.norm(step)))
    median = float(np.median(distances))
    return [{"series": volume.series_uid, "after_slice": int(i), "gap_mm": round(float(d), 3),
             "median_mm": round(median, 3), "missing_slices": max(int(round(d / median)) - 1, 1)}
            for i, d in enumerate(distances) if median > 0 and d > GAP_FACTOR * median]


def input_warnings(volume: Volume, faults: list[Fault]) -> list[str]:
    """Out-of-distribution warnings for an analysed series: its faults and an HU histogram unlike head CT."""
    name = _name(volume)
    messages = {
        "bone_kernel": "bone/sharp reconstruction kernel; the model expects a soft-tissue kernel",
        "contrast": "looks contrast-enhanced; the model expects non-contrast CT",
        "not_axial": "not axial; the model expects axial slices",
        "thick": "slice thickness outside the expected range",
        "too_thin": "slice thickness outside the expected range",
        "too_few_slices": "few slices for a head CT",
        "little_coverage": "covers little of the head",
        "localizer": "a localizer, not a CT volume",
        "derived": "a derived/reformatted series, not original axial CT",
        "not_ct": "not CT",
    }
    warnings = [f"input unlike the training data: series {name}: {messages[f.code]} ({f.detail})" for f in faults]
    histogram = hu_histogram_fault(volume)
    if histogram:
        warnings.append(f"input unlike the training data: series {name}: {histogram}")
    for message in warnings:
        log.warning("%s", message)
    return warnings


def hu_histogram_fault(volume: Volume) -> str | None:
    """What is off in the share of air, brain-range and bone voxels versus head CT, or None."""
    if volume.kind != "hu" or volume.pixels.size == 0:
        return None
    pixels, size = volume.pixels, volume.pixels.size
    shares = {"air": np.count_nonzero(pixels < -900) / size,
              "brain": np.count_nonzero((pixels >= BRAIN_HU[0]) & (pixels <= BRAIN_HU[1])) / size,
              "bone": np.count_nonzero(pixels > 300) / size}
    off = [f"{name} {100 * share:.0f}% (head CT: {100 * low:.0f}-{100 * high:.0f}%)"
           for name, share in shares.items() for low, high in [HEAD_CT_FRACTIONS[name]] if not low <= share <= high]
    return f"HU histogram unlike head CT: {', '.join(off)}" if off else None


# --- helpers -------------------------------------------------------------------


def _kernel_verdict(volume: Volume, rules: SelectionRules) -> tuple[str | None, str]:
    return kernel_class(volume, rules) if volume.header is not None and volume.kind == "hu" else (None, "")


def _analysed_record(volume: Volume, faults: list[Fault], rules: SelectionRules,
                     kernel_verdict: tuple[str | None, str]) -> dict[str, Any]:
    header = volume.header
    kernel, how = kernel_verdict
    tilt = series_tilt(volume) if volume.positions is not None else None
    stated_tilt = header.gantry_tilt if header is not None else None
    return {
        "series": volume.series_uid,
        "description": header.series_description if header else None,
        "series_number": header.series_number if header else None,
        "kernel": header.kernel if header else None,
        "kernel_class": kernel,
        "image_type": list(header.image_type) if header else [],
        "slices": volume.num_slices,
        "slice_thickness_mm": _round(_thickness(volume)),
        "slice_spacing_mm": _round(volume.slice_spacing),
        "coverage_mm": _round(_coverage(volume)),
        "gantry_tilt_deg": _round(stated_tilt),
        "tilt_corrected": any(w.startswith("gantry tilt") for w in volume.warnings),
        "residual_tilt_deg": _round(tilt),
        "reasons": _reasons(faults, how, rules),
        "faults": [{"reason": f.code, "detail": f.detail} for f in faults],
    }


def _reasons(faults: list[Fault], kernel_how: str, rules: SelectionRules) -> list[str]:
    codes = {f.code for f in faults}
    if rules.analyse_all:
        return ["--series all: every series is analysed"]
    reasons = ["first in rank among the eligible series (CT, not localizer, not derived)"]
    checks = {"not_axial": "axial", "too_few_slices": f">= {rules.min_slices} slices",
              "little_coverage": f">= {rules.min_coverage_mm:g} mm coverage",
              "bone_kernel": f"soft-tissue kernel ({kernel_how})" if kernel_how else "soft-tissue kernel",
              "contrast": "no sign of contrast",
              "thick": f"thickness in {rules.thickness_mm[0]:g}-{rules.thickness_mm[1]:g} mm"}
    reasons += [text for code, text in checks.items() if code not in codes]
    return reasons


def _derived(image_type: tuple[str, ...]) -> bool:
    if not image_type:
        return False
    if image_type[0] == "DERIVED" or (len(image_type) > 1 and image_type[1] == "SECONDARY"):
        return True
    return any(value in DERIVED_TYPES for value in image_type)


def _thickness(volume: Volume) -> float | None:
    header = volume.header
    if header is not None and header.slice_thickness:
        return float(header.slice_thickness)
    return volume.slice_spacing


def _coverage(volume: Volume) -> float | None:
    if volume.slice_spacing is None or volume.num_slices < 2:
        return None
    return (volume.num_slices - 1) * float(volume.slice_spacing)


# The pixel checks run on every series of every study before the model does, so
# they use OpenCV's 2-D filters (a few ms per 512² slice) instead of
# scipy.ndimage's N-D ones (tens of ms); same kernels: Gaussian truncated at 4 sigma
# with mirrored edges, square structuring elements with zeros outside the image.


def _blur(plane: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(plane, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _erode(mask: np.ndarray, side: int) -> np.ndarray:
    return cv2.erode(mask, np.ones((side, side), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)


def _intracranial(plane: np.ndarray) -> np.ndarray:
    """Inside the skull (HU > 300, closed by one pixel, holes filled), 2 pixels away from bone."""
    bone = (plane > 300).astype(np.uint8)
    skull = _erode(cv2.dilate(bone, np.ones((3, 3), np.uint8)), 3)
    # holes filled: everything the outside cannot reach (flood from a zero border)
    outside = np.pad(skull, 1)
    cv2.floodFill(outside, None, (0, 0), 2)
    enclosed = outside[1:-1, 1:-1] != 2
    near_bone = cv2.dilate(skull, np.ones((5, 5), np.uint8)).astype(bool)
    return enclosed & ~near_bone


def _central(pixels: np.ndarray, count: int) -> np.ndarray:
    start = max((pixels.shape[0] - count) // 2, 0)
    return pixels[start:start + count]


def _name(volume: Volume) -> str:
    return volume.series_uid or "(no SeriesInstanceUID)"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
