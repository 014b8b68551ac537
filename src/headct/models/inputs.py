"""Input layers: raw slices in, normalised backbone channels out.

Every model begins with one of these, so a saved model takes raw values and
owns its windows and its normalisation (training, evaluation and deployment
cannot disagree):

- ``"hu"``: Hounsfield units → ``headct.windows.Windowing`` (C windows per slice)
  → per-channel normalisation;
- ``"uint8"``: already windowed 0..255 grey (PNG datasets) → x/255, grey
  repeated to 3 channels per slice → the same normalisation.

Channels are slice-major (slice 0's C channels, then slice 1's, ...), the layout
that timm's ``in_chans`` stem adaptation expects when it tiles a 3-channel kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from headct.windows import DEFAULT_WINDOWS, Windowing, WindowSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_KINDS = ("hu", "uint8")


class InputLayer(nn.Module):
    """``x [B, K, H, W]`` raw (HU or 0..255) → ``[B, K*C, H, W]`` normalised floats."""

    def __init__(
        self,
        kind: str = "hu",
        windows: Sequence[WindowSpec] | None = DEFAULT_WINDOWS,
        slices: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {kind!r}")
        self.kind = kind
        self.slices = int(slices)
        self.windowing = Windowing(windows or DEFAULT_WINDOWS) if kind == "hu" else None
        self.windows = [list(w) if not isinstance(w, str) else w for w in (windows or DEFAULT_WINDOWS)] if kind == "hu" else None
        self.channels_per_slice = self.windowing.channels if self.windowing is not None else 3
        self.mean = _per_channel(mean, IMAGENET_MEAN, self.channels_per_slice, "mean")
        self.std = _per_channel(std, IMAGENET_STD, self.channels_per_slice, "std")
        repeat = self.slices
        self.register_buffer("_mean", torch.tensor(self.mean * repeat).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std * repeat).view(1, -1, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.slices * self.channels_per_slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.slices:
            raise ValueError(f"expected raw slices [B, {self.slices}, H, W], got shape {tuple(x.shape)}")
        if self.windowing is not None:
            channels = self.windowing(x)
        else:
            grey = x.float() / 255.0
            channels = grey.unsqueeze(2).expand(-1, -1, 3, -1, -1).flatten(1, 2)
        return (channels - self._mean) / self._std

    def extra_repr(self) -> str:
        return f"kind={self.kind}, slices={self.slices}, channels={self.out_channels}"


def _per_channel(values: Sequence[float] | None, imagenet: tuple[float, ...], channels: int, what: str) -> list[float]:
    """ImageNet statistics for 3 channels; their average for any other channel count."""
    if values is None:
        values = imagenet if channels == 3 else [sum(imagenet) / 3] * channels
    values = [float(v) for v in values]
    if len(values) != channels:
        raise ValueError(f"{what} needs {channels} values (one per window channel), got {len(values)}")
    return values
