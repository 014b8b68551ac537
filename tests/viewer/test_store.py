"""The viewer's result store: what it keeps, for how long, and the NIfTI geometry it writes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from headct.io.volume import Volume
from headct.viewer.store import VOLUME_FILE, ResultStore, volume_affine

RESULT = {"study": "1.2.3", "model": {"labels": ["any"]}, "slices": [{"index": 0}, {"index": 1}],
          "study_positive": ["any"], "study_probabilities": {"any": 0.9}}


def _volume(slices: int = 2) -> Volume:
    pixels = np.arange(slices * 4 * 6, dtype=np.int16).reshape(slices, 4, 6) - 100
    return Volume(pixels, pixel_spacing=(0.5, 0.7), slice_spacing=5.0, series_uid="9.8")


def test_volume_is_stored_as_ras_nifti_with_the_series_geometry(tmp_path: Path) -> None:
    store = ResultStore(root=tmp_path)
    volume = _volume()
    stored = store.get(store.add(RESULT, volume))
    image = nib.load(stored.folder / VOLUME_FILE)
    assert image.shape == (6, 4, 2) and image.get_data_dtype() == np.int16
    data = np.asarray(image.dataobj)
    assert data[5, 3, 1] == volume.pixels[1, 3, 5]  # x = column, y = row, z = scan order
    assert np.allclose(image.affine, np.diag([-0.7, -0.5, 5.0, 1.0]))  # columns to the left, rows to the back
    assert np.allclose(volume_affine(Volume(volume.pixels)), np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert stored.summary() == {"id": stored.id, "created": round(stored.created, 3), "series": "9.8", "slices": 2,
                                "study_positive": ["any"], "study_probabilities": {"any": 0.9}}


def test_maps_are_computed_once_and_one_slice_alone_on_request(tmp_path: Path) -> None:
    store = ResultStore(root=tmp_path)
    stored = store.get(store.add(RESULT, _volume()))
    calls = []

    def maps(volume: Volume, label: str, positions: list[int] | None) -> np.ndarray:
        calls.append(positions)
        wanted = range(volume.num_slices) if positions is None else positions
        return np.stack([np.full(volume.pixels.shape[1:], 0.25 * (k + 1), np.float32) for k in wanted])

    single = nib.load(store.cam_path(stored, "any", maps, only=1))
    assert calls == [[1]] and single.shape == (6, 4, 1)
    assert np.allclose(single.get_fdata()[..., 0], 0.5, atol=1 / 255)
    assert np.allclose(single.affine[:3, 3], nib.load(stored.folder / VOLUME_FILE).affine[:3, 3] + [0, 0, 5.0])
    full = store.cam_path(stored, "any", maps)
    assert store.cam_path(stored, "any", maps) == full and store.cam_path(stored, "any", maps, only=0) == full
    assert calls == [[1], None]  # the whole series once; after it, no single slice is computed again
    assert np.allclose(nib.load(full).get_fdata()[..., 0], 0.25, atol=1 / 255)
    with pytest.raises(ValueError, match="slice 5"):
        store.cam_path(store.get(store.add(RESULT, _volume())), "any", maps, only=5)


def test_results_expire_and_the_oldest_go_beyond_the_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("headct.viewer.store.time.time", lambda: clock[0])
    store = ResultStore(ttl_s=60, max_results=2, root=tmp_path)
    first = store.add(RESULT, _volume())
    clock[0] += 1
    second = store.add(RESULT, _volume())
    clock[0] += 1
    third = store.add(RESULT, _volume())
    assert [r["id"] for r in store.listing()] == [third, second]
    assert store.get(first) is None and not (store.root / first).exists()
    clock[0] += 61
    assert store.listing() == [] and list(store.root.iterdir()) == []
    small = ResultStore(max_bytes=1, root=tmp_path)  # the newest is always kept, even alone over the cap
    small.add(RESULT, _volume())
    clock[0] += 1
    newest = small.add(RESULT, _volume())
    assert [r["id"] for r in small.listing()] == [newest]
    store.close()
    assert not store.root.exists()
