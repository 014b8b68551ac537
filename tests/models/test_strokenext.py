"""StrokeNeXt: two unshared encoders, the Conv1d fusion block and the compact head, in the paper's order."""

from __future__ import annotations

import torch
from torch import nn

from headct.models import build_model

D = 320  # convnext_atto's pooled width


def _layer_types(block: nn.Module) -> list[type]:
    return [type(m) for m in block]


def test_fusion_block_order_shapes_and_dropout() -> None:
    model = build_model("strokenext-atto", 2)
    assert _layer_types(model.fusion) == [nn.Conv1d, nn.BatchNorm1d, nn.GELU, nn.Conv1d, nn.BatchNorm1d, nn.GELU, nn.Dropout, nn.Flatten]
    reduce, pointwise, dropout = model.fusion[0], model.fusion[3], model.fusion[6]
    assert (reduce.in_channels, reduce.out_channels, reduce.kernel_size) == (D, D, (2,))
    assert (pointwise.in_channels, pointwise.out_channels, pointwise.kernel_size) == (D, D, (1,))
    assert dropout.p == 0.5
    assert model.fusion.eval()(torch.randn(4, D, 2)).shape == (4, D)


def test_fusion_expands_back_when_hidden_differs() -> None:
    model = build_model("strokenext-atto", 2, fusion_hidden=64, fusion_dropout=0.3)
    types = _layer_types(model.fusion)
    assert types == [nn.Conv1d, nn.BatchNorm1d, nn.GELU, nn.Conv1d, nn.BatchNorm1d, nn.GELU, nn.Dropout,
                     nn.Conv1d, nn.BatchNorm1d, nn.GELU, nn.Flatten]
    assert model.fusion[3].out_channels == 64 and model.fusion[7].in_channels == 64 and model.fusion[7].out_channels == D
    assert model.fusion[6].p == 0.3
    assert model.fusion.eval()(torch.randn(3, D, 2)).shape == (3, D)


def test_head_is_linear_relu_batchnorm_dropout_linear() -> None:
    model = build_model("strokenext-atto", 4)
    assert _layer_types(model.head) == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert (model.head[0].in_features, model.head[0].out_features) == (D, 256)
    assert model.head[2].num_features == 256 and model.head[3].p == 0.5
    assert (model.head[4].in_features, model.head[4].out_features) == (256, 4)


def test_encoders_are_separate_and_both_read_the_single_input() -> None:
    torch.manual_seed(0)
    model = build_model("strokenext-atto", 2).eval()
    stem_a, stem_b = model.encoder_a.stem[0].weight, model.encoder_b.stem[0].weight
    assert stem_a.data_ptr() != stem_b.data_ptr() and not torch.equal(stem_a, stem_b)
    seen = []
    hooks = [enc.register_forward_hook(lambda m, inp, out: seen.append(inp[0])) for enc in (model.encoder_a, model.encoder_b)]
    with torch.no_grad():
        model(torch.randn(2, 1, 64, 64) * 300)
    for hook in hooks:
        hook.remove()
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])


def test_split_branch_inputs_feed_one_stack_per_branch() -> None:
    torch.manual_seed(0)
    same = build_model("strokenext-atto", 2).eval()
    split = build_model("strokenext-atto", 2, branch_inputs="split").eval()
    split.load_state_dict(same.state_dict())
    x_a, x_b = torch.randn(2, 1, 64, 64) * 300, torch.randn(2, 1, 64, 64) * 300
    with torch.no_grad():
        assert torch.allclose(split(torch.stack([x_a, x_a], dim=1)), same(x_a), atol=1e-5)
        mixed = split(torch.stack([x_a, x_b], dim=1))
        assert not torch.allclose(mixed, same(x_a), atol=1e-4) and not torch.allclose(mixed, same(x_b), atol=1e-4)


def test_shared_encoder_ablation_has_one_encoder() -> None:
    shared = build_model("strokenext-atto", 2, shared_encoder=True)
    separate = build_model("strokenext-atto", 2)
    encoder_params = sum(p.numel() for p in separate.encoder_a.parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert shared.encoder_b is None and count(separate) - count(shared) == encoder_params
    assert shared.spec.target_layers == ["encoder_a.stages.3"]
    out = shared.train()(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 2)
