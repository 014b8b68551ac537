"""timm encoders with our pretrained-weight handling, and the plain slice classifier.

Backbones come from ``timm.create_model(..., num_classes=0)`` (a pooled
encoder), never re-implemented. ``pretrained`` is ``False``, ``True`` (timm's
hub) or a local weights file in timm's format (.safetensors, or .pth/.bin read
by timm with ``weights_only``); with ``in_chans != 3`` timm adapts the pretrained
3-channel stem (``adapt_input_conv``: repeat and scale by 3/in_chans).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headct.errors import HeadCTError
from headct.models.inputs import InputLayer
from headct.models.registry import ModelSpec

logger = logging.getLogger(__name__)

Pretrained = bool | str


def create_encoder(timm_name: str, pretrained: Pretrained = False, in_chans: int = 3, **timm_kwargs: Any) -> nn.Module:
    """A pooled timm encoder (``num_classes=0``): ``[B, in_chans, H, W] → [B, num_features]``."""
    import timm  # here, not at the top: timm imports torchvision (~2 s), which `headct models` never needs

    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans, **timm_kwargs}
    if isinstance(pretrained, str | Path):
        path = Path(pretrained)
        if not path.is_file():
            raise HeadCTError(f"{path}: pretrained weights file not found")
        logger.info("loading %s weights from %s", timm_name, path)
        try:
            return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except (RuntimeError, KeyError, OSError, ValueError) as err:
            raise HeadCTError(f"{path}: not usable as {timm_name} weights ({_first_line(err)})") from err
    if pretrained:
        try:
            return timm.create_model(timm_name, pretrained=True, **kwargs)
        except OSError as err:  # hub / connection errors (huggingface_hub's are OSErrors)
            raise HeadCTError(
                f"could not fetch pretrained {timm_name} weights from timm's hub ({_first_line(err)}); "
                f"without network, pass pretrained='/path/to/{timm_name}.safetensors' (a timm state dict)"
            ) from err
    return timm.create_model(timm_name, pretrained=False, **kwargs)


def make_head(kind: str, in_features: int, num_classes: int, dropout: float, hidden: int = 256) -> nn.Module:
    """Classifier head on pooled features; ``num_classes=0`` gives ``Identity`` (features out).

    ``"linear"``: Dropout → Linear. ``"mlp"``: StrokeNeXt's compact head,
    Linear(d, hidden) → ReLU → BatchNorm1d → Dropout → Linear(hidden, n).
    """
    if num_classes == 0:
        return nn.Identity()
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
    raise ValueError(f"head must be 'linear' or 'mlp', got {kind!r}")


class SliceClassifier(nn.Module):
    """Input layer → one timm encoder over all K*C channels → head.

    The 2-D and 2.5-D EfficientNets and the paper baselines are this; they differ
    in the timm name, the slice context and the Grad-CAM target layer.
    """

    def __init__(
        self,
        timm_name: str,
        num_classes: int,
        *,
        target_layers: list[str],
        pretrained: Pretrained = False,
        input_kind: str = "hu",
        windows: list[Any] | None = None,
        context: int = 0,
        head: str = "linear",
        drop_rate: float = 0.2,
        target_layout: str = "nchw",
        target_grid: str = "centred",
        image_channels: int = 1,
        target_method: str = "gradcam",
        target_head_mask: bool = False,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.input_layer = InputLayer(input_kind, windows, slices=2 * context + 1, image_channels=image_channels)
        self.encoder = create_encoder(timm_name, pretrained, in_chans=self.input_layer.out_channels, **timm_kwargs)
        self.num_features = feature_width(self.encoder)
        self.head = make_head(head, self.num_features, num_classes, drop_rate)
        self.spec = spec_for(self.input_layer, context=context, target_layers=target_layers,
                             target_layout=target_layout, target_grid=target_grid,
                             target_method=target_method, target_head_mask=target_head_mask)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, num_features]`` of raw slices ``[B, K, H, W]``."""
        return self.encoder(self.input_layer(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))


def feature_width(encoder: nn.Module) -> int:
    """Width of a headless timm encoder's output (VGG's pre-logits MLP is wider than its last conv)."""
    return int(getattr(encoder, "head_hidden_size", None) or encoder.num_features)


def spec_for(input_layer: InputLayer, **fields: Any) -> ModelSpec:
    """The spec fields an input layer determines, plus ``fields`` (context, level, targets)."""
    return ModelSpec(
        input_kind=input_layer.kind,
        image_channels=input_layer.image_channels,
        windows=input_layer.windows,
        mean=list(input_layer.mean),
        std=list(input_layer.std),
        **fields,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
