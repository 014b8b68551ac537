"""Windows: parsing window lists, and HU → 8-bit grey as pre-windowed datasets made it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headct.windows import WINDOWS, parse_windows, to_uint8


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
