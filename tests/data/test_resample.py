import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headct.data.resample import AIR_HU, pad_square, resample_masks, resample_slices


@settings(max_examples=25, deadline=None)
@given(value=st.integers(-1024, 3000), side=st.sampled_from([64, 96, 128]), size=st.sampled_from([16, 32, 50, 200]))
def test_constant_regions_keep_their_value(value, side, size):
    pixels = np.full((2, side, side), value, dtype=np.int16)
    out = resample_slices(pixels, size)
    assert out.shape == (2, size, size) and out.dtype == np.int16
    assert (out == value).all()


def test_downsampling_is_antialiased():
    stripes = np.zeros((1, 64, 64), np.uint8)
    stripes[:, :, ::2] = 200  # 1-pixel stripes: a naive stride-2 pick gives all 200 or all 0
    out = resample_slices(stripes, 16)
    assert (out[:, :, 1:-1] == 100).all()  # every output pixel averages both stripes (edges clip the filter)


def test_square_padding_keeps_aspect():
    pixels = np.full((1, 32, 64), 100, np.int16)
    out = resample_slices(pixels, 32)
    assert out[0, 0, 16] == AIR_HU and out[0, 16, 16] == 100 and out[0, 31, 16] == AIR_HU
    grey = pad_square(np.full((1, 2, 4), 7, np.uint8), 0)
    np.testing.assert_array_equal(grey[0], [[0, 0, 0, 0], [7, 7, 7, 7], [7, 7, 7, 7], [0, 0, 0, 0]])


def test_masks_resample_nearest_in_register_with_pixels():
    masks = np.zeros((1, 64, 64), np.uint8)
    masks[0, 16:48, 16:48] = 4 | 32
    pixels = np.where(masks > 0, 60, 0).astype(np.int16)
    small_mask, small = resample_masks(masks, 16)[0], resample_slices(pixels, 16)[0]
    assert set(np.unique(small_mask)) == {0, 36}  # bit flags never blend
    np.testing.assert_array_equal(small_mask[4:12, 4:12], 36)
    assert (small[5:11, 5:11] == 60).all()
    np.testing.assert_array_equal(small >= 30, small_mask == 36)  # the mask edge sits at the half-way value


def test_uint8_and_clipping():
    pixels = np.full((1, 8, 8), 255, np.uint8)
    assert (resample_slices(pixels, 20) == 255).all()
    with pytest.raises(ValueError):
        resample_slices(np.zeros((1, 8, 8), np.float32), 4)
