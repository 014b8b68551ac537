"""Pretrained weights from a local timm-format file (no network here), and the hub error."""

from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from headct.errors import HeadCTError
from headct.models import build_model


@pytest.fixture(scope="module")
def effnet_source() -> timm.models.EfficientNet:
    torch.manual_seed(123)
    return timm.create_model("efficientnet_b0")


@pytest.fixture(scope="module")
def effnet_file(effnet_source, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("weights") / "efficientnet_b0.safetensors"
    safetensors.torch.save_file(effnet_source.state_dict(), str(path))
    return str(path)


def test_local_safetensors_file_loads_into_the_2d_model(effnet_source, effnet_file) -> None:
    model = build_model("effnet-2d", 5, pretrained=effnet_file)
    source = effnet_source.state_dict()
    loaded = model.encoder.state_dict()
    assert set(loaded) == {k for k in source if not k.startswith("classifier.")}
    assert all(torch.equal(loaded[k], source[k]) for k in loaded)
    assert "pretrained" not in model.spec.kwargs


def test_25d_stem_is_the_3_channel_stem_tiled_and_divided(effnet_source, effnet_file) -> None:
    model = build_model("effnet-2.5d", 5, pretrained=effnet_file)
    stem = effnet_source.conv_stem.weight
    expected = torch.cat([stem, stem, stem], dim=1) / 3
    assert torch.allclose(model.encoder.conv_stem.weight, expected)
    assert torch.equal(model.encoder.blocks[1][0].conv_pw.weight, effnet_source.blocks[1][0].conv_pw.weight)


def test_pth_file_in_timm_format_loads_too(effnet_source, tmp_path) -> None:
    path = tmp_path / "efficientnet_b0.pth"
    torch.save(effnet_source.state_dict(), path)  # a plain tensor dict: timm reads it with weights_only
    model = build_model("effnet-lstm", 5, pretrained=str(path))
    assert torch.equal(model.encoder.conv_stem.weight, effnet_source.conv_stem.weight)


def test_strokenext_loads_the_file_into_both_encoders(tmp_path) -> None:
    torch.manual_seed(7)
    source = timm.create_model("convnext_atto")
    path = tmp_path / "convnext_atto.safetensors"
    safetensors.torch.save_file(source.state_dict(), str(path))
    model = build_model("strokenext-atto", 2, pretrained=str(path))
    for encoder in (model.encoder_a, model.encoder_b):
        assert torch.equal(encoder.stem[0].weight, source.stem[0].weight)
        assert torch.equal(encoder.stages[3].blocks[0].mlp.fc1.weight, source.stages[3].blocks[0].mlp.fc1.weight)


def test_missing_or_unusable_file_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(HeadCTError, match="not found"):
        build_model("effnet-2d", 2, pretrained=str(tmp_path / "nope.safetensors"))
    wrong = tmp_path / "resnet.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet18").state_dict(), str(wrong))
    with pytest.raises(HeadCTError, match="not usable as efficientnet_b0 weights"):
        build_model("effnet-2d", 2, pretrained=str(wrong))


def test_hub_failure_says_how_to_pass_a_local_file(monkeypatch) -> None:
    create_model = timm.create_model

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise LocalEntryNotFoundError("cannot reach huggingface.co")
        return create_model(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)  # backbones imports timm when it builds
    with pytest.raises(HeadCTError, match=r"pretrained='/path/to/efficientnet_b0.safetensors'"):
        build_model("effnet-2d", 2, pretrained=True)
