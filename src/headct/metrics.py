"""Classification metrics for headct evaluations: the numbers in ``metrics.json``.

``headct evaluate`` (and ``headct train`` for its validation score) call, in order:

1. :func:`sweep_thresholds` on the *validation* predictions: one F1-maximising
   threshold per class, frozen for test (the EfficientNet seed's recipe);
2. :func:`classification_metrics` on the test predictions with those thresholds:
   per-class AUROC / F1 / precision / sensitivity / specificity, micro and macro
   summaries, accuracy, confusion matrices and ECE;
3. :func:`bootstrap_metric_cis` for the ``ci95`` block (resampled by study when
   slices of one study are present);
4. :func:`rsna_log_loss` for the RSNA task.

Shapes and conventions shared by every function here:

- ``kind="multilabel"``: ``y_true`` [N, C] of 0/1, ``prob`` [N, C] independent
  sigmoid probabilities; a class is positive when ``prob >= threshold``.
- ``kind="multiclass"``: ``y_true`` [N] class indices or [N, C] one-hot,
  ``prob`` [N, C] softmax probabilities; the decision is the arg-max.

Every value returned is a plain Python ``float``/``int``/``list``/``None`` so the
result can go straight into ``json.dump``. AUROC of a class that has only one
outcome in ``y_true`` is undefined and reported as ``None``.

scikit-learn does the point estimates. The bootstrap loop uses small numpy
versions of AUROC and F1 (checked against scikit-learn in the tests) because
scikit-learn's input validation costs about a millisecond per call, which is
most of the run time over thousands of resamples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

log = logging.getLogger(__name__)

KINDS = ("multilabel", "multiclass")
ECE_BINS = 15
RSNA_ANY = "any"
RSNA_ANY_WEIGHT = 2.0
LOG_LOSS_EPS = 1e-15

ThresholdsLike = Mapping[str, float] | Sequence[float] | np.ndarray | float | None


# --- thresholds ----------------------------------------------------------------

def sweep_thresholds(y_true: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Per-class threshold that maximises F1 on validation predictions.

    ``y_true`` and ``prob`` are [N, C] (multi-class callers pass one-hot truth).
    The candidates are the distinct predicted probabilities: between two
    neighbouring distinct values every threshold gives the same decisions, so
    each candidate stands for an interval ``(next lower value, value]``. The
    returned threshold is the *middle* of the best interval, the point that is
    furthest from flipping any validation decision; when several intervals
    reach the same best F1 the widest one wins (then the higher one). Apply as
    ``prob >= threshold``. A class with no positive example gets 0.5 (F1 is
    undefined there) and a warning.
    """
    y = _as_2d(np.asarray(y_true), "y_true")
    p = _as_2d(np.asarray(prob, dtype=np.float64), "prob")
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and prob {p.shape} differ in shape")
    return np.array([_best_f1_threshold(y[:, c], p[:, c], c) for c in range(p.shape[1])])


