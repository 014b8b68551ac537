"""Every registered model, at its smallest size and 64 px: shape, finiteness, gradients, save → load."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from headct.checkpoint import load_checkpoint, save_checkpoint
from headct.models import build_model, list_models

SIZE = 64
NUM_CLASSES = 3
LARGER_SIZES = {  # same family, built only (on the meta device: no memory, no init time)
    "strokenext-femto": 384, "strokenext-pico": 512, "strokenext-nano": 640, "strokenext-tiny": 768,
    "strokenext-small": 768, "strokenext-base": 1024, "strokenext-large": 1536,
}
SMALLEST = [name for name in list_models() if name not in LARGER_SIZES]


def _build(name: str, **kw) -> torch.nn.Module:
    if name.startswith("swin"):
        kw.setdefault("img_size", SIZE)
    return build_model(name, NUM_CLASSES, **kw)


def _input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    k = 3 if model.spec.level == "series" else model.spec.slices
    return torch.randn(batch, k, SIZE, SIZE) * 400 + 40  # HU around the brain window


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    if model.spec.level == "series":
        return list(model.forward_series(x, None))
    return [model(x)]


def test_registry_lists_every_family_sorted() -> None:
    names = list_models()
    assert names == sorted(names)
    expected = {"effnet-2d", "effnet-2.5d", "effnet-lstm", "study-seq", "mobilenetv2", "vgg16", "resnet50",
                "resnet152", "swin-tiny", "swin-base", "convnext-base"} | {f"strokenext-{s}" for s in
                ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large")}
    assert set(names) == expected


@pytest.mark.parametrize("name", SMALLEST)
def test_forward_shape_finite_and_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name).train()
    x = _input(model)
    outputs = _outputs(model, x)
    expected = (2, 3, NUM_CLASSES) if model.spec.level == "series" else (2, NUM_CLASSES)
    assert tuple(outputs[0].shape) == expected
    assert all(torch.isfinite(out).all() for out in outputs)
    sum(out.sum() for out in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", SMALLEST)
def test_save_then_load_gives_identical_outputs(name: str, tmp_path) -> None:
    torch.manual_seed(1)
    model = _build(name).eval()
    x = _input(model)
    with torch.no_grad():
        before = _outputs(model, x)
    save_checkpoint(model, tmp_path / "ckpt", size=SIZE, labels=["a", "b", "c"])
    loaded, config = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        after = _outputs(loaded, x)
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert config.model.name == name and config.num_classes == NUM_CLASSES
    assert asdict(loaded.spec) == json.loads(json.dumps(asdict(model.spec)))


@pytest.mark.parametrize("name", sorted(LARGER_SIZES))
def test_larger_sizes_build_with_their_convnext_width(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name, 2)
    width = LARGER_SIZES[name]
    assert model.num_features == width
    assert model.fusion[0].in_channels == width and model.head[0].in_features == width
    assert model.spec.name == name and model.spec.kwargs["fusion_hidden"] is None


GRID_CHECKS = [("effnet-2d", 256), ("mobilenetv2", 256), ("resnet50", 256), ("strokenext-atto", 256),
               ("vgg16", 256), ("swin-tiny", 224)]


@pytest.mark.parametrize(("name", "side"), GRID_CHECKS)
def test_target_grid_says_where_the_centre_cell_looks(name: str, side: int) -> None:
    """The declared ``spec.target_grid`` matches the measured input centre of a target-map cell.

    The centre is the |gradient|-weighted centroid of one central cell's activations over the
    model's input (random weights: geometry, not learning); Grad-CAM places its maps by it.
    """
    torch.manual_seed(0)
    kw = {"img_size": side} if name.startswith("swin") else {}
    model = build_model(name, 2, **kw).eval()
    seen: dict[str, torch.Tensor] = {}

    def grad_input(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if "x" not in seen:  # StrokeNeXt runs the input layer once per encoder: follow the first
            seen["x"] = out.detach().requires_grad_(True)
            return seen["x"]
        return out

    model.input_layer.register_forward_hook(grad_input)
    model.get_submodule(model.spec.target_layers[0]).register_forward_hook(
        lambda module, args, out: seen.setdefault("map", out))
    model(torch.randn(1, model.spec.slices, side, side) * 40 + 40)
    cells = seen["map"].permute(0, 3, 1, 2) if model.spec.target_layout == "nhwc" else seen["map"]
    stride, cell = side // cells.shape[-1], cells.shape[-1] // 2
    cells[0, :, cell, cell].abs().sum().backward()
    weight = seen["x"].grad[0].abs().sum(0)
    rows = torch.arange(side, dtype=torch.float32) + 0.5  # pixel centres
    centre_y = float((weight.sum(1) * rows).sum() / weight.sum())
    centre_x = float((weight.sum(0) * rows).sum() / weight.sum())
    expected = {"centred": stride * (cell + 0.5), "padded": stride * cell + 0.5}
    declared, other = expected.pop(model.spec.target_grid), next(iter(expected.values()))
    assert abs(centre_y - declared) < 3 and abs(centre_x - declared) < 3, (centre_y, centre_x, declared)
    assert abs(centre_y - other) > 6 and abs(centre_x - other) > 6
