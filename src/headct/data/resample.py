"""Resample slices to the cache size: area average for pixels, nearest for masks.

Non-square slices are padded to a square first (air, -1024 HU, or black for
8-bit images) so anatomy keeps its aspect ratio. Pixels shrink by the area
average (each output pixel is the mean of the source area it covers: the
antialiasing a downsample needs, and for 512 → 256 simply the mean of each
2×2 block) and grow by bilinear interpolation; both through OpenCV
(``INTER_AREA`` / ``INTER_LINEAR``), in float32, rounded half up. A constant
region stays exactly that constant. Masks use the nearest source pixel under
the same geometry, so a mask still lines up with its resampled slice.

Exactness: for an integer factor k the result is the exact k×k block mean
rounded half up. k = 2 (512 → 256, the usual case) runs on the native dtype,
where OpenCV's area reduction is integer arithmetic, ``(sum + 2) >> 2``, about
5× cheaper than the float path; other factors go through float32, which holds
every k×k sum of int16 values exactly for k ≤ 16. For non-integer factors
OpenCV's fractional area weights come within ±1 HU of the exact area mean
(tests/data/test_resample.py).
"""

from __future__ import annotations

import cv2
import numpy as np

AIR_HU = -1024


def resample_slices(pixels: np.ndarray, size: int) -> np.ndarray:
    """``[S, H, W]`` int16 HU or uint8 → ``[S, size, size]``, same dtype, area-averaged when shrinking.

    ``[S, C, H, W]`` (C images per slice, e.g. brain and bone windows) → ``[S, C, size, size]``,
    each image resampled alike.
    """
    if pixels.ndim == 4:
        planes = resample_slices(pixels.reshape(-1, *pixels.shape[2:]), size)
        return planes.reshape(*pixels.shape[:2], size, size)
    if pixels.ndim != 3:
        raise ValueError(f"expected [S, H, W] or [S, C, H, W] pixels, got shape {pixels.shape}")
    if pixels.dtype not in (np.int16, np.uint8):
        raise ValueError(f"expected int16 or uint8 pixels, got {pixels.dtype}")
    fill = 0 if pixels.dtype == np.uint8 else AIR_HU
    square = pad_square(pixels, fill)
    if square.shape[1] == size:
        return np.ascontiguousarray(square)
    out = np.empty((square.shape[0], size, size), dtype=pixels.dtype)
    if square.shape[1] == 2 * size:  # 512 → 256: OpenCV sums each 2×2 block in integers, (sum + 2) >> 2
        for index, plane in enumerate(square):
            cv2.resize(plane, (size, size), dst=out[index], interpolation=cv2.INTER_AREA)
        return out
    method = cv2.INTER_AREA if size < square.shape[1] else cv2.INTER_LINEAR
    info = np.iinfo(pixels.dtype)
    source = np.empty(square.shape[1:], dtype=np.float32)  # one float32 buffer, reused per slice
    for index, plane in enumerate(square):
        np.copyto(source, plane, casting="unsafe")
        small = cv2.resize(source, (size, size), interpolation=method)
        small += 0.5
        np.floor(small, out=small)
        np.clip(small, info.min, info.max, out=small)
        out[index] = small  # exact: whole numbers within the dtype's range
    return out


def resample_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """``[S, H, W]`` uint8 bit flags → ``[S, size, size]`` by nearest neighbour."""
    if masks.ndim != 3:
        raise ValueError(f"expected [S, H, W] masks, got shape {masks.shape}")
    square = pad_square(masks.astype(np.uint8, copy=False), 0)
    side = square.shape[1]
    index = np.minimum(((np.arange(size) + 0.5) * side / size).astype(np.int64), side - 1)
    return np.ascontiguousarray(square[:, index][:, :, index])


def pad_square(stack: np.ndarray, fill: int) -> np.ndarray:
    """Pad ``[S, H, W]`` symmetrically to ``[S, N, N]`` with N = max(H, W)."""
    _, height, width = stack.shape
    side = max(height, width)
    if height == width:
        return stack
    top, left = (side - height) // 2, (side - width) // 2
    out = np.full((stack.shape[0], side, side), fill, dtype=stack.dtype)
    out[:, top:top + height, left:left + width] = stack
    return out
