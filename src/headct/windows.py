"""CT intensity windows: named presets and a windowing layer.

A window (center, width) maps HU linearly to [0, 1], clipping outside
[center - width/2, center + width/2]. The numpy function and the torch module
use the same float32 arithmetic so training, evaluation and deployment agree.
Several windows turn one HU slice into several channels (the seeds' brain,
subdural and bone windows as "RGB").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (500.0, 2000.0),
    "stroke": (40.0, 40.0),
    "soft-tissue": (40.0, 380.0),
}
"""Window presets as name → (center, width) in HU."""

DEFAULT_WINDOWS: tuple[str, ...] = ("brain", "subdural", "bone")

WindowSpec = str | tuple[float, float]


def resolve_windows(windows: Sequence[WindowSpec]) -> list[tuple[float, float]]:
    """Turn preset names and/or (center, width) pairs into (center, width) pairs."""
    resolved = []
    for window in windows:
        if isinstance(window, str):
            if window not in WINDOWS:
                raise ValueError(f"unknown window {window!r}; presets: {', '.join(WINDOWS)}")
            center, width = WINDOWS[window]
        else:
            center, width = (float(v) for v in window)
        if width <= 0:
            raise ValueError(f"window width must be positive, got {width}")
        resolved.append((float(center), float(width)))
    if not resolved:
        raise ValueError("at least one window is needed")
    return resolved


def apply_windows(hu: np.ndarray, windows: Sequence[WindowSpec] = DEFAULT_WINDOWS) -> np.ndarray:
    """Window an HU array of any shape into float32 channels ``[C, *hu.shape]`` in [0, 1]."""
    values = np.asarray(hu, dtype=np.float32)
    channels = []
    for center, width in resolve_windows(windows):
        low = np.float32(center - width / 2)
        channels.append(np.clip((values - low) / np.float32(width), 0.0, 1.0))
    return np.stack(channels).astype(np.float32, copy=False)


class Windowing(nn.Module):
    """Windowing layer: HU ``[B, K, H, W]`` (K slices) → ``[B, K*C, H, W]`` in [0, 1].

    Channels are slice-major (slice 0's C windows, then slice 1's, ...), so a
    3-window model widened to K slices by repeating its stem sees each slice
    through the same kernel. Input may be any real dtype (int16 HU included).
    """

    def __init__(self, windows: Sequence[WindowSpec] = DEFAULT_WINDOWS) -> None:
        super().__init__()
        pairs = resolve_windows(windows)
        self.names = [w if isinstance(w, str) else f"{pairs[i][0]:g}/{pairs[i][1]:g}" for i, w in enumerate(windows)]
        centers = torch.tensor([c for c, _ in pairs], dtype=torch.float32)
        widths = torch.tensor([w for _, w in pairs], dtype=torch.float32)
        self.register_buffer("low", (centers - widths / 2).view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("width", widths.view(1, 1, -1, 1, 1), persistent=False)

    @property
    def channels(self) -> int:
        """Windows per slice."""
        return int(self.width.shape[2])

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        if hu.dim() != 4:
            raise ValueError(f"Windowing expects [B, K, H, W] HU, got shape {tuple(hu.shape)}")
        x = hu.float().unsqueeze(2)  # [B, K, 1, H, W]
        out = ((x - self.low) / self.width).clamp(0.0, 1.0)
        return out.flatten(1, 2)

    def extra_repr(self) -> str:
        return f"windows={self.names}"


def parse_windows(text: str) -> list[WindowSpec]:
    """``"brain,40/80"`` → ["brain", (40.0, 80.0)]: preset names or center/width pairs, checked."""
    windows: list[WindowSpec] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if "/" in part:
            try:
                center, width = (float(v) for v in part.split("/"))
            except ValueError:
                raise ValueError(f"window {part!r} is neither a preset ({', '.join(WINDOWS)}) "
                                 "nor center/width") from None
            windows.append((center, width))
        else:
            windows.append(part)
    resolve_windows(windows)  # raises on unknown names, bad widths, or none at all
    return windows


def to_uint8(hu: np.ndarray, window: WindowSpec) -> np.ndarray:
    """HU → 8-bit grey through one window, as pre-windowed datasets' PNG/JPG slices were made:
    clip to [center - width/2, center + width/2], scale to 0..255, round."""
    return np.rint(apply_windows(hu, [window])[0] * np.float32(255.0)).astype(np.uint8)
