"""EfficientNet-B0 pipelines for ICH (the Forsberg seed): 2-D, 2.5-D and slice-sequence LSTM.

- ``effnet-2d``: one slice, three windows as channels → logits.
- ``effnet-2.5d``: the slice and ``context`` neighbours on each side, 3 windows
  each (9 channels at context 1); the stem is widened by timm's ``in_chans``,
  which with pretrained weights repeats the 3-channel kernel and scales by
  3/in_chans: the seed's "tile and divide".
- ``effnet-lstm``: a shared backbone encodes each of the 2k+1 slices, the
  feature vectors go in scan order through a 1-layer LSTM (hidden 256), the
  last hidden state (both directions' if bidirectional) → Linear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from headct.models.backbones import (
    Pretrained,
    SliceClassifier,
    create_encoder,
    feature_width,
    spec_for,
)
from headct.models.inputs import InputLayer
from headct.models.registry import register_model
from headct.windows import DEFAULT_WINDOWS

TIMM_NAME = "efficientnet_b0"
TARGETS: dict[str, Any] = {  # map defaults (ModelSpec.target_*): the best pooled pointing on the hard phantom
    "target_layers": ["encoder.blocks.4", "encoder.conv_head"],  # stride 16 and 32, averaged (docs/results.md)
    "target_grid": "padded",  # stride-2 3x3/5x5 convs with symmetric padding (see ModelSpec.target_grid)
    "target_method": "gradcam++",
    "target_head_mask": True,  # a bleed cannot lie in air
}


@register_model("effnet-2d")
def effnet_2d(
    num_classes: int,
    *,
    pretrained: Pretrained = False,
    input_kind: str = "hu",
    image_channels: int = 1,
    windows: Sequence[Any] | None = DEFAULT_WINDOWS,
    drop_rate: float = 0.2,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """EfficientNet-B0 on one slice (3 windows as channels)."""
    return SliceClassifier(
        TIMM_NAME, num_classes, **TARGETS, pretrained=pretrained,
        input_kind=input_kind, image_channels=image_channels, windows=windows, drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )


@register_model("effnet-2.5d")
def effnet_25d(
    num_classes: int,
    *,
    context: int = 1,
    pretrained: Pretrained = False,
    input_kind: str = "hu",
    image_channels: int = 1,
    windows: Sequence[Any] | None = DEFAULT_WINDOWS,
    drop_rate: float = 0.2,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """EfficientNet-B0 on the slice ± ``context`` neighbours stacked as channels."""
    if context < 1:
        raise ValueError(f"effnet-2.5d needs context >= 1, got {context}")
    return SliceClassifier(
        TIMM_NAME, num_classes, **TARGETS, pretrained=pretrained,
        input_kind=input_kind, image_channels=image_channels, windows=windows, context=context, drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )


@register_model("effnet-lstm")
def effnet_lstm(
    num_classes: int,
    *,
    context: int = 1,
    hidden: int = 256,
    bidirectional: bool = False,
    pretrained: Pretrained = False,
    input_kind: str = "hu",
    image_channels: int = 1,
    windows: Sequence[Any] | None = DEFAULT_WINDOWS,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Shared EfficientNet-B0 per slice → LSTM over the 2k+1 slices in scan order."""
    return SliceSequenceLSTM(
        num_classes, context=context, hidden=hidden, bidirectional=bidirectional, pretrained=pretrained,
        input_kind=input_kind, image_channels=image_channels, windows=windows, drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )


class SliceSequenceLSTM(nn.Module):
    """``x [B, K, H, W]`` → per-slice features ``[B, K, d]`` → LSTM → last hidden state → logits."""

    def __init__(
        self,
        num_classes: int,
        *,
        context: int,
        hidden: int,
        bidirectional: bool,
        pretrained: Pretrained,
        input_kind: str,
        windows: list[Any] | None,
        drop_rate: float,
        drop_path_rate: float,
        image_channels: int = 1,
    ) -> None:
        super().__init__()
        self.input_layer = InputLayer(input_kind, windows, slices=2 * context + 1, image_channels=image_channels)
        channels = self.input_layer.channels_per_slice
        self.encoder = create_encoder(TIMM_NAME, pretrained, in_chans=channels, drop_path_rate=drop_path_rate)
        self.lstm = nn.LSTM(feature_width(self.encoder), hidden, num_layers=1, batch_first=True, bidirectional=bidirectional)
        self.num_features = hidden * (2 if bidirectional else 1)
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(self.num_features, num_classes)) if num_classes else nn.Identity()
        self.spec = spec_for(self.input_layer, context=context, **TARGETS)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Last LSTM hidden state ``[B, hidden * directions]`` of raw slices ``[B, K, H, W]``."""
        batch, slices = x.shape[:2]
        channels = self.input_layer(x)  # [B, K*C, H, W], slice-major
        per_slice = channels.reshape(batch * slices, -1, *channels.shape[-2:])  # [B*K, C, H, W]
        features = self.encoder(per_slice).reshape(batch, slices, -1)  # scan order kept
        _, (h_n, _) = self.lstm(features)  # h_n [directions, B, hidden]
        return torch.cat(list(h_n), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))