def sensitivity_thresholds(y_true: np.ndarray, prob: np.ndarray, target: float) -> np.ndarray:
    """Per-class threshold of the most specific operating point whose sensitivity reaches ``target``.

    ``y_true`` and ``prob`` are [N, C]. For each class: the highest threshold
    with ``mean(prob[positives] >= t) >= target``, placed in the middle of the
    interval that gives the same decisions (as :func:`sweep_thresholds`), so a
    rounding of the probabilities does not flip one. A class with no positive
    example gets 0.5 and a warning.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y = _as_2d(np.asarray(y_true), "y_true")
    p = _as_2d(np.asarray(prob, dtype=np.float64), "prob")
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and prob {p.shape} differ in shape")
    return np.array([_sensitivity_threshold(y[:, c].astype(bool), p[:, c], target, c) for c in range(p.shape[1])])


# --- the metrics block ---------------------------------------------------------

def classification_metrics(
    y_true: np.ndarray,
    prob: np.ndarray,
    *,
    labels: Sequence[str],
    kind: str,
    thresholds: ThresholdsLike = None,
) -> dict[str, Any]:
    """All the point metrics of one evaluation, as a JSON-ready dict.

    Keys: ``kind``, ``labels``, ``n``, ``decision`` ("threshold" or "argmax"),
    ``per_class`` {label: {auroc, f1, precision, recall, sensitivity,
    specificity, threshold, support}}, ``micro_auroc``, ``macro_auroc`` (mean of
    the defined per-class AUROCs), ``f1_macro``, ``f1_micro``, ``f1_weighted``,
    ``precision_macro``, ``recall_macro``, ``accuracy`` (+ ``accuracy_kind``),
    ``confusion_matrix``, ``ece``.

    Multi-label: decisions are ``prob >= thresholds`` (default 0.5 each);
    ``accuracy`` is the *subset* accuracy (every label right) and
    ``label_accuracy`` the mean per-label accuracy; ``confusion_matrix`` is
    {label: [[tn, fp], [fn, tp]]}. Multi-class: decisions are the arg-max,
    per-class figures are one-vs-rest, ``confusion_matrix`` is C x C (rows =
    truth, columns = decision) and ``threshold`` is ``None``. With two classes
    a ``binary`` block adds the figures for ``prob[:, 1] >= t`` (t from
    ``thresholds`` for the second label, default 0.5).
    """
    _check_kind(kind)
    labels = list(labels)
    p = _as_2d(np.asarray(prob, dtype=np.float64), "prob")
    if p.shape[1] != len(labels):
        raise ValueError(f"prob has {p.shape[1]} columns but {len(labels)} labels were given")
    if kind == "multilabel":
        return _multilabel_metrics(_binary_matrix(y_true, p.shape), p, labels, thresholds)
    return _multiclass_metrics(_class_indices(y_true, p.shape), p, labels, thresholds)


def expected_calibration_error(
    y_true: np.ndarray, prob: np.ndarray, kind: str, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins on [0, 1].

    Multi-class: top-label ECE (confidence = the largest probability, outcome =
    arg-max is right), as in Guo et al. 2017. Multi-label: every (sample, label)
    probability is a binary prediction; per bin, the mean probability is
    compared with the fraction of positives. Bins are weighted by their count.
    Bin ``i`` holds values in ``(i/n, (i+1)/n]``; 0 falls in the first bin.
    """
    _check_kind(kind)
    p = _as_2d(np.asarray(prob, dtype=np.float64), "prob")
    if kind == "multiclass":
        y = _class_indices(y_true, p.shape)
        confidence = p.max(axis=1)
        outcome = (p.argmax(axis=1) == y).astype(np.float64)
    else:
        confidence = p.ravel()
        outcome = _binary_matrix(y_true, p.shape).ravel().astype(np.float64)
    return _ece(confidence, outcome, n_bins)


def reliability_bins(
    y_true: np.ndarray, prob: np.ndarray, kind: str, n_bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """The per-bin numbers behind :func:`expected_calibration_error` (for the diagram).

    Returns ``edges`` [n_bins+1], ``confidence`` and ``accuracy`` [n_bins]
    (NaN for empty bins) and ``count`` [n_bins].
    """
    _check_kind(kind)
    p = _as_2d(np.asarray(prob, dtype=np.float64), "prob")
    if kind == "multiclass":
        y = _class_indices(y_true, p.shape)
        confidence, outcome = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    else:
        confidence = p.ravel()
        outcome = _binary_matrix(y_true, p.shape).ravel().astype(np.float64)
    return _bin_stats(confidence, outcome, n_bins)


def rsna_log_loss(y_true: np.ndarray, prob: np.ndarray, labels: Sequence[str]) -> float:
    """The RSNA 2019 competition metric: weighted multi-label log loss.

    Per row, the binary cross-entropy of each label weighted 2 for "any" and 1
    for the others, divided by the weight sum; then the mean over rows.
    Probabilities are clipped to [1e-15, 1 - 1e-15].
    """
    labels = list(labels)
    p = _as_2d(np.asarray(prob, dtype=np.float64), "prob")
    y = _binary_matrix(y_true, p.shape).astype(np.float64)
    if p.shape[1] != len(labels):
        raise ValueError(f"prob has {p.shape[1]} columns but {len(labels)} labels were given")
    if RSNA_ANY not in labels:
        raise ValueError(f"the RSNA log loss needs an {RSNA_ANY!r} label, got {labels}")
    weights = np.array([RSNA_ANY_WEIGHT if name == RSNA_ANY else 1.0 for name in labels])
    p = np.clip(p, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    bce = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    return float(np.mean(bce @ weights / weights.sum()))


# --- bootstrap -----------------------------------------------------------------

def resample_indices(
    n_items: int, n: int, seed: int = 0, groups: Sequence[Any] | np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Yield ``n`` bootstrap index arrays over ``n_items`` items.

    Without ``groups`` items are drawn with replacement. With ``groups`` (one
    key per item, e.g. the study) whole groups are drawn with replacement and
    all their items kept, because slices of one study are not independent.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n):
            yield rng.integers(0, n_items, size=n_items)
        return
    keys = np.asarray(groups)
    if len(keys) != n_items:
        raise ValueError(f"groups has {len(keys)} entries for {n_items} items")
    _, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(inverse))]
    members = [order[starts[g]:starts[g + 1]] for g in range(len(starts) - 1)]
    for _ in range(n):
        picked = rng.integers(0, len(members), size=len(members))
        yield np.concatenate([members[g] for g in picked])


