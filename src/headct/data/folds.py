"""Cross-validation folds of a cache: one fold held out, the others split into train and validation.

``headct prepare --folds K`` writes a ``fold`` column (0..K-1 for studies of the
train and val splits, -1 for the held-out test split), assigned by patient
group, so a patient's studies share one fold. :func:`fold_view` gives a copy of
a :class:`~headct.data.cache.Cache` whose ``split`` column is rewritten for one
fold K:

- rows of fold K become ``test`` (the fold the model is judged on);
- rows of the other folds become ``train``, except a validation share carved
  from them by patient group (stratified on labels, seeded), which becomes
  ``val`` (early stopping, thresholds, temperature);
- rows outside every fold (the cache's own test split) become ``unused``, so
  cross-validation never touches the held-out test set.

Everything that reads splits (datasets, ``predict_split``) then works on the
view unchanged; ``meta["split"]`` says which fold it is.
"""

from __future__ import annotations

import copy

import numpy as np

from headct.data.cache import Cache
from headct.data.splits import SplitConfig, choose_groups, split_studies

VAL_FRACTION = 0.2  # share of the training folds' patient groups kept for validation
UNUSED = "unused"


def cache_folds(cache: Cache) -> list[int]:
    """The fold numbers present in the cache (empty when ``prepare`` ran without ``--folds``)."""
    folds = cache.index.get("fold")
    if folds is None:
        return []
    return sorted(int(f) for f in np.unique(folds) if f >= 0)


def fold_view(cache: Cache, fold: int, *, seed: int = 0, val_fraction: float = VAL_FRACTION) -> Cache:
    """A copy of ``cache`` whose splits are: fold ``fold`` → test, other folds → train + val."""
    available = cache_folds(cache)
    if not available:
        raise ValueError(f"{cache.path}: the cache has no folds; run `headct prepare --folds K`")
    if fold not in available:
        raise ValueError(f"{cache.path}: no fold {fold}; the cache has folds {available}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    index = cache.index
    folds = index["fold"]
    split = np.full(len(cache), UNUSED, dtype=object)
    split[folds == fold] = "test"
    training = (folds >= 0) & (folds != fold)
    split[training] = _carve_validation(cache, np.flatnonzero(training), seed, val_fraction)

    view = copy.copy(cache)
    view.index = {**index, "split": split.astype(str)}
    view.meta = copy.deepcopy(cache.meta)
    studies = {name: len(np.unique(index["study"][split == name])) for name in ("train", "val", "test")}
    view.meta["split"] = {**cache.meta.get("split", {}), "fold": int(fold), "folds": len(available),
                          "val_fraction": val_fraction, "cv_seed": seed,
                          **{f"n_{name}": count for name, count in studies.items()}}
    return view


def _carve_validation(cache: Cache, rows: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """``train`` / ``val`` for each of ``rows``, by patient group (else study), stratified on labels."""
    index = cache.index
    row_studies = index["study"][rows]
    studies, study_of_row = np.unique(row_studies, return_inverse=True)
    patients = [""] * len(studies)
    for study_id, patient in zip(study_of_row, index["patient"][rows], strict=True):
        patients[study_id] = patients[study_id] or str(patient)
    groups, how = choose_groups(list(studies), patients)
    labels = np.zeros((len(studies), cache.label_matrix.shape[1]), dtype=np.int8)
    np.maximum.at(labels, study_of_row, cache.label_matrix[rows])
    config = SplitConfig(seed=seed, fractions=(1.0 - val_fraction, val_fraction, 0.0))
    result = split_studies(list(studies), groups, labels, config, how)
    return result.split[study_of_row]
