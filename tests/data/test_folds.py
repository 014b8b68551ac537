"""Fold views: the held-out fold is test, validation is carved from the other folds by group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headct.data.cache import Cache
from headct.data.folds import UNUSED, cache_folds, fold_view


def _studies(view: Cache, split: str) -> set[str]:
    return set(view.index["study"][view.index["split"] == split].tolist())


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_fold_view_holds_out_one_fold_and_never_uses_the_test_split(fold_cache: Path, fold: int) -> None:
    cache = Cache(fold_cache)
    view = fold_view(cache, fold, seed=0)
    assert cache_folds(cache) == [0, 1, 2]
    held_out = {f"study{s}" for s in range(16) if s % 3 == fold}
    assert _studies(view, "test") == held_out
    assert _studies(view, UNUSED) == {f"study{s}" for s in range(16, 20)}  # the cache's own test split
    train, val = _studies(view, "train"), _studies(view, "val")
    assert not train & val and train | val == {f"study{s}" for s in range(16)} - held_out
    assert 1 <= len(val) <= 3  # 20 % of ~11 studies
    assert view.meta["split"]["fold"] == fold and view.meta["split"]["n_test"] == len(held_out)
    assert set(cache.index["split"].tolist()) == {"train", "val", "test"}  # the original is untouched
    np.testing.assert_array_equal(np.sort(view.rows("test")), np.flatnonzero(np.isin(cache.index["study"],
                                                                                     sorted(held_out))))


def test_validation_carve_is_seeded_and_stratified(fold_cache: Path) -> None:
    cache = Cache(fold_cache)
    first, again = fold_view(cache, 0, seed=3), fold_view(cache, 0, seed=3)
    np.testing.assert_array_equal(first.index["split"], again.index["split"])
    val_studies = _studies(first, "val")
    lesion = {f"study{s}" for s in range(0, 16, 2)}  # even studies carry the bleed
    assert val_studies & lesion and val_studies - lesion  # both strata reach validation


def test_fold_view_refuses_a_cache_without_folds_and_an_unknown_fold(cache: Path, fold_cache: Path) -> None:
    with pytest.raises(ValueError, match="no folds"):
        fold_view(Cache(cache), 0)
    with pytest.raises(ValueError, match="no fold 7"):
        fold_view(Cache(fold_cache), 7)
