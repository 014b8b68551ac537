"""study-seq: padding never changes real slices, two-stage equals end to end, trained encoders load."""

from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch

from headct.checkpoint import encoder_arguments, save_checkpoint
from headct.models import build_model

SIZE = 32


def _series(length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(length, SIZE, SIZE, generator=generator) * 300 + 40


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"pooling": "attention", "rnn": "lstm"}, {"encoder": "effnet-2.5d", "layers": 1}],
    ids=["gru-max", "lstm-attention", "2.5d-encoder"],
)
def test_padded_slices_do_not_change_the_real_slices(kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model("study-seq", 4, hidden=32, **kwargs).eval()
    long, short = _series(5, 1), _series(3, 2)
    garbage = torch.full((2, SIZE, SIZE), 3000.0)
    batch = torch.stack([long, torch.cat([short, garbage])])
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    with torch.no_grad():
        slices, series = model.forward_series(batch, mask)
        alone_slices, alone_series = model.forward_series(short[None], None)
        long_slices, long_series = model.forward_series(long[None], None)
    assert slices.shape == (2, 5, 4) and series.shape == (2, 4)
    assert torch.allclose(slices[1, :3], alone_slices[0], atol=1e-5)
    assert torch.allclose(series[1], alone_series[0], atol=1e-5)
    assert torch.allclose(slices[0], long_slices[0], atol=1e-5) and torch.allclose(series[0], long_series[0], atol=1e-5)
    assert torch.allclose(model(batch, mask), slices)


def test_two_stage_embeddings_give_the_end_to_end_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("study-seq", 2, hidden=16).eval()
    batch = torch.stack([_series(4, 3), _series(4, 4)])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        embeddings = model.encode_slices(batch, mask)
        assert embeddings.shape == (2, 4, 1280)
        assert torch.equal(embeddings[1, 2:], torch.zeros(2, 1280))  # padding is never encoded
        assert torch.allclose(embeddings[0, 1], model.encoder.encode(batch[0, 1][None, None])[0], atol=1e-5)
        two_stage = model.forward_embeddings(embeddings, mask)
        end_to_end = model.forward_series(batch, mask)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(two_stage, end_to_end, strict=True))


def test_end_to_end_gradient_reaches_the_encoder() -> None:
    model = build_model("study-seq", 2, hidden=16).train()
    batch = torch.stack([_series(3, 5), _series(3, 6)])
    slices, series = model.forward_series(batch, torch.tensor([[True] * 3, [True, True, False]]))
    (slices.sum() + series.sum()).backward()
    assert model.encoder.encoder.conv_stem.weight.grad.abs().sum() > 0


def test_encoder_checkpoint_loads_a_trained_2d_model_and_is_not_needed_to_rebuild(tmp_path) -> None:
    torch.manual_seed(0)
    slice_model = build_model("effnet-2d", 6, drop_rate=0.1).eval()
    save_checkpoint(slice_model, tmp_path / "slice")
    model = build_model("study-seq", 6, **encoder_arguments(tmp_path / "slice"), hidden=16).eval()
    assert model.spec.kwargs["encoder"] == "effnet-2d"
    assert model.spec.kwargs["encoder_kwargs"]["drop_rate"] == 0.1
    assert "encoder_state" not in model.spec.kwargs
    x = _series(2, 7)[None]
    with torch.no_grad():
        assert torch.allclose(model.encode_slices(x)[0], slice_model.encode(x[0][:, None]), atol=1e-5)
    rebuilt = build_model("study-seq", 6, **model.spec.kwargs)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("kwargs", [{}, {"pooling": "attention", "encoder": "effnet-2.5d", "layers": 1}],
                         ids=["max", "attention-2.5d"])
def test_the_exportable_whole_series_forward_equals_the_masked_one(kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model("study-seq", 3, hidden=16, **kwargs).eval()
    batch = torch.stack([_series(4, 1), _series(4, 2)])
    with torch.no_grad():
        whole = model.forward_whole_series(batch)
        packed = model.forward_series(batch, torch.ones(2, 4, dtype=torch.bool))  # the packed-RNN path
    assert whole[0].shape == (2, 4, 3) and whole[1].shape == (2, 3)
    assert torch.allclose(whole[0], packed[0], atol=1e-5) and torch.allclose(whole[1], packed[1], atol=1e-5)


def test_masks_with_holes_or_empty_rows_are_refused() -> None:
    model = build_model("study-seq", 2, hidden=8)
    embeddings = torch.zeros(2, 3, 1280)
    with pytest.raises(ValueError, match="padding last"):
        model.forward_embeddings(embeddings, torch.tensor([[True, False, True], [True, True, True]]))
    with pytest.raises(ValueError, match="at least one real slice"):
        model.forward_embeddings(embeddings, torch.tensor([[False] * 3, [True] * 3]))


def test_pretrained_inside_encoder_kwargs_is_not_recorded(tmp_path) -> None:
    path = tmp_path / "efficientnet_b0.safetensors"
    source = timm.create_model("efficientnet_b0")
    safetensors.torch.save_file(source.state_dict(), str(path))
    model = build_model("study-seq", 2, hidden=8, encoder_kwargs={"pretrained": str(path), "drop_rate": 0.3})
    assert torch.equal(model.encoder.encoder.conv_stem.weight, source.conv_stem.weight)
    assert model.spec.kwargs["encoder_kwargs"] == {"drop_rate": 0.3}
