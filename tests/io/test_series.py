"""Series selection: the right series of a many-series phantom study, a reason for every other one."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headct.errors import InputError
from headct.io import read_dicom
from headct.io.series import (
    SelectionRules,
    assess_series,
    brain_sharpness,
    contrast_evidence,
    enhancing_fraction,
    hu_histogram_fault,
    kernel_class,
    kernel_class_by_name,
    load_rules,
    select_series,
    slice_gaps,
)
from headct.io.volume import SeriesHeader, Volume
from headct.phantom.variety import EXPECTED_REASONS, VARIETY_ROLES, write_series_variety


@pytest.fixture(scope="module")
def variety(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("variety")
    return folder, write_series_variety(folder, seed=0, size=64)


@pytest.fixture(scope="module")
def volumes(variety: tuple[Path, dict[str, str]]) -> dict[str, Volume]:
    folder, roles = variety
    by_uid = {v.series_uid: v for v in read_dicom(folder)}
    return {role: by_uid[uid] for role, uid in roles.items()}


def test_the_thin_soft_series_is_chosen_and_every_other_has_its_reason(volumes: dict[str, Volume]) -> None:
    assert set(volumes) == set(VARIETY_ROLES)
    selection = select_series(list(volumes.values()))
    assert [v.series_uid for v in selection.analysed] == [volumes["thin"].series_uid]
    record = selection.report["analysed"][0]
    assert record["kernel"] == "STANDARD" and record["kernel_class"] == "soft"
    assert record["slices"] == 30 and record["faults"] == []
    assert record["slice_thickness_mm"] <= 5.0
    reasons = {entry["series"]: entry["reason"] for entry in selection.report["rejected"]}
    expected = {volumes[role].series_uid: code for role, code in EXPECTED_REASONS.items()}
    assert reasons == expected
    assert selection.warnings == []  # the chosen series is what the model expects
    assert selection.gaps == []


def test_the_localizer_is_excluded_even_when_alone(volumes: dict[str, Volume]) -> None:
    with pytest.raises(InputError, match="no series to analyse .*localizer"):
        select_series([volumes["localizer"], volumes["derived"]])


def test_without_the_thin_series_the_best_remaining_one_is_analysed_with_warnings(volumes: dict[str, Volume]) -> None:
    selection = select_series([volumes["bone"], volumes["thick"], volumes["localizer"]])
    # thick (soft) beats bone: bone_kernel ranks before thick
    assert [v.series_uid for v in selection.analysed] == [volumes["thick"].series_uid]
    assert any("slice thickness" in w and volumes["thick"].series_uid in w for w in selection.warnings)


def test_series_all_analyses_everything_and_warns_on_the_bone_kernel(volumes: dict[str, Volume]) -> None:
    selection = select_series(list(volumes.values()), SelectionRules(analyse_all=True))
    assert len(selection.analysed) == len(VARIETY_ROLES)
    assert selection.report["rejected"] == []
    bone = volumes["bone"].series_uid
    assert any("bone/sharp reconstruction kernel" in w and bone in w for w in selection.warnings)
    thin = volumes["thin"].series_uid
    assert not any(thin in w for w in selection.warnings)


def test_unknown_kernel_names_fall_back_to_the_pixels(tmp_path: Path) -> None:
    roles = write_series_variety(tmp_path, seed=1, size=64, roles=("thin", "bone"),
                                 kernels={"thin": "XQ7", "bone": "XQ7"})
    by_uid = {v.series_uid: v for v in read_dicom(tmp_path)}
    thin, bone = by_uid[roles["thin"]], by_uid[roles["bone"]]
    soft_class, soft_how = kernel_class(thin)
    sharp_class, sharp_how = kernel_class(bone)
    assert (soft_class, sharp_class) == ("soft", "sharp")
    assert "pixel high-frequency" in soft_how and "pixel high-frequency" in sharp_how
    selection = select_series([bone, thin])
    assert selection.analysed[0].series_uid == thin.series_uid
    assert selection.report["rejected"] == [
        {"series": bone.series_uid, "reason": "bone_kernel", "detail": f"bone/sharp kernel ({sharp_how})"}]


def test_contrast_without_tags_is_found_in_the_pixels(volumes: dict[str, Volume]) -> None:
    contrast = volumes["contrast"]
    untagged = replace(contrast, header=replace(contrast.header, contrast_agent=None, contrast_route=None))
    assert contrast_evidence(contrast) == "ContrastBolusAgent/Route present"
    assert "no contrast tags" in contrast_evidence(untagged)
    assert contrast_evidence(volumes["thin"]) is None


def _scipy_sharpness(pixels: np.ndarray) -> float | None:
    """brain_sharpness written with scipy.ndimage's N-D filters, as it was before the OpenCV rewrite."""
    from scipy import ndimage

    start = max((pixels.shape[0] - 8) // 2, 0)
    central = pixels[start:start + 8].astype(np.float32)
    smooth = ndimage.gaussian_filter(central, sigma=(0, 2, 2))
    brain = ndimage.binary_erosion((smooth >= 0) & (smooth <= 80), structure=np.ones((1, 5, 5), bool))
    if brain.sum() < 200:
        return None
    residual = (central - ndimage.gaussian_filter(central, sigma=(0, 1, 1)))[brain]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def _scipy_enhancing(pixels: np.ndarray) -> float | None:
    """enhancing_fraction written with scipy.ndimage, as it was before the OpenCV rewrite."""
    from scipy import ndimage

    pixels = pixels[np.unique(np.linspace(0, pixels.shape[0] - 1, min(16, pixels.shape[0])).round().astype(int))]
    skull = ndimage.binary_closing(pixels > 300, structure=np.ones((1, 3, 3), bool))
    enclosed = np.stack([ndimage.binary_fill_holes(s) for s in skull])
    inside = enclosed & ~ndimage.binary_dilation(skull, structure=np.ones((1, 5, 5), bool))
    if inside.sum() < 500:
        return None
    return float(((pixels >= 150) & (pixels <= 400))[inside].mean())


@pytest.mark.parametrize("role", ["thin", "bone", "contrast", "thick"])
def test_the_pixel_checks_measure_what_the_scipy_definitions_measure(volumes: dict[str, Volume], role: str) -> None:
    pixels = volumes[role].pixels
    assert brain_sharpness(pixels) == pytest.approx(_scipy_sharpness(pixels), rel=0.05)
    assert enhancing_fraction(pixels) == pytest.approx(_scipy_enhancing(pixels), rel=0.05, abs=5e-4)


def test_a_missing_slice_is_reported_as_a_gap(volumes: dict[str, Volume]) -> None:
    thin = volumes["thin"]
    keep = [k for k in range(thin.num_slices) if k != 11]
    holed = replace(thin, pixels=thin.pixels[keep], positions=thin.positions[keep],
                    slice_uids=[thin.slice_uids[k] for k in keep])
    gaps = slice_gaps(holed)
    assert len(gaps) == 1
    assert gaps[0]["after_slice"] == 10 and gaps[0]["missing_slices"] == 1
    assert gaps[0]["gap_mm"] == pytest.approx(2 * thin.slice_spacing, rel=1e-3)
    assert select_series([holed]).gaps == gaps


def _synthetic(tilt_deg: float = 0.0, normal_deg: float = 0.0, slices: int = 12) -> Volume:
    """A header-only series: soft kernel, axial or tilted (tilt) or turned away from z (normal)."""
    t, n = math.radians(tilt_deg), math.radians(normal_deg)
    col = (0.0, math.cos(t + n), math.sin(t + n))
    step = np.array([0.0, -math.sin(n) * 5.0, math.cos(n) * 5.0])
    pixels = np.full((slices, 32, 32), 30, np.int16)
    header = SeriesHeader(modality="CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"), kernel="H30s",
                          slice_thickness=5.0, orientation=(1.0, 0.0, 0.0, *col))
    return Volume(pixels, pixel_spacing=(1.0, 1.0), slice_spacing=5.0, series_uid="1.2.3.4",
                  header=header, positions=np.arange(slices)[:, None] * step[None, :])


