"""Run a model over whole series: the one forward path shared by evaluate, predict and serve.

A series is ``[S, H, W]`` raw values (int16 HU or uint8) already at the model's
input size. Slice-level models see each slice with its ``context`` neighbours
on each side (the end slice repeats at the edges); series-level models see the
whole series at once. Neighbour stacks are gathered on the device, so only the
series itself crosses from host to device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class SeriesOutput:
    """Logits for one series: per slice ``[S, n]`` and, for series-level models, ``[n]``."""

    slice_logits: torch.Tensor
    series_logits: torch.Tensor | None = None


def neighbour_index(num_slices: int, context: int) -> torch.Tensor:
    """``[S, 2*context+1]`` slice indices centred on each slice, clamped at the ends."""
    offsets = torch.arange(-context, context + 1)
    centres = torch.arange(num_slices)[:, None]
    return (centres + offsets[None, :]).clamp_(0, num_slices - 1)


def autocast_context(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """Autocast for ``amp`` in {"bf16", "fp16"}; a no-op for None/"fp32"/"off"."""
    if amp in (None, "fp32", "off", "none"):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def series_logits(
    model: nn.Module,
    pixels: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    amp: str | None = None,
) -> SeriesOutput:
    """Logits for every slice of one series (and the series logit where the model has one)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    series = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, torch.Tensor) else pixels)
    if series.dim() != 3:
        raise ValueError(f"a series is [S, H, W], got shape {tuple(series.shape)}")
    series = series.to(device, non_blocking=True)
    spec = model.spec
    with autocast_context(device, amp):
        if spec.level == "series":
            slice_out, series_out = model.forward_series(series[None].float(), None)
            return SeriesOutput(slice_out[0].float().cpu(), series_out[0].float().cpu())
        outputs = [model(batch).float().cpu() for batch in _neighbour_batches(series, spec.context, batch_size)]
    return SeriesOutput(torch.cat(outputs))


def _neighbour_batches(series: torch.Tensor, context: int, batch_size: int) -> Iterator[torch.Tensor]:
    index = neighbour_index(series.shape[0], context).to(series.device)
    for start in range(0, series.shape[0], batch_size):
        yield series[index[start : start + batch_size]].float()  # [b, K, H, W]


def probabilities(logits: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Sigmoid (multilabel) or softmax (multiclass) of temperature-scaled logits."""
    scaled = logits.float() / float(temperature)
    return torch.sigmoid(scaled) if kind == "multilabel" else torch.softmax(scaled, dim=-1)
