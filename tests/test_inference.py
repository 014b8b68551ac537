"""The shared series forward path: neighbour stacks, batching, series-level models."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from headct.data.datasets import neighbour_index
from headct.inference import prepare_for_inference, series_logits
from headct.models import ModelSpec


def test_neighbour_index_clamps_at_the_ends() -> None:
    index = neighbour_index(4, 1)
    assert index.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert neighbour_index(3, 0).tolist() == [[0], [1], [2]]


class _MeanPerSlice(nn.Module):
    """Logit j = mean of input slice j of the stack (so the test can read the stack back)."""

    def __init__(self, context: int) -> None:
        super().__init__()
        self.spec = ModelSpec(context=context, level="slice")
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + self.dummy


def test_slice_model_sees_its_neighbours_in_scan_order_across_batches() -> None:
    pixels = np.stack([np.full((4, 4), 10 * i, dtype=np.int16) for i in range(5)])
    out = series_logits(_MeanPerSlice(context=1), pixels, batch_size=2)
    assert out.series_logits is None
    expected = [[0, 0, 10], [0, 10, 20], [10, 20, 30], [20, 30, 40], [30, 40, 40]]
    assert out.slice_logits.tolist() == expected


class _SeriesModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spec = ModelSpec(context=0, level="series")
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward_series(self, x: torch.Tensor, mask: torch.Tensor | None):
        per_slice = x.mean(dim=(2, 3))[..., None]  # [B, S, 1]
        return per_slice, per_slice.amax(dim=1)


def test_series_model_gets_the_whole_series() -> None:
    pixels = np.stack([np.full((2, 2), v, dtype=np.int16) for v in (3, 9, 5)])
    out = series_logits(_SeriesModel(), pixels)
    assert out.slice_logits.flatten().tolist() == [3, 9, 5]
    assert out.series_logits.tolist() == [9]




class _LeftHalf(nn.Module):
    """Logit = mean of the left half of the centre slice: a mirror image reads the right half."""

    def __init__(self, level: str = "slice") -> None:
        super().__init__()
        self.spec = ModelSpec(context=0, level=level)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : x.shape[-1] // 2].mean(dim=(2, 3)) + self.dummy

    def forward_series(self, x: torch.Tensor, mask: torch.Tensor | None):
        per_slice = x[..., : x.shape[-1] // 2].mean(dim=(2, 3))[..., None]
        return per_slice, per_slice.amax(dim=1)


def test_flip_tta_averages_the_series_and_its_mirror_image() -> None:
    pixels = np.zeros((2, 4, 4), dtype=np.int16)
    pixels[0, :, :2] = 8   # slice 0: bright left half
    pixels[1, :, 2:] = 4   # slice 1: bright right half
    plain = series_logits(_LeftHalf(), pixels)
    assert plain.slice_logits.flatten().tolist() == [8, 0]
    assert series_logits(_LeftHalf(), pixels, tta_flip=True).slice_logits.flatten().tolist() == [4, 2]
    series = series_logits(_LeftHalf("series"), pixels, tta_flip=True)
    assert series.slice_logits.flatten().tolist() == [4, 2] and series.series_logits.tolist() == [6]  # (8+4)/2


# --- the CPU inference path: a frozen TorchScript trace --------------------------------------------


def _effnet_with_statistics() -> torch.nn.Module:
    """effnet-2d with non-trivial BatchNorm statistics, so folding BN into the convs is really tested."""
    from headct.models import build_model

    torch.manual_seed(0)
    model = build_model("effnet-2d", 6)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _random_hu(slices: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 1500, (slices, size, size)).astype(np.int16)


def test_the_frozen_cpu_graph_gives_the_eager_outputs_on_any_batch_size() -> None:
    model = _effnet_with_statistics()
    pixels = _random_hu(7, 64)
    eager = series_logits(model, pixels, batch_size=8).slice_logits
    fast = prepare_for_inference(model, "cpu", amp=None)
    assert fast.freeze  # the CPU default in fp32
    for batch_size in (3, 8):  # traced once on 2 rows, then run on 3 and on 7
        out = series_logits(fast, pixels, batch_size=batch_size).slice_logits
        assert torch.allclose(out, eager, atol=1e-5, rtol=1e-5)
    (frozen,) = fast._frozen.values()
    assert isinstance(frozen, torch.jit.ScriptModule)
    # BatchNorm is folded away in the frozen graph: no batch_norm node is left to run
    assert "batch_norm" not in str(frozen.graph)


def test_the_frozen_graph_is_off_where_it_does_not_apply() -> None:
    model = _effnet_with_statistics()
    assert not prepare_for_inference(model, "cpu", amp="bf16").freeze  # autocast stays eager
    assert not prepare_for_inference(model, "cpu", amp=None, freeze=False).freeze


class _BatchBaked(torch.nn.Module):
    """A model whose trace bakes its batch size in (a Python int from the shape): freezing must refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = ModelSpec(context=0, level="slice")
        self.linear = torch.nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = int(x.shape[0])
        return self.linear(x.reshape(batch, 1, -1)[:, 0, :16]) * batch


def test_a_trace_that_differs_from_the_model_leaves_it_eager() -> None:
    model = _BatchBaked().eval()
    fast = prepare_for_inference(model, "cpu", amp=None, channels_last=False)
    pixels = _random_hu(5, 8)
    out = series_logits(fast, pixels, batch_size=5).slice_logits
    assert torch.allclose(out, series_logits(model, pixels, batch_size=5).slice_logits)
    assert list(fast._frozen.values()) == [None]  # checked on 3 rows against the eager model, and refused