def bootstrap_ci(
    y_true: np.ndarray,
    prob: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float | None],
    n: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
    alpha: float = 0.05,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval (95 % by default) of ``metric_fn(y, prob)``.

    Resamples rows (or whole ``groups``). Resamples where the metric is
    undefined (``None`` or NaN, e.g. AUROC with one class drawn) are dropped;
    if fewer than half remain the interval is ``(None, None)``.
    """
    y = np.asarray(y_true)
    p = np.asarray(prob)
    values = []
    for idx in resample_indices(len(y), n, seed, groups):
        value = metric_fn(y[idx], p[idx])
        if value is not None and np.isfinite(value):
            values.append(float(value))
    return _percentile_interval(values, n, alpha)


def bootstrap_metric_cis(
    y_true: np.ndarray,
    prob: np.ndarray,
    *,
    labels: Sequence[str],
    kind: str,
    thresholds: ThresholdsLike = None,
    n: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The ``ci95`` block of ``metrics.json``: bootstrap intervals for F1 and AUROC.

    Returns {``f1_macro``, ``f1_micro``, ``micro_auroc``, ``macro_auroc``:
    [low, high], ``per_class``: {label: {``auroc``: [low, high], ``f1``: [low,
    high]}}, ``n_boot``, ``groups`` (True when resampled by group)}. Every
    metric is computed on the same resamples; decisions as in
    :func:`classification_metrics`.
    """
    _check_kind(kind)
    labels = list(labels)
    p = _as_2d(np.asarray(prob, dtype=np.float64), "prob")
    if kind == "multilabel":
        y = _binary_matrix(y_true, p.shape).astype(bool)
        decided = p >= _threshold_vector(thresholds, labels, default=0.5)
    else:
        classes = _class_indices(y_true, p.shape)
        y = np.eye(p.shape[1], dtype=bool)[classes]
        decided = np.eye(p.shape[1], dtype=bool)[p.argmax(axis=1)]
    draws: dict[str, list[float]] = {}
    for idx in resample_indices(len(p), n, seed, groups):
        for name, value in _fast_summary(y[idx], p[idx], decided[idx], labels).items():
            if value is not None and np.isfinite(value):
                draws.setdefault(name, []).append(value)
    interval = {name: _percentile_interval(draws.get(name, []), n, alpha) for name in
                ["f1_macro", "f1_micro", "micro_auroc", "macro_auroc"]}
    out: dict[str, Any] = {name: list(bounds) for name, bounds in interval.items()}
    out["per_class"] = {
        label: {m: list(_percentile_interval(draws.get(f"{m}/{label}", []), n, alpha))
                for m in ("auroc", "f1")}
        for label in labels
    }
    out["n_boot"] = n
    out["groups"] = groups is not None
    return out


def auroc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC of one binary outcome, ``None`` when only one outcome is present.

    The Mann-Whitney identity on mid-ranks (ties count one half), equal to
    ``sklearn.metrics.roc_auc_score`` but without its per-call validation cost.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(score, dtype=np.float64).ravel())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --- helpers: threshold sweep ----------------------------------------------------

def _best_f1_threshold(y: np.ndarray, p: np.ndarray, column: int) -> float:
    y = y.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        log.warning("class %d has no positive example; threshold left at 0.5", column)
        return 0.5
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(p_sorted)), len(p_sorted) - 1]
    values = p_sorted[last_of_value]                       # distinct, descending
    tp = np.cumsum(y_sorted)[last_of_value]
    fp = last_of_value + 1 - tp
    f1 = 2.0 * tp / (tp + fp + n_pos)
    lower = np.r_[values[1:], min(0.0, values[-1])]        # next lower distinct value
    width = values - lower
    best = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0.0, atol=1e-12))
    pick = best[np.argmax(width[best])]                    # widest; first = highest on ties
    return float((values[pick] + lower[pick]) / 2.0)


