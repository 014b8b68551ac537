"""The registry: names, argument checking, and specs that rebuild a model."""

from __future__ import annotations

import json

import pytest
import torch

from headct.models import ModelSpec, build_model, list_models, register_model


def test_unknown_model_names_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'effnet-3d'.*effnet-2d"):
        build_model("effnet-3d", 2)


def test_unknown_argument_is_refused() -> None:
    with pytest.raises(ValueError, match="effnet-2d"):
        build_model("effnet-2d", 2, colour="red")


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_model("effnet-2d")(lambda num_classes: None)


def test_spec_records_every_argument_with_defaults_and_no_pretrained(tmp_path) -> None:
    model = build_model("effnet-2.5d", 5, context=2, windows=["brain", [60, 40]])
    spec = model.spec
    assert isinstance(spec, ModelSpec)
    assert spec.kwargs == {"context": 2, "input_kind": "hu", "image_channels": 1, "windows": ["brain", [60, 40]],
                           "drop_rate": 0.2, "drop_path_rate": 0.0}
    assert (spec.name, spec.num_classes, spec.context, spec.slices, spec.level) == ("effnet-2.5d", 5, 2, 5, "slice")
    assert spec.windows == ["brain", [60, 40]] and len(spec.mean) == 2
    assert json.loads(json.dumps(spec.to_dict()))["kwargs"] == spec.kwargs
    rebuilt = build_model(spec.name, spec.num_classes, **spec.kwargs)
    assert rebuilt.encoder.conv_stem.weight.shape == (32, 10, 3, 3)  # 5 slices x 2 windows


@pytest.mark.parametrize("name", ["effnet-2d", "strokenext-atto", "resnet50"])
def test_target_layers_name_real_modules(name: str) -> None:
    model = build_model(name, 2)
    modules = dict(model.named_modules())
    assert model.spec.target_layers and all(layer in modules for layer in model.spec.target_layers)


def test_headless_model_returns_features() -> None:
    model = build_model("effnet-2d", 0).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 1280)
    assert model.spec.num_classes == 0
    assert sorted(list_models()) == list_models()
