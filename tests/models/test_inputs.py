"""Input layers: HU windows or 0..255 grey, slice-major channels, ImageNet normalisation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headct.models.inputs import IMAGENET_MEAN, IMAGENET_STD, InputLayer
from headct.windows import apply_windows


def _normalised(value: float, channel: int) -> float:
    return (value - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]


def test_hu_input_is_windowed_then_normalised() -> None:
    layer = InputLayer("hu", ["brain", "subdural", "bone"])
    out = layer(torch.full((1, 1, 2, 2), 40.0))  # brain centre → 0.5; subdural (80/200) → 0.3; bone → 0.27
    expected = [_normalised(0.5, 0), _normalised(0.3, 1), _normalised((40 - (500 - 1000)) / 2000, 2)]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected), atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-1024, 3000), min_size=3, max_size=3))
def test_channels_are_slice_major_and_match_numpy_windows(hu: list[int]) -> None:
    layer = InputLayer("hu", ["brain", "bone"], slices=3, mean=[0.0, 0.0], std=[1.0, 1.0])
    x = torch.tensor(hu, dtype=torch.float32).view(1, 3, 1, 1)
    out = layer(x)[0, :, 0, 0]
    expected = [apply_windows(float(v), ["brain", "bone"]) for v in hu]  # per slice: [2]
    assert torch.allclose(out, torch.tensor([c for pair in expected for c in pair]), atol=1e-6)


def test_uint8_grey_is_repeated_to_three_channels_per_slice() -> None:
    layer = InputLayer("uint8", windows=None, slices=2)
    x = torch.stack([torch.full((2, 2), 255.0), torch.zeros(2, 2)])[None]  # slice 0 white, slice 1 black
    out = layer(x)[0, :, 0, 0]
    expected = [_normalised(1.0, c) for c in range(3)] + [_normalised(0.0, c) for c in range(3)]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)
    assert layer.windows is None and layer.out_channels == 6


def test_wrong_slice_count_and_bad_statistics_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        InputLayer("hu", slices=3)(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="mean needs 3 values"):
        InputLayer("hu", mean=[0.5])
    with pytest.raises(ValueError, match="input_kind"):
        InputLayer("png")


def test_several_8bit_images_per_slice_are_cycled_to_three_channels() -> None:
    layer = InputLayer("uint8", windows=None, slices=2, image_channels=2)
    # slice 0: brain image white, bone black; slice 1: the other way round (slice-major planes)
    x = torch.tensor([255.0, 0.0, 0.0, 255.0]).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    out = layer(x)[0, :, 0, 0]
    expected = [_normalised(v, c) for c, v in enumerate((1.0, 0.0, 1.0))]  # brain, bone, brain
    expected += [_normalised(v, c) for c, v in enumerate((0.0, 1.0, 0.0))]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)
    assert layer.out_channels == 6
    one = InputLayer("uint8", windows=None, slices=1)
    assert torch.equal(one(torch.full((1, 1, 2, 2), 51.0)), InputLayer("uint8", windows=None, slices=1,
                                                                       image_channels=1)(torch.full((1, 1, 2, 2), 51.0)))
    assert InputLayer("uint8", windows=None, image_channels=4).out_channels == 4  # more than 3: each once


def test_image_count_mismatches_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[B, 1\*2, H, W\]"):
        InputLayer("uint8", windows=None, image_channels=2)(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="must be 1 for HU input"):
        InputLayer("hu", image_channels=2)