def _sensitivity_threshold(y: np.ndarray, p: np.ndarray, target: float, column: int) -> float:
    n_pos = int(y.sum())
    if n_pos == 0:
        log.warning("class %d has no positive example; threshold left at 0.5", column)
        return 0.5
    needed = int(np.ceil(target * n_pos - 1e-9))          # positives that must sit at or above t
    value = np.sort(p[y])[::-1][needed - 1]
    below = p[p < value]
    lower = float(below.max()) if below.size else min(0.0, value)
    return float((value + lower) / 2.0)


# --- helpers: metric blocks ----------------------------------------------------

def _multilabel_metrics(
    y: np.ndarray, p: np.ndarray, labels: list[str], thresholds: ThresholdsLike
) -> dict[str, Any]:
    t = _threshold_vector(thresholds, labels, default=0.5)
    d = (p >= t).astype(int)
    prec, rec, f1, support = precision_recall_fscore_support(y, d, average=None, zero_division=0)
    matrices = multilabel_confusion_matrix(y, d)
    per_class = _per_class_block(labels, y, p, (prec, rec, f1, support), matrices, t)
    out = _summary_header("multilabel", labels, len(y), "threshold", per_class)
    out.update(
        micro_auroc=_sk_auroc(y.ravel(), p.ravel()),
        macro_auroc=_mean_defined(v["auroc"] for v in per_class.values()),
        **_averaged_f1(y, d),
        accuracy=float(accuracy_score(y, d)),
        accuracy_kind="subset",
        label_accuracy=float(np.mean(y == d)),
        confusion_matrix={label: matrices[c].tolist() for c, label in enumerate(labels)},
        ece=expected_calibration_error(y, p, "multilabel"),
    )
    return out


def _per_class_block(labels: list[str], truth: np.ndarray, p: np.ndarray, prfs: tuple, matrices: np.ndarray,
                     thresholds: np.ndarray | None) -> dict[str, dict[str, Any]]:
    """Per-class rows from one-vs-rest truth ``[N, C]``, sklearn's precision/recall/F1/support and
    2x2 confusion matrices ``[[tn, fp], [fn, tp]]`` per class; thresholds None for argmax decisions."""
    prec, rec, f1, support = prfs
    per_class = {}
    for c, label in enumerate(labels):
        (tn, fp), _ = matrices[c]
        per_class[label] = {
            "auroc": _sk_auroc(truth[:, c], p[:, c]),
            "f1": float(f1[c]),
            "precision": float(prec[c]),
            "recall": float(rec[c]),
            "sensitivity": float(rec[c]),
            "specificity": _ratio(tn, tn + fp),
            "threshold": None if thresholds is None else float(thresholds[c]),
            "support": int(support[c]),
        }
    return per_class


def _multiclass_metrics(
    y: np.ndarray, p: np.ndarray, labels: list[str], thresholds: ThresholdsLike
) -> dict[str, Any]:
    n_classes = len(labels)
    d = p.argmax(axis=1)
    classes = list(range(n_classes))
    prec, rec, f1, support = precision_recall_fscore_support(
        y, d, labels=classes, average=None, zero_division=0
    )
    matrix = confusion_matrix(y, d, labels=classes)
    onehot = np.eye(n_classes, dtype=int)[y]
    one_vs_rest = multilabel_confusion_matrix(y, d, labels=classes)
    per_class = _per_class_block(labels, onehot, p, (prec, rec, f1, support), one_vs_rest, None)
    out = _summary_header("multiclass", labels, len(y), "argmax", per_class)
    out.update(
        micro_auroc=_sk_auroc(onehot.ravel(), p.ravel()),
        macro_auroc=_mean_defined(v["auroc"] for v in per_class.values()),
        **_averaged_f1(y, d, classes),
        accuracy=float(accuracy_score(y, d)),
        accuracy_kind="top1",
        confusion_matrix=matrix.tolist(),
        ece=expected_calibration_error(y, p, "multiclass"),
    )
    if n_classes == 2:
        out["binary"] = _binary_block(onehot[:, 1], p[:, 1], labels, thresholds)
    return out