def test_a_gantry_tilt_is_axial_after_correction_but_an_oblique_series_is_not() -> None:
    tilted = _synthetic(tilt_deg=25.0)
    assert "not_axial" not in {f.code for f in assess_series(tilted, SelectionRules())}
    selection = select_series([tilted])
    assert selection.report["analysed"][0]["tilt_corrected"] is True
    assert any("gantry tilt 25.0°" in w for w in selection.analysed[0].warnings)
    oblique = _synthetic(normal_deg=30.0)
    codes = [f.code for f in assess_series(oblique, SelectionRules())]
    assert codes[0] == "not_axial"
    assert "not_axial" not in {f.code for f in assess_series(oblique, SelectionRules(axial_tolerance_deg=35))}


def test_an_hu_histogram_unlike_head_ct_is_named() -> None:
    water = _synthetic()
    assert "air 0%" in hu_histogram_fault(water)
    head_like = replace(water, pixels=np.concatenate([np.full((6, 32, 32), -1000, np.int16),
                                                      np.full((5, 32, 32), 35, np.int16),
                                                      np.full((1, 32, 32), 1200, np.int16)]))
    assert hu_histogram_fault(head_like) is None


@pytest.mark.parametrize(("name", "expected"), [
    ("STANDARD", "soft"), ("SOFT", "soft"), ("BONE", "sharp"), ("BONEPLUS", "sharp"), ("LUNG", "sharp"),
    ("EDGE", "sharp"), ("H30s", "soft"), ("H31s", "soft"), ("J30s", "soft"), ("Hr38\\3", "soft"),
    ("Qr40", "soft"), ("H60s", "sharp"), ("H70h", "sharp"), ("Hr64", "sharp"), ("Br64", "sharp"),
    ("UA", "soft"), ("UB", "soft"), ("UC", "soft"), ("YC", "sharp"), ("YD", "sharp"), ("D", "sharp"),
    ("E", "sharp"), ("L", "sharp"), ("FC21", "soft"), ("FC26", "soft"), ("FC64", "soft"), ("FC30", "sharp"),
    ("FC81", "sharp"), ("H47s", None), ("XQ7", None), ("", None),
])
def test_kernel_names_by_vendor(name: str, expected: str | None) -> None:
    assert kernel_class_by_name(name) == expected


