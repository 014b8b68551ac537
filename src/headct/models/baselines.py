"""The StrokeNeXt paper's baselines: single timm backbones with our input layer and head.

MobileNetV2, VGG16, ResNet50, ResNet152, Swin (tiny, base) and ConvNeXt-base,
each a ``SliceClassifier``: same input layer, same ``encode``/``forward``
interface, head ``"linear"`` (Dropout → Linear) or ``"mlp"`` (StrokeNeXt's head,
for a like-for-like comparison of encoders).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from headct.models.backbones import Pretrained, SliceClassifier
from headct.models.registry import register_model
from headct.windows import DEFAULT_WINDOWS

# name → (timm name, Grad-CAM target layer, that layer's grid (ModelSpec.target_grid))
BASELINES: dict[str, tuple[str, str, str]] = {
    "mobilenetv2": ("mobilenetv2_100", "encoder.conv_head", "padded"),
    "vgg16": ("vgg16", "encoder.features.29", "centred"),  # last conv's ReLU, before the final max-pool
    "resnet50": ("resnet50", "encoder.layer4", "padded"),
    "resnet152": ("resnet152", "encoder.layer4", "padded"),
    "convnext-base": ("convnext_base", "encoder.stages.3", "centred"),
}
SWIN = {
    "swin-tiny": "swin_tiny_patch4_window7_224",
    "swin-base": "swin_base_patch4_window7_224",
}


def _register_cnn(name: str, timm_name: str, target: str, grid: str) -> None:
    @register_model(name)
    def build(
        num_classes: int,
        *,
        pretrained: Pretrained = False,
        input_kind: str = "hu",
        image_channels: int = 1,
        windows: Sequence[Any] | None = DEFAULT_WINDOWS,
        head: str = "linear",
        drop_rate: float = 0.2,
    ) -> nn.Module:
        return SliceClassifier(
            timm_name, num_classes, target_layers=[target], target_grid=grid, pretrained=pretrained,
            input_kind=input_kind, image_channels=image_channels, windows=windows, head=head, drop_rate=drop_rate,
        )

    build.__doc__ = f"Baseline: timm {timm_name}."


def _register_swin(name: str, timm_name: str) -> None:
    @register_model(name)
    def build(
        num_classes: int,
        *,
        pretrained: Pretrained = False,
        input_kind: str = "hu",
        image_channels: int = 1,
        windows: Sequence[Any] | None = DEFAULT_WINDOWS,
        head: str = "linear",
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        img_size: int = 224,
    ) -> nn.Module:
        return SliceClassifier(
            timm_name, num_classes, target_layers=["encoder.layers.3"], target_layout="nhwc",
            pretrained=pretrained, input_kind=input_kind, image_channels=image_channels, windows=windows, head=head,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, img_size=img_size,
        )

    build.__doc__ = f"Baseline: timm {timm_name} (fixed input size ``img_size``)."


for _name, (_timm_name, _target, _grid) in BASELINES.items():
    _register_cnn(_name, _timm_name, _target, _grid)
for _name, _timm_name in SWIN.items():
    _register_swin(_name, _timm_name)
