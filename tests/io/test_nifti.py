"""headct.io.nifti: HU volumes laid out as DICOM axial slices, whatever the NIfTI orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from headct.errors import InputError
from headct.io.nifti import read_nifti

SHAPE = (6, 7, 5)  # voxel axes i, j, k
MARKER = (1, 2, 3)  # a voxel index (i, j, k)


def _save(tmp_path, data: np.ndarray, affine: np.ndarray, name: str = "ct.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _marked(dtype=np.int16) -> np.ndarray:
    data = np.full(SHAPE, -1000, dtype=dtype)
    data[MARKER] = 1500
    return data


def _expected_index(affine: np.ndarray) -> tuple[int, int, int]:
    """(slice, row, col) of MARKER worked out from world (RAS) coordinates.

    slice: rank along superior (z up), row: rank toward posterior (y down),
    col: rank toward the patient's left (x down).
    """
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    marker = affine[:3, :3] @ np.array(MARKER) + affine[:3, 3]
    xs, ys, zs = (np.unique(np.round(world[:, a], 6)) for a in range(3))
    mx, my, mz = np.round(marker, 6)
    return (
        int(np.searchsorted(zs, mz)),
        int(len(ys) - 1 - np.searchsorted(ys, my)),
        int(len(xs) - 1 - np.searchsorted(xs, mx)),
    )


AFFINES = {
    "RAS": np.diag([0.8, 0.9, 2.5, 1.0]),
    "LPS (as from DICOM)": np.diag([-0.8, -0.9, 2.5, 1.0]),
    "superior first, flipped": np.array(
        [[0, 0.8, 0, 10], [0, 0, -0.9, 20], [-2.5, 0, 0, 30], [0, 0, 0, 1]], dtype=float
    ),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_marker_lands_where_the_world_says(tmp_path, name) -> None:
    affine = AFFINES[name]
    vol = read_nifti(_save(tmp_path, _marked(), affine))
    where = tuple(int(v) for v in np.argwhere(vol.pixels == 1500)[0])
    assert where == _expected_index(affine)
    assert np.count_nonzero(vol.pixels == 1500) == 1
    assert vol.pixel_spacing == pytest.approx((0.9, 0.8))  # (anterior-posterior, left-right)
    assert vol.slice_spacing == pytest.approx(2.5)


def test_marker_by_hand_in_ras(tmp_path) -> None:
    # RAS identity: i grows to the right, j to anterior, k to superior. Voxel
    # (0, 0, 4) is the most left, most posterior, most superior corner: last
    # slice, last row (posterior), last column (left).
    affine = np.eye(4)
    data = np.zeros(SHAPE, dtype=np.int16)
    data[0, 0, 4] = 7
    vol = read_nifti(_save(tmp_path, data, affine))
    assert vol.pixels.shape == (5, 7, 6)
    assert vol.pixels[4, 6, 5] == 7


def test_scaling_is_applied(tmp_path) -> None:
    image = nib.Nifti1Image(np.arange(6 * 7 * 5, dtype=np.int16).reshape(SHAPE), np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "scaled.nii"
    nib.save(image, path)
    vol = read_nifti(path)
    assert vol.pixels.dtype == np.int16 and vol.kind == "hu"
    assert vol.pixels.min() == -1024 and vol.pixels.max() == 2 * (6 * 7 * 5 - 1) - 1024
    assert vol.warnings == []


def test_float_values_rounded_and_clipped_with_a_warning(tmp_path) -> None:
    data = np.zeros(SHAPE, dtype=np.float32)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = 40000.0, -0.6, 12.5
    vol = read_nifti(_save(tmp_path, data, np.eye(4)))
    values = sorted(set(vol.pixels.ravel().tolist()))
    assert values == [-1, 0, 12, 32767]  # rint: 12.5 -> 12 (to even)
    assert vol.warnings == ["1 voxels outside the int16 range were clipped"]


def test_four_d_with_one_volume_is_squeezed(tmp_path) -> None:
    data = _marked()[..., None]
    vol = read_nifti(_save(tmp_path, data, AFFINES["RAS"]))
    assert vol.pixels.shape == (5, 7, 6)
    assert tuple(np.argwhere(vol.pixels == 1500)[0]) == _expected_index(AFFINES["RAS"])


def test_other_shapes_and_bad_files_are_refused(tmp_path) -> None:
    four_d = _save(tmp_path, np.zeros((*SHAPE, 2), dtype=np.int16), np.eye(4), "4d.nii.gz")
    with pytest.raises(InputError, match=r"4d\.nii\.gz: shape \(6, 7, 5, 2\): need a 3-D"):
        read_nifti(four_d)
    (tmp_path / "junk.nii").write_bytes(b"junk" * 100)
    with pytest.raises(InputError, match=r"junk\.nii: not a readable NIfTI"):
        read_nifti(tmp_path / "junk.nii")
    with pytest.raises(InputError, match="no such file"):
        read_nifti(tmp_path / "missing.nii.gz")


def test_slice_uids_do_not_carry_the_file_name(tmp_path) -> None:
    vol = read_nifti(_save(tmp_path, _marked(), np.eye(4), "Doe_Jane_head.nii.gz"))
    assert len(vol.slice_uids) == 5 and len(set(vol.slice_uids)) == 5
    assert not any("Doe" in uid for uid in vol.slice_uids + [vol.series_uid])