def test_rules_add_kernel_names() -> None:
    rules = SelectionRules(soft_kernels=("xq7",), sharp_kernels=("standard",))
    assert kernel_class_by_name("XQ7", rules) == "soft"
    assert kernel_class_by_name("STANDARD", rules) == "sharp"  # a site's own list wins


@given(st.text(max_size=24))
def test_any_kernel_text_classifies_without_error(text: str) -> None:
    assert kernel_class_by_name(text) in ("soft", "sharp", None)


@given(st.sampled_from("HJBQ"), st.sampled_from(["", "r", "f"]), st.integers(10, 89), st.sampled_from(["", "s", "f", "h"]))
def test_siemens_sharpness_index_decides(family: str, sub: str, index: int, suffix: str) -> None:
    result = kernel_class_by_name(f"{family}{sub}{index}{suffix}")
    assert result == ("soft" if index <= 45 else "sharp" if index >= 50 else None)


def test_rules_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("min_slices: 4\nthickness_mm: [1, 12]\nsharp_kernels: [XQ7]\n")
    rules = load_rules(path)
    assert rules.min_slices == 4 and rules.thickness_mm == (1.0, 12.0) and rules.sharp_kernels == ("XQ7",)
    assert load_rules(path, analyse_all=True).analyse_all is True
    assert load_rules(None) == SelectionRules()


@pytest.mark.parametrize(("text", "fault"), [
    ("min_slice: 4\n", "unknown series rule(s) min_slice"),
    ("thickness_mm: [5, 1]\n", "bad series rules: thickness_mm"),
    ("- 1\n- 2\n", "must be a YAML mapping"),
    ("min_slices: [\n", "cannot read series rules"),
])
def test_bad_rules_are_one_clear_line(tmp_path: Path, text: str, fault: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_rules(path)
    assert fault in str(caught.value) and "\n" not in str(caught.value)


def test_yaml_rules_change_the_choice(volumes: dict[str, Volume], tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("thickness_mm: [5, 12]\n")  # a site that wants thick slices
    selection = select_series([volumes["thin"], volumes["thick"]], load_rules(path))
    assert selection.analysed[0].series_uid == volumes["thick"].series_uid
    assert selection.report["rejected"][0]["reason"] == "too_thin"


def test_a_bone_kernel_series_alone_is_analysed_with_its_warning(volumes: dict[str, Volume]) -> None:
    bone = volumes["bone"]
    selection = select_series([bone])
    assert [v.series_uid for v in selection.analysed] == [bone.series_uid]
    assert selection.report["analysed"][0]["faults"] == [
        {"reason": "bone_kernel", "detail": "bone/sharp kernel (kernel BONEPLUS)"}]
    assert selection.warnings == [
        f"input unlike the training data: series {bone.series_uid}: bone/sharp reconstruction kernel; "
        "the model expects a soft-tissue kernel (bone/sharp kernel (kernel BONEPLUS))"]
