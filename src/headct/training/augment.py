"""Augmentations for CT on batches of tensors, run on the training device.

They act on raw values (HU, or 0..255 grey for 8-bit inputs) *before* the
model's own windowing layer, so a jittered window is what a slightly
different scanner calibration or reconstruction would give:

- horizontal flip (left/right; head CT is near-symmetric and lesions occur on both sides);
- a small rotation, isotropic scale and shift, one affine per sample through
  ``affine_grid``/``grid_sample``; pixels that come in from outside the image
  are air (-1024 HU) or black (0), not 0 HU (which would be water);
- window jitter: values scaled about a centre and shifted by a small offset.

Every slice of one sample (2.5-D neighbours, a whole series) gets the same
transform. The random numbers come from an explicit ``torch.Generator`` so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

AIR_HU = -1024.0
HU_CENTRE = 40.0      # jitter scales HU about the brain window centre
GREY_CENTRE = 127.5


@dataclass
class AugmentConfig:
    """Strengths of each augmentation; 0 switches one off."""

    flip_p: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    shift: float = 0.05          # fraction of the image size
    window_shift: float = 10.0   # HU, or grey levels for 8-bit inputs
    window_scale: float = 0.05


def augment_batch(
    x: torch.Tensor, config: AugmentConfig, generator: torch.Generator, input_kind: str = "hu"
) -> torch.Tensor:
    """Augment ``x [B, K, H, W]`` (float, raw HU or grey); returns a new tensor on x's device."""
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects [B, K, H, W], got shape {tuple(x.shape)}")
    b = x.shape[0]
    draw = _Draw(b, generator, x.device)
    flip = draw.uniform() < config.flip_p
    angle = draw.symmetric(math.radians(config.rotate_deg))
    zoom = 1.0 + draw.symmetric(config.scale)
    shift = torch.stack([draw.symmetric(2.0 * config.shift), draw.symmetric(2.0 * config.shift)], 1)
    gain = 1.0 + draw.symmetric(config.window_scale)
    offset = draw.symmetric(config.window_shift)

    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if config.rotate_deg or config.scale or config.shift:
        fill = AIR_HU if input_kind == "hu" else 0.0
        x = affine(x, angle, zoom, shift, fill)
    if config.window_scale or config.window_shift:
        x = window_jitter(x, gain, offset, input_kind)
    return x


def affine(
    x: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, fill: float
) -> torch.Tensor:
    """Rotate by ``angle`` (radians), zoom and shift (normalised units) each sample of ``x``."""
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with zeros; shift so that zero is the fill value, then shift back.
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def window_jitter(x: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor, input_kind: str) -> torch.Tensor:
    """``(x - c) * gain + c + offset`` per sample; grey inputs stay within 0..255."""
    centre = HU_CENTRE if input_kind == "hu" else GREY_CENTRE
    out = (x - centre) * gain[:, None, None, None] + centre + offset[:, None, None, None]
    return out if input_kind == "hu" else out.clamp(0.0, 255.0)


class _Draw:
    """Per-sample random numbers from one CPU generator, moved to the device."""

    def __init__(self, n: int, generator: torch.Generator, device: torch.device) -> None:
        self.n, self.generator, self.device = n, generator, device

    def uniform(self) -> torch.Tensor:
        return torch.rand(self.n, generator=self.generator).to(self.device)

    def symmetric(self, half_width: float) -> torch.Tensor:
        return (self.uniform() * 2.0 - 1.0) * half_width
