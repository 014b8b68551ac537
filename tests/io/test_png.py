"""headct.io.png: 8-bit PNG/JPG slices to a uint8 Volume."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from headct.errors import InputError
from headct.io.png import natural_key, read_image
from headct.io.privacy import short_hash


def _grey(value: int, shape=(16, 20)) -> np.ndarray:
    image = np.full(shape, value, dtype=np.uint8)
    image[0, 0] = 255 - value  # not constant, so a transposition would show
    return image


def _save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_one_grey_png(tmp_path) -> None:
    _save(tmp_path / "a.png", _grey(40))
    vol = read_image(tmp_path / "a.png")
    assert vol.kind == "uint8" and vol.pixels.dtype == np.uint8
    assert vol.pixels.shape == (1, 16, 20)
    np.testing.assert_array_equal(vol.pixels[0], _grey(40))
    assert vol.slice_uids == [short_hash("a.png")] and vol.warnings == []
    assert vol.pixel_spacing is None and vol.slice_spacing is None


def test_folder_is_naturally_sorted_and_non_images_ignored(tmp_path) -> None:
    for k in [10, 2, 1, 33]:
        _save(tmp_path / "s" / f"Slice{k}.png", _grey(k))
    (tmp_path / "s" / "labels.csv").write_text("x")
    vol = read_image(tmp_path / "s")
    np.testing.assert_array_equal(vol.pixels[:, 5, 5], [1, 2, 10, 33])
    assert vol.slice_uids == [short_hash(f"Slice{k}.png") for k in [1, 2, 10, 33]]
    assert not any("Slice" in uid for uid in vol.slice_uids)


def test_natural_key() -> None:
    names = ["a10.png", "a2.png", "A1.png", "b.png"]
    assert sorted(names, key=natural_key) == ["A1.png", "a2.png", "a10.png", "b.png"]


def test_list_of_files_keeps_the_given_order(tmp_path) -> None:
    for k in (1, 2, 3):
        _save(tmp_path / f"{k}.png", _grey(k))
    vol = read_image([tmp_path / "3.png", tmp_path / "1.png"])
    np.testing.assert_array_equal(vol.pixels[:, 5, 5], [3, 1])


def test_rgb_with_equal_channels_becomes_one_channel(tmp_path) -> None:
    grey = _grey(90)
    _save(tmp_path / "g.png", np.stack([grey] * 3, axis=-1))
    _save(tmp_path / "g.jpg", np.stack([grey] * 3, axis=-1))
    vol = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(vol.pixels[0], grey)
    assert vol.warnings == []
    jpg = read_image(tmp_path / "g.jpg")  # lossy, but equal channels stay equal
    assert jpg.pixels.shape == (1, 16, 20) and jpg.warnings == []
    assert abs(int(jpg.pixels[0, 8, 8]) - 90) <= 3


def test_true_colour_becomes_luminance_with_a_warning(tmp_path) -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # pure red: luminance 200 * 299/1000 = 59.8
    _save(tmp_path / "c.png", rgb)
    vol = read_image(tmp_path / "c.png")
    assert vol.pixels[0, 3, 3] == 60
    assert vol.warnings == ["colour image converted to luminance (ITU-R 601-2) (1 of 1 slices)"]


def test_sixteen_bit_png_is_refused(tmp_path) -> None:
    path = tmp_path / "hu.png"
    Image.fromarray(np.full((8, 8), 1200, dtype=np.uint16)).save(path)
    with pytest.raises(InputError, match=r"hu\.png: image mode I;16 is not an 8-bit") as info:
        read_image(path)
    assert "8-bit windowed" in str(info.value)


def test_different_sizes_are_refused_naming_the_file(tmp_path) -> None:
    _save(tmp_path / "s" / "1.png", _grey(1))
    _save(tmp_path / "s" / "2.png", _grey(2, shape=(16, 21)))
    with pytest.raises(InputError, match=r"2\.png: size 16x21 differs from the stack's 16x20"):
        read_image(tmp_path / "s")


def test_unreadable_and_missing_inputs(tmp_path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"bad\.png: not a readable PNG/JPG"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        read_image(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file"):
        read_image([tmp_path / "missing.png"])
