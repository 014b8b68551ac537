"""Gantry tilt: a tilted phantom acquisition, corrected, matches the same head scanned untilted."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from scipy import ndimage

from headct.io import read_dicom
from headct.io.tilt import correct_gantry_tilt, series_tilt
from headct.phantom import RESCALES, generate_study
from headct.phantom.writers import SeriesInfo, write_dicom_series

TILT = 15.0
SLICES = 32


def _write(folder: Path, tilt: float) -> tuple[Path, object]:
    study = generate_study(3, size=64, slices=SLICES, lesions=("intraparenchymal",), tilt=tilt)
    uids = [generate_uid(entropy_srcs=[str(tilt), str(k)]) for k in range(SLICES)]
    info = SeriesInfo("PHANTOM-TILT", "1.2.826.0.1.3680043.8.498.77", generate_uid(entropy_srcs=[str(tilt)]),
                      "1.2.826.0.1.3680043.8.498.78", uids, study.pixel_spacing, study.slice_thickness,
                      [float(z) - 30.0 for z in study.z], RESCALES[1], tilt=tilt)
    write_dicom_series(folder, study.hu, info)
    return folder, study


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tilt")
    straight, straight_study = _write(root / "straight", 0.0)
    tilted, _ = _write(root / "tilted", TILT)
    return {"straight": read_dicom(straight)[0], "tilted": read_dicom(tilted)[0], "study": straight_study,
            "tilted_dir": tilted}


def test_the_phantom_writes_tilted_geometry(scans: dict) -> None:
    first = sorted(scans["tilted_dir"].iterdir())[0]
    ds = pydicom.dcmread(first)
    assert float(ds.GantryDetectorTilt) == TILT
    orientation = [float(v) for v in ds.ImageOrientationPatient]
    assert orientation[:3] == [1, 0, 0]
    assert orientation[4] == pytest.approx(np.cos(np.radians(TILT)), abs=1e-5)
    assert orientation[5] == pytest.approx(np.sin(np.radians(TILT)), abs=1e-5)
    steps = np.diff(scans["tilted"].positions, axis=0)
    assert np.allclose(steps[:, :2], 0, atol=1e-3)  # the table steps along z only
    assert series_tilt(scans["tilted"]) == pytest.approx(TILT, abs=0.05)
    assert abs(series_tilt(scans["straight"])) < 1e-3


def test_an_untilted_series_is_left_alone(scans: dict) -> None:
    straight = scans["straight"]
    assert correct_gantry_tilt(straight) is straight


def test_corrected_tilt_matches_the_untilted_scan_inside_the_brain(scans: dict) -> None:
    straight, tilted, study = scans["straight"], scans["tilted"], scans["study"]
    corrected = correct_gantry_tilt(tilted)
    assert corrected.pixels.shape == straight.pixels.shape
    assert corrected.slice_uids == tilted.slice_uids
    assert any(f"gantry tilt {TILT:.1f}°" in w for w in corrected.warnings)
    assert corrected.slice_spacing == pytest.approx(straight.slice_spacing, rel=1e-4)
    assert np.allclose(corrected.header.orientation, [1, 0, 0, 0, 1, 0], atol=1e-6)
    assert np.allclose(corrected.positions, straight.positions, atol=0.01)

    brain = study.tissue_mask("gray") | study.tissue_mask("white") | study.tissue_mask("deep_gray")
    interior = ndimage.binary_erosion(brain, iterations=2) & (corrected.pixels > -1024)
    assert interior.sum() > 0.8 * ndimage.binary_erosion(brain, iterations=2).sum()
    after = np.abs(corrected.pixels.astype(float) - straight.pixels)[interior]
    before = np.abs(tilted.pixels.astype(float) - straight.pixels)[interior]
    # both scans carry their own ~4 HU noise, resampled: the bound is noise-level
    assert after.mean() < 5.0
    assert np.median(after) <= 4.0
    assert before.mean() > 2.5 * after.mean()



def test_a_missing_slice_is_bridged_by_height_not_by_index() -> None:
    """HU = 4 x height: any correct resampling to axial planes gives each output slice one value."""
    from headct.io.volume import SeriesHeader, Volume

    tilt, rows, dz, dy = math.radians(20.0), 40, 2.0, 1.0
    col = np.array([0.0, math.cos(tilt), math.sin(tilt)])
    table = np.delete(np.arange(30) * dz, 12)  # slice 12 was never received
    positions = np.stack([[0.0, 0.0, z] for z in table])
    height = positions[:, 2][:, None] + np.arange(rows)[None, :] * dy * col[2]  # [S, H]
    pixels = np.repeat(np.rint(4 * height)[:, :, None], 8, axis=2).astype(np.int16)
    header = SeriesHeader(modality="CT", orientation=(1.0, 0.0, 0.0, *col))
    volume = Volume(pixels, pixel_spacing=(dy, 1.0), slice_spacing=dz, header=header, positions=positions)
    corrected = correct_gantry_tilt(volume)
    centres = positions[:, 2] + (rows - 1) / 2 * dy * col[2]
    for m, centre in enumerate(centres):
        values = corrected.pixels[m][corrected.pixels[m] > -1024]
        assert values.size > 0
        assert np.abs(values - 4 * centre).max() <= 1.0, m
