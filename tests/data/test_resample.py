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


def _area_weights(side: int, size: int) -> np.ndarray:
    """[size, side]: the fraction of output pixel i's span that source pixel j covers (rows sum to 1)."""
    edges = np.arange(size + 1) * side / size
    left, right = edges[:-1, None], edges[1:, None]
    pixel = np.arange(side)[None, :]
    overlap = np.clip(np.minimum(right, pixel + 1) - np.maximum(left, pixel), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _exact_area_mean(pixels: np.ndarray, size: int) -> np.ndarray:
    """The reference: each output pixel the exact (float64) mean of the source area it covers."""
    weights = _area_weights(pixels.shape[-1], size)
    return weights @ pixels.astype(np.float64) @ weights.T


def test_area_reference_is_the_block_mean():
    block = np.arange(16, dtype=np.int16).reshape(1, 4, 4)
    np.testing.assert_allclose(_exact_area_mean(block[0], 2), [[2.5, 4.5], [10.5, 12.5]])


@settings(max_examples=30, deadline=None)
@given(factor=st.sampled_from([2, 3, 4, 8]), size=st.integers(4, 40), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.int16, np.uint8]))
def test_integer_factors_give_the_exact_block_mean_rounded_half_up(factor, size, seed, dtype):
    info = np.iinfo(dtype)
    pixels = np.random.default_rng(seed).integers(info.min, info.max, (2, factor * size, factor * size),
                                                  endpoint=True).astype(dtype)
    out = resample_slices(pixels, size)
    blocks = pixels.reshape(2, size, factor, size, factor).astype(np.int64).sum(axis=(2, 4))
    expected = (blocks + factor * factor // 2) // (factor * factor)  # floor(mean + 1/2), in integers
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)


def test_512_to_256_is_the_exact_2x2_mean_at_ties_and_extremes():
    pixels = np.array([[-1, 0], [0, 0]], np.int16)  # mean -0.25 → 0
    pixels = np.tile(pixels, (256, 256))[None]
    pixels[0, :2, 2:4] = [[-1, -1], [0, 0]]  # mean -0.5 → 0 (half up)
    pixels[0, :2, 4:6] = [[1, 1], [0, 0]]  # mean 0.5 → 1
    pixels[0, :2, 6:8] = -32768  # the int16 ends survive
    pixels[0, :2, 8:10] = 32767
    out = resample_slices(pixels, 256)[0]
    assert out[0, :5].tolist() == [0, 0, 1, -32768, 32767]
    assert (out[1:] == 0).all()


@settings(max_examples=30, deadline=None)
@given(side=st.integers(20, 120), size=st.integers(3, 100), seed=st.integers(0, 2**16))
def test_other_downsamples_are_within_1_hu_of_the_exact_area_mean(side, size, seed):
    if size >= side:
        size = side - 1
    pixels = np.random.default_rng(seed).integers(-1024, 3072, (1, side, side)).astype(np.int16)
    out = resample_slices(pixels, size)[0].astype(np.float64)
    assert np.abs(out - _exact_area_mean(pixels[0], size)).max() <= 1.0


def test_upsampling_is_bilinear():
    import torch
    import torch.nn.functional as F

    pixels = np.random.default_rng(3).integers(-1024, 3072, (1, 40, 40)).astype(np.int16)
    out = resample_slices(pixels, 100)
    bilinear = F.interpolate(torch.from_numpy(pixels).float()[None], size=(100, 100), mode="bilinear",
                             align_corners=False)[0].numpy()
    assert np.abs(out - bilinear).max() <= 0.51


def test_several_images_per_slice_are_each_resampled_alike():
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 256, (2, 3, 40, 30), dtype=np.uint8)  # [S, C, H, W]
    out = resample_slices(stack, 16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, c], resample_slices(np.ascontiguousarray(stack[:, c]), 16))
