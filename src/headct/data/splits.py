"""Train/val/test splits by patient, else study, else image; stratified and seeded.

Slices of one patient never sit on two sides of a split (the seeds' split by
slice leaked patients into test). The unit of the split is chosen by
:func:`choose_groups`, and ``how`` records it for every report.

Why not scikit-learn's ``StratifiedGroupKFold``: it only makes k equal folds
(0.8/0.1/0.1 works, 0.7/0.2/0.1 does not), warns on every label combination
rarer than k, and cannot hit exact group counts. The allocation here is a few
lines: order groups by stratum (label signature) with a seeded shuffle inside
each stratum, then hand each group to the side furthest below its share. Every
stratum is then spread over the sides in proportion, and the totals are exact
to one group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class SplitConfig:
    """How to split: seed, train/val/test fractions, optional k folds over train+val."""

    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    folds: int = 0

    def __post_init__(self) -> None:
        fractions = tuple(float(f) for f in self.fractions)
        if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
            raise ValueError(f"fractions must be three non-negative numbers, got {self.fractions}")
        total = sum(fractions)
        self.fractions = tuple(f / total for f in fractions)  # type: ignore[assignment]
        if self.folds < 0 or self.folds == 1:
            raise ValueError(f"folds must be 0 (none) or at least 2, got {self.folds}")


@dataclass
class SplitResult:
    """Per-item split name and fold (-1: no fold), plus what was grouped."""

    split: np.ndarray  # str [N]
    fold: np.ndarray  # int64 [N]
    how: str
    counts: dict[str, int]  # studies per side


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` → (0.8, 0.1, 0.1)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--fractions needs three numbers train,val,test; got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError as err:
        raise ValueError(f"--fractions needs three numbers train,val,test; got {text!r}") from err
    return values  # type: ignore[return-value]


def choose_groups(studies: Sequence[str], patients: Sequence[str | None], *,
                  image_level: bool = False) -> tuple[list[str], str]:
    """The split unit for each study: its patient key, else the study itself.

    ``how`` is "patient" when every study has a patient key, "image" when the
    caller says each study is a lone image (PNG files without a group), else
    "study" (studies with a patient key still stay with their patient).
    """
    groups = [f"patient:{p}" if p else f"study:{s}" for s, p in zip(studies, patients, strict=True)]
    if studies and all(patients):
        return groups, "patient"
    return groups, "image" if image_level else "study"


def split_studies(studies: Sequence[str], groups: Sequence[str], labels: np.ndarray,
                  config: SplitConfig, how: str) -> SplitResult:
    """Assign each study (with its group) to train/val/test, stratified on labels.

    ``labels`` is ``[N, L]`` per study (1/0/-1; e.g. the max over its slices);
    a group's stratum is the union of its studies' positive labels.
    """
    n = len(studies)
    labels = np.asarray(labels)
    labels = labels.reshape(n, -1) if labels.ndim != 2 else labels
    group_ids, group_of_item = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    signature = np.zeros((len(group_ids), labels.shape[1]), dtype=np.int8)
    np.maximum.at(signature, group_of_item, (labels > 0).astype(np.int8))

    order = _stratified_order(signature, config.seed)
    side = np.empty(len(group_ids), dtype=np.int64)
    side[order] = _apportion(target_counts(len(order), config.fractions))

    fold = np.full(len(group_ids), -1, dtype=np.int64)
    if config.folds:
        in_cv = order[side[order] != 2]
        fold[in_cv] = _apportion(target_counts(len(in_cv), (1.0 / config.folds,) * config.folds))

    split = np.asarray(SPLITS, dtype=object)[side[group_of_item]]
    counts = {name: int((split == name).sum()) for name in SPLITS}
    for name, count, share in zip(SPLITS, counts.values(), config.fractions, strict=True):
        if count == 0 and n and share > 0:  # an empty side nobody asked for is no news
            log.warning("split %r is empty (%d studies in %d groups)", name, n, len(group_ids))
    return SplitResult(split=split.astype(str), fold=fold[group_of_item], how=how, counts=counts)


def _stratified_order(signature: np.ndarray, seed: int) -> np.ndarray:
    """Group indices ordered stratum by stratum (strata in seeded order), shuffled within."""
    rng = np.random.default_rng(seed)
    _, stratum = np.unique(signature, axis=0, return_inverse=True)
    stratum = np.asarray(stratum).reshape(-1)
    stratum_rank = rng.permutation(int(stratum.max()) + 1 if stratum.size else 0)
    within = rng.permutation(len(stratum))
    return np.lexsort((within, stratum_rank[stratum])) if stratum.size else np.zeros(0, dtype=np.int64)


def target_counts(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Groups per side: largest remainders of n * fraction; a side with a share gets at least
    one group when there are enough (10 studies at 0.8/0.1/0.1 give 8/1/1, 6 give 4/1/1)."""
    shares = np.asarray(fractions, dtype=np.float64)
    ideal = shares * n
    counts = np.floor(ideal).astype(np.int64)
    for side in np.argsort(-(ideal - counts), kind="stable")[: n - int(counts.sum())]:
        counts[side] += 1
    wanted = shares > 0
    if n >= int(wanted.sum()):
        for side in np.flatnonzero(wanted & (counts == 0)):
            counts[int(np.argmax(counts))] -= 1
            counts[side] += 1
    return counts


def _apportion(counts: np.ndarray) -> np.ndarray:
    """Side for each position so that every prefix is spread over the sides in proportion
    to ``counts``: each position goes to the side furthest below its quota so far."""
    n = int(counts.sum())
    shares = counts / max(n, 1)
    given = np.zeros(len(counts))
    sides = np.empty(n, dtype=np.int64)
    for i in range(n):
        side = int(np.argmax(np.where(given < counts, shares * (i + 1) - given, -np.inf)))
        sides[i] = side
        given[side] += 1
    return sides
