"""EfficientNet-B0 pipelines: 2.5-D stem width, LSTM over slices in scan order."""

from __future__ import annotations

import torch

from headct.models import build_model


def test_25d_stem_reads_every_window_of_every_neighbour() -> None:
    model = build_model("effnet-2.5d", 5)
    assert model.spec.context == 1 and model.spec.slices == 3
    assert model.encoder.conv_stem.weight.shape == (32, 9, 3, 3)
    assert build_model("effnet-2.5d", 5, context=2).encoder.conv_stem.weight.shape == (32, 15, 3, 3)


def test_lstm_encodes_each_slice_with_the_shared_backbone_in_scan_order() -> None:
    torch.manual_seed(0)
    model = build_model("effnet-lstm", 5).eval()
    assert model.encoder.conv_stem.weight.shape == (32, 3, 3, 3)
    seen = []
    hook = model.encoder.register_forward_hook(lambda m, inp, out: seen.append((inp[0], out)))
    x = torch.randn(2, 3, 64, 64) * 300
    with torch.no_grad():
        model(x)
        single = model.encoder(model.input_layer(x)[:, 3:6])  # slice 1 alone: channels 3..5
    hook.remove()
    encoder_in, encoder_out = seen[0]
    assert encoder_in.shape == (6, 3, 64, 64)  # B*K slices of 3 windows
    assert torch.allclose(encoder_out.view(2, 3, -1)[:, 1], single, atol=1e-5)


def test_lstm_last_hidden_state_feeds_the_head() -> None:
    torch.manual_seed(0)
    model = build_model("effnet-lstm", 5).eval()
    x = torch.randn(2, 3, 64, 64) * 300
    with torch.no_grad():
        features = model.encoder(model.input_layer(x).reshape(6, 3, 64, 64)).view(2, 3, -1)
        outputs, _ = model.lstm(features)
        assert torch.allclose(model.encode(x), outputs[:, -1], atol=1e-6)
        assert torch.allclose(model(x), model.head(outputs[:, -1]), atol=1e-6)


def test_bidirectional_lstm_concatenates_both_directions() -> None:
    model = build_model("effnet-lstm", 5, bidirectional=True).eval()
    assert model.num_features == 512 and model.head[-1].in_features == 512
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64) * 300
        features = model.encoder(model.input_layer(x).reshape(3, 3, 64, 64)).view(1, 3, -1)
        outputs, _ = model.lstm(features)  # [1, 3, 512]: forward half, backward half
        expected = torch.cat([outputs[:, -1, :256], outputs[:, 0, 256:]], dim=1)
        assert torch.allclose(model.encode(x), expected, atol=1e-6)
