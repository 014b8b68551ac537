"""Windows: presets, numpy/torch agreement, range and channel layout, parsing window lists, and
HU → 8-bit grey as pre-windowed datasets made it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from headct.windows import (
    WINDOWS,
    Windowing,
    apply_windows,
    parse_windows,
    resolve_windows,
    to_uint8,
)


def test_presets_are_the_seeds_and_stroke_windows() -> None:
    assert WINDOWS["brain"] == (40, 80)
    assert WINDOWS["subdural"] == (80, 200)
    assert WINDOWS["bone"] == (500, 2000)
    assert WINDOWS["stroke"] == (40, 40)
    assert WINDOWS["soft-tissue"] == (40, 380)


def test_brain_window_known_values() -> None:
    hu = np.array([-1000, 0, 40, 60, 80, 3000], dtype=np.int16)
    out = apply_windows(hu, ["brain"])
    # brain 40/80 spans 0..80 HU
    np.testing.assert_allclose(out[0], [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    assert out.dtype == np.float32 and out.shape == (1, 6)


def test_custom_pair_and_unknown_name() -> None:
    assert resolve_windows([(10, 20), "bone"]) == [(10.0, 20.0), (500.0, 2000.0)]
    with pytest.raises(ValueError, match="unknown window"):
        resolve_windows(["lung"])
    with pytest.raises(ValueError, match="positive"):
        resolve_windows([(0, 0)])


hu_arrays = arrays(np.int16, st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
                   elements=st.integers(-2048, 4000))
window_lists = st.lists(st.sampled_from(sorted(WINDOWS)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(hu=hu_arrays, names=window_lists)
def test_numpy_and_torch_agree_and_stay_in_unit_range(hu: np.ndarray, names: list[str]) -> None:
    expected = apply_windows(hu, names)  # [C, K, H, W]
    layer = Windowing(names)
    got = layer(torch.from_numpy(hu)[None]).numpy()[0]  # [K*C, H, W]
    k, c = hu.shape[0], len(names)
    reordered = expected.transpose(1, 0, 2, 3).reshape(k * c, *hu.shape[1:])
    np.testing.assert_array_equal(got, reordered)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_windowing_channels_are_slice_major() -> None:
    hu = torch.tensor([[[[40]], [[1000]]]], dtype=torch.int16)  # B=1, K=2, 1x1
    out = Windowing(["brain", "bone"])(hu)
    # slice 0: brain(40)=0.5, bone(40)=(40+500)/2000; slice 1: brain(1000)=1, bone(1000)=0.75
    torch.testing.assert_close(out.flatten(), torch.tensor([0.5, 0.27, 1.0, 0.75]))


def test_windowing_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\[B, K, H, W\]"):
        Windowing()(torch.zeros(2, 8, 8))


@given(st.lists(st.one_of(st.sampled_from(sorted(WINDOWS)),
                          st.tuples(st.integers(-1000, 3000), st.integers(1, 4000))), min_size=1, max_size=4))
def test_parse_windows_round_trips_names_and_pairs(windows) -> None:
    text = ",".join(w if isinstance(w, str) else f"{w[0]}/{w[1]}" for w in windows)
    assert parse_windows(text) == [w if isinstance(w, str) else (float(w[0]), float(w[1])) for w in windows]


@pytest.mark.parametrize("text", ["", "brian", "40/0", "40/80/2", "a/b"])
def test_parse_windows_refuses_what_is_not_a_window(text: str) -> None:
    with pytest.raises(ValueError):
        parse_windows(text)


def test_to_uint8_maps_the_window_onto_0_255() -> None:
    hu = np.array([[-1000, 0, 40, 80, 1000]], dtype=np.int16)  # brain: 40/80 → [0, 80] HU
    np.testing.assert_array_equal(to_uint8(hu, "brain"), np.array([[0, 0, 128, 255, 255]], dtype=np.uint8))
    assert to_uint8(hu, (0.0, 2000.0)).tolist() == [[0, 128, 133, 138, 255]]
