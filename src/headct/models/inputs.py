"""Input layers: raw slices in, normalised backbone channels out.

Every model begins with one of these, so a saved model takes raw values and
owns its windows and its normalisation (training, evaluation and deployment
cannot disagree):

- ``"hu"``: Hounsfield units → ``headct.windows.Windowing`` (C windows per slice)
  → per-channel normalisation;
- ``"uint8"``: already windowed 0..255 grey (PNG datasets) → x/255, then
  each slice's ``image_channels`` 8-bit images (1, or one per window such as
  brain and bone) cycled to 3 channels → the same normalisation
  (:func:`grey_to_channels`).

Channels are slice-major (slice 0's C channels, then slice 1's, ...), the layout
that timm's ``in_chans`` stem adaptation expects when it tiles a 3-channel kernel.
Raw 8-bit input is slice-major too: ``[B, K*image_channels, H, W]``.
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
    """``x [B, K, H, W]`` raw (HU or 0..255; 8-bit with C images per slice: ``[B, K*C, H, W]``)
    → ``[B, K*channels_per_slice, H, W]`` normalised floats."""

    def __init__(
        self,
        kind: str = "hu",
        windows: Sequence[WindowSpec] | None = DEFAULT_WINDOWS,
        slices: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_channels: int = 1,
    ) -> None:
        super().__init__()
        if kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {kind!r}")
        if image_channels < 1 or (kind == "hu" and image_channels != 1):
            raise ValueError(f"image_channels (8-bit images per slice) must be 1 for HU input and >= 1 for "
                             f"8-bit input, got {image_channels} for {kind}")
        self.kind = kind
        self.slices = int(slices)
        self.image_channels = int(image_channels)
        self.windowing = Windowing(windows or DEFAULT_WINDOWS) if kind == "hu" else None
        self.windows = [list(w) if not isinstance(w, str) else w for w in (windows or DEFAULT_WINDOWS)] if kind == "hu" else None
        self.channels_per_slice = (self.windowing.channels if self.windowing is not None
                                   else len(grey_channel_order(self.image_channels)))
        self.mean = _per_channel(mean, IMAGENET_MEAN, self.channels_per_slice, "mean")
        self.std = _per_channel(std, IMAGENET_STD, self.channels_per_slice, "std")
        repeat = self.slices
        self.register_buffer("_mean", torch.tensor(self.mean * repeat).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std * repeat).view(1, -1, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.slices * self.channels_per_slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planes = self.slices * self.image_channels
        if x.dim() != 4 or x.shape[1] != planes:
            what = f"{self.slices}*{self.image_channels}" if self.image_channels > 1 else f"{self.slices}"
            raise ValueError(f"expected raw slices [B, {what}, H, W], got shape {tuple(x.shape)}")
        if self.windowing is not None:
            channels = self.windowing(x)
        else:
            channels = grey_to_channels(x.float() / 255.0, self.image_channels)
        return (channels - self._mean) / self._std

    def extra_repr(self) -> str:
        images = f", image_channels={self.image_channels}" if self.image_channels > 1 else ""
        return f"kind={self.kind}, slices={self.slices}{images}, channels={self.out_channels}"


def grey_channel_order(image_channels: int) -> list[int]:
    """Which 8-bit image feeds each backbone channel of a slice: the C images cycled up to 3 channels.

    C = 1: grey, grey, grey (one pre-windowed image, as ever); C = 2: brain, bone, brain; C = 3: as
    given; C > 3: each once (the stem widens, as for HU windows). Three channels keep a pretrained
    RGB stem's kernel as trained (no ``adapt_input_conv`` rescaling) and let every channel see a real
    image; a blank or averaged third channel would feed the stem a view it never saw in training.
    """
    return [i % image_channels for i in range(max(3, image_channels))]


def grey_to_channels(grey: torch.Tensor, image_channels: int) -> torch.Tensor:
    """``[B, K*C, H, W]`` 0..1 grey, slice-major → ``[B, K*max(3, C), H, W]`` by :func:`grey_channel_order`."""
    batch, planes, height, width = grey.shape
    per_slice = grey.reshape(batch, planes // image_channels, image_channels, height, width)
    order = grey_channel_order(image_channels)
    if image_channels == 1:  # a view, not a gather: the one-image path as it always was
        return per_slice.expand(-1, -1, len(order), -1, -1).flatten(1, 2)
    return per_slice[:, :, order].flatten(1, 2)


def _per_channel(values: Sequence[float] | None, imagenet: tuple[float, ...], channels: int, what: str) -> list[float]:
    """ImageNet statistics for 3 channels; their average for any other channel count."""
    if values is None:
        values = imagenet if channels == 3 else [sum(imagenet) / 3] * channels
    values = [float(v) for v in values]
    if len(values) != channels:
        raise ValueError(f"{what} needs {channels} values (one per window channel), got {len(values)}")
    return values