def _binary_block(y: np.ndarray, score: np.ndarray, labels: list[str], thresholds: ThresholdsLike) -> dict:
    t = float(_threshold_vector(thresholds, labels, default=0.5)[1])
    d = (score >= t).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, d, labels=[0, 1]).ravel()
    return {
        "positive": labels[1],
        "threshold": t,
        "auroc": _sk_auroc(y, score),
        "f1": float(f1_score(y, d, zero_division=0)),
        "precision": float(precision_score(y, d, zero_division=0)),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": float(accuracy_score(y, d)),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def _summary_header(kind: str, labels: list[str], n: int, decision: str, per_class: dict) -> dict:
    return {"kind": kind, "labels": labels, "n": int(n), "decision": decision, "per_class": per_class}


def _averaged_f1(y: np.ndarray, d: np.ndarray, classes: list[int] | None = None) -> dict[str, float]:
    kw: dict[str, Any] = {"zero_division": 0}
    if classes is not None:
        kw["labels"] = classes
    return {
        "f1_macro": float(f1_score(y, d, average="macro", **kw)),
        "f1_micro": float(f1_score(y, d, average="micro", **kw)),
        "f1_weighted": float(f1_score(y, d, average="weighted", **kw)),
        "precision_macro": float(precision_score(y, d, average="macro", **kw)),
        "recall_macro": float(recall_score(y, d, average="macro", **kw)),
    }


def _fast_summary(y: np.ndarray, p: np.ndarray, d: np.ndarray, labels: list[str]) -> dict[str, float | None]:
    """F1 and AUROC per class plus micro/macro on one resample (numpy, see module doc)."""
    tp = (y & d).sum(axis=0).astype(np.float64)
    fp = (~y & d).sum(axis=0).astype(np.float64)
    fn = (y & ~d).sum(axis=0).astype(np.float64)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    out: dict[str, float | None] = {
        "f1_macro": float(f1.mean()),
        "f1_micro": float(2 * tp.sum() / micro_denom) if micro_denom > 0 else 0.0,
        "micro_auroc": auroc(y.ravel(), p.ravel()),
    }
    aurocs = []
    for c, label in enumerate(labels):
        out[f"f1/{label}"] = float(f1[c])
        out[f"auroc/{label}"] = value = auroc(y[:, c], p[:, c])
        aurocs.append(value)
    out["macro_auroc"] = _mean_defined(aurocs)
    return out


def _percentile_interval(values: list[float], n: int, alpha: float) -> tuple[float | None, float | None]:
    if len(values) < max(1, n // 2):
        return (None, None)
    low, high = np.quantile(np.asarray(values), [alpha / 2.0, 1.0 - alpha / 2.0])
    return (float(low), float(high))


# --- helpers: ECE ----------------------------------------------------------------

def _bin_stats(confidence: np.ndarray, outcome: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=outcome, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": edges, "confidence": conf_sum / count, "accuracy": acc_sum / count,
                "count": count}


def _ece(confidence: np.ndarray, outcome: np.ndarray, n_bins: int) -> float:
    if confidence.size == 0:
        raise ValueError("ECE of an empty set")
    stats = _bin_stats(confidence, outcome, n_bins)
    full = stats["count"] > 0
    gap = np.abs(stats["accuracy"][full] - stats["confidence"][full])
    return float(np.sum(gap * stats["count"][full]) / confidence.size)


# --- helpers: inputs -----------------------------------------------------------

def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _as_2d(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 1:
        return a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N, C], got shape {a.shape}")
    return a


def _binary_matrix(y_true: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    y = _as_2d(np.asarray(y_true), "y_true")
    if y.shape != shape:
        raise ValueError(f"y_true {y.shape} and prob {shape} differ in shape")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("multi-label y_true must hold only 0 and 1")
    return y.astype(int)


def _class_indices(y_true: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Multi-class truth as class indices [N], from indices [N] or one-hot [N, C]."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        if y.shape != shape or not np.isin(y, (0, 1)).all() or not (y.sum(axis=1) == 1).all():
            raise ValueError(f"one-hot y_true must be {shape} with exactly one 1 per row")
        y = y.argmax(axis=1)
    if y.ndim != 1 or len(y) != shape[0]:
        raise ValueError(f"y_true must be [N] class indices or [N, C] one-hot for {shape[0]} rows")
    y = y.astype(int)
    if y.min(initial=0) < 0 or y.max(initial=0) >= shape[1]:
        raise ValueError(f"class index outside 0..{shape[1] - 1}")
    return y


def _threshold_vector(thresholds: ThresholdsLike, labels: list[str], default: float) -> np.ndarray:
    if thresholds is None:
        return np.full(len(labels), default)
    if isinstance(thresholds, Mapping):
        return np.array([float(thresholds.get(label, default)) for label in labels])
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        return np.full(len(labels), float(t))
    if t.shape != (len(labels),):
        raise ValueError(f"{t.size} thresholds for {len(labels)} labels")
    return t


def _sk_auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    if np.unique(y).size < 2:
        return None
    return float(roc_auc_score(y, score))


def _mean_defined(values: Any) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None
