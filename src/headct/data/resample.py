"""Resample slices to the cache size: antialiased for pixels, nearest for masks.

Non-square slices are padded to a square first (air, -1024 HU, or black for
8-bit images) so anatomy keeps its aspect ratio. Pixels go through torch's
antialiased bilinear interpolation (a constant region stays exactly that
constant); masks use the nearest source pixel under the same geometry, so a
mask still lines up with its resampled slice.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

AIR_HU = -1024
_CHUNK = 16  # slices per interpolate call: bounds the float32 working memory


def resample_slices(pixels: np.ndarray, size: int) -> np.ndarray:
    """``[S, H, W]`` int16 HU or uint8 → ``[S, size, size]``, same dtype, antialiased."""
    if pixels.ndim != 3:
        raise ValueError(f"expected [S, H, W] pixels, got shape {pixels.shape}")
    if pixels.dtype not in (np.int16, np.uint8):
        raise ValueError(f"expected int16 or uint8 pixels, got {pixels.dtype}")
    fill = 0 if pixels.dtype == np.uint8 else AIR_HU
    square = pad_square(pixels, fill)
    if square.shape[1] == size:
        return np.ascontiguousarray(square)
    info = np.iinfo(pixels.dtype)
    out = np.empty((square.shape[0], size, size), dtype=pixels.dtype)
    for start in range(0, square.shape[0], _CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(square[start:start + _CHUNK])).float().unsqueeze(1)
        small = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + _CHUNK] = small.squeeze(1).round_().clamp_(info.min, info.max).numpy()
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
