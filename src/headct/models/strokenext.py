"""StrokeNeXt (Ramos et al.): two ConvNeXt encoders, a Conv1d fusion block, a compact head.

Both encoders (timm ``convnext_<size>``, weights not shared) read the same 2-D
slice; their pooled features ``[B, d]`` are stacked as ``[B, d, 2]`` (channels d,
length 2) and fused:

    Conv1d(d, d, kernel_size=2)  ("reduce" over the two branch vectors) → BN → GELU
    → Conv1d(d, h, 1) → BN → GELU → Dropout
    [→ Conv1d(h, d, 1) → BN → GELU   when h != d: expand back to d]
    → flatten [B, d]

then the head Linear(d, 256) → ReLU → BatchNorm1d(256) → Dropout → Linear(256, n).
``forward(x)`` takes one tensor and feeds it to both encoders (Grad-CAM and ONNX
need a single input); ``branch_inputs="split"`` takes ``[B, 2, K, H, W]`` instead,
one stack per branch; ``shared_encoder=True`` is the weight-shared ablation.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from headct.models.backbones import Pretrained, create_encoder, feature_width, make_head, spec_for
from headct.models.inputs import InputLayer
from headct.models.registry import register_model
from headct.windows import DEFAULT_WINDOWS

SIZES = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large")
BRANCH_INPUTS = ("same", "split")


class StrokeNeXt(nn.Module):
    """Dual ConvNeXt encoders → Conv1d fusion → MLP head."""

    def __init__(
        self,
        num_classes: int,
        *,
        size: str = "tiny",
        pretrained: Pretrained = False,
        input_kind: str = "hu",
        image_channels: int = 1,
        windows: Sequence[Any] | None = DEFAULT_WINDOWS,
        fusion_hidden: int | None = None,
        fusion_dropout: float = 0.5,
        head_hidden: int = 256,
        head_dropout: float = 0.5,
        branch_inputs: str = "same",
        shared_encoder: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if branch_inputs not in BRANCH_INPUTS:
            raise ValueError(f"branch_inputs must be one of {BRANCH_INPUTS}, got {branch_inputs!r}")
        self.branch_inputs = branch_inputs
        self.input_layer = InputLayer(input_kind, windows, slices=1, image_channels=image_channels)
        timm_name = f"convnext_{size}"
        chans = self.input_layer.out_channels
        self.encoder_a = create_encoder(timm_name, pretrained, in_chans=chans, drop_path_rate=drop_path_rate)
        self.encoder_b = None if shared_encoder else create_encoder(timm_name, pretrained, in_chans=chans,
                                                                     drop_path_rate=drop_path_rate)
        d = self.num_features = feature_width(self.encoder_a)
        self.fusion = fusion_block(d, fusion_hidden or d, fusion_dropout)
        self.head = make_head("mlp", d, num_classes, head_dropout, hidden=head_hidden)
        targets = ["encoder_a.stages.3"] + ([] if shared_encoder else ["encoder_b.stages.3"])
        self.spec = spec_for(self.input_layer, context=0, target_layers=targets)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Fused features ``[B, d]``: ``x [B, K, H, W]`` (or ``[B, 2, K, H, W]`` when split)."""
        if self.branch_inputs == "split":
            if x.dim() != 5 or x.shape[1] != 2:
                raise ValueError(f"branch_inputs='split' expects [B, 2, K, H, W], got shape {tuple(x.shape)}")
            x_a, x_b = x[:, 0], x[:, 1]
        else:
            x_a = x_b = x
        features_a = self.encoder_a(self.input_layer(x_a))
        encoder_b = self.encoder_b if self.encoder_b is not None else self.encoder_a
        features_b = encoder_b(self.input_layer(x_b))
        return self.fusion(torch.stack([features_a, features_b], dim=2))  # [B, d, 2] → [B, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))


def fusion_block(d: int, hidden: int, dropout: float) -> nn.Sequential:
    """StrokeNeXt's fusion: ``[B, d, 2]`` (two branch vectors) → ``[B, d]``."""
    layers: list[nn.Module] = [
        nn.Conv1d(d, d, kernel_size=2),  # reduce: mixes the two branch vectors, length 2 → 1
        nn.BatchNorm1d(d),
        nn.GELU(),
        nn.Conv1d(d, hidden, kernel_size=1),
        nn.BatchNorm1d(hidden),
        nn.GELU(),
        nn.Dropout(dropout),
    ]
    if hidden != d:
        layers += [nn.Conv1d(hidden, d, kernel_size=1), nn.BatchNorm1d(d), nn.GELU()]
    layers.append(nn.Flatten(1))
    return nn.Sequential(*layers)


def _register(size: str) -> None:
    def build(num_classes: int, **kwargs: Any) -> nn.Module:
        return StrokeNeXt(num_classes, size=size, **kwargs)

    # The registry binds and records arguments by signature: StrokeNeXt's, less the size the name fixes.
    signature = inspect.signature(StrokeNeXt)
    build.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "size"])
    build.__doc__ = f"StrokeNeXt on timm convnext_{size}."
    register_model(f"strokenext-{size}")(build)


for _size in SIZES:
    _register(_size)
