"""Decisions: logits → calibrated probabilities → a study's probabilities → yes/no per class.

The one place that train, evaluate, predict, serve and explain share, so a
study scores the same in an evaluation and in deployment:

- :func:`probabilities`: sigmoid (multi-label) or softmax (multi-class) of
  ``logits / T``;
- :func:`fit_temperature` (Guo et al. 2017): one scalar ``T > 0`` fitted on
  validation logits by minimising the negative log-likelihood; ``T > 1``
  softens an over-confident model, the arg-max and the ranking do not change.
  Multi-label tasks share one ``T`` over all labels (BCE averaged over sample
  and label); multi-class uses the cross-entropy. The fit is a bounded 1-D
  minimisation over ``log T`` (scipy's Brent method), so ``T`` stays positive;
- :func:`sweep_thresholds`: per-class F1-best thresholds on the calibrated
  validation probabilities (the EfficientNet seed's recipe), frozen for test;
  :func:`fit_calibration` does both, temperature first;
- :func:`aggregate_probabilities` / :func:`aggregate_truth`: a study from its
  slices (or series). Multi-label: the maximum over slices. Multi-class: the
  probabilities of the slice least likely to be the first class ("non-stroke";
  "ischemic" for subtype); its truth is the most frequent class other than the
  first when any slice has one, else the first (``SeriesDataset``'s study truth);
- :func:`decisions`: ``prob >= threshold`` (multi-label) or the one-hot arg-max
  (multi-class). :class:`DecisionRule` bundles labels, kind, temperature and
  thresholds for callers that hold a checkpoint rather than a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax

from headct.inference import SplitPredictions
from headct.tasks import Task

log = logging.getLogger(__name__)

KINDS = ("multilabel", "multiclass")
LOG_T_BOUNDS = (-4.0, 4.0)   # T in [0.018, 55]: far beyond any sensible network
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class DecisionRule:
    """What turns one model's logits into decisions: its labels, label kind, temperature, thresholds."""

    labels: tuple[str, ...]
    kind: str
    temperature: float = 1.0
    thresholds: Mapping[str, float] | None = None

    def probabilities(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``[..., n]`` of ``logits``."""
        return probabilities(logits, self.kind, self.temperature)

    def aggregate(self, prob: np.ndarray) -> np.ndarray:
        """``[k, n]`` slice (or series) probabilities of one study → ``[n]``."""
        return aggregate_probabilities(prob, self.kind)

    def decide(self, prob: np.ndarray) -> np.ndarray:
        """0/1 ``[N, n]`` decisions for ``[N, n]`` calibrated probabilities."""
        return decisions(prob, self.kind, self.labels, self.thresholds)

    def positive(self, prob: np.ndarray) -> list[list[str]]:
        """The labels decided positive, per row of ``[N, n]`` probabilities."""
        return [[label for label, d in zip(self.labels, row, strict=True) if d] for row in self.decide(prob)]


# --- probabilities -----------------------------------------------------------------

def probabilities(logits: Any, kind: str, temperature: float = 1.0) -> np.ndarray:
    """Probabilities of ``logits / T`` (float64): softmax (multiclass) or sigmoid (multilabel).

    ``logits`` is a numpy array or a torch tensor ``[..., n]``.
    """
    _check(kind, temperature)
    z = _to_numpy(logits) / temperature
    if kind == "multiclass":
        return softmax(z, axis=-1)
    return expit(z)


def fit_temperature(logits: Any, targets: Any, kind: str) -> float:
    """The temperature that minimises validation NLL of ``logits / T`` (``logits`` [N, C])."""
    nll = _nll_function(_to_numpy(logits), targets, kind)
    result = minimize_scalar(lambda log_t: nll(np.exp(log_t)), bounds=LOG_T_BOUNDS,
                             method="bounded", options={"xatol": 1e-6})
    temperature = float(np.exp(result.x))
    if np.isclose(result.x, LOG_T_BOUNDS, atol=1e-3).any():
        log.warning("temperature %.4g sits at the search bound; the logits may be degenerate",
                    temperature)
    log.info("temperature %.4f: NLL %.4f -> %.4f", temperature, nll(1.0), nll(temperature))
    return temperature


# --- thresholds --------------------------------------------------------------------

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
    y = as_columns(np.asarray(y_true), "y_true")
    p = as_columns(np.asarray(prob, dtype=np.float64), "prob")
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
    y = as_columns(np.asarray(y_true), "y_true")
    p = as_columns(np.asarray(prob, dtype=np.float64), "prob")
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and prob {p.shape} differ in shape")
    return np.array([_sensitivity_threshold(y[:, c].astype(bool), p[:, c], target, c) for c in range(p.shape[1])])


def fit_thresholds(logits: Any, targets: np.ndarray, labels: Sequence[str], kind: str,
                   temperature: float) -> dict[str, float]:
    """F1-best thresholds per label on the probabilities of ``logits`` at ``temperature``."""
    prob = probabilities(logits, kind, temperature)
    swept = sweep_thresholds(one_hot(targets, kind, len(labels)), prob)
    return {label: float(t) for label, t in zip(labels, swept, strict=True)}


def fit_calibration(logits: Any, targets: np.ndarray, labels: Sequence[str],
                    kind: str) -> tuple[dict[str, float], float]:
    """Temperature (NLL on validation logits), then F1-best thresholds on the calibrated probabilities."""
    temperature = fit_temperature(logits, targets, kind)
    return fit_thresholds(logits, targets, labels, kind, temperature), float(temperature)


# --- studies and decisions ---------------------------------------------------------------

def aggregate_probabilities(prob: np.ndarray, kind: str) -> np.ndarray:
    """``[k, n]`` slice (or series) probabilities of one study → ``[n]`` (rules in the module doc)."""
    if kind == "multilabel":
        return prob.max(axis=0)
    return prob[int(prob[:, 0].argmin())]


def aggregate_truth(targets: np.ndarray, kind: str, num_outputs: int) -> np.ndarray:
    """The study truth from its slices' truth (multi-label ``[k, n]`` 0/1, multi-class ``[k]`` classes)."""
    if kind == "multilabel":
        return targets.max(axis=0)
    counts = np.bincount(targets.astype(int), minlength=num_outputs)
    return np.int64(1 + counts[1:].argmax()) if counts[1:].sum() > 0 else np.int64(0)


def decisions(prob: np.ndarray, kind: str, labels: Sequence[str],
              thresholds: Mapping[str, float] | None) -> np.ndarray:
    """0/1 ``[N, n]``: ``prob >= threshold`` (multi-label; 0.5 where none) or the one-hot arg-max."""
    n = len(labels)
    if kind == "multiclass":
        return np.eye(n, dtype=int)[prob.argmax(axis=1)] if len(prob) else np.zeros((0, n), int)
    t = np.array([(thresholds or {}).get(label, DEFAULT_THRESHOLD) for label in labels])
    return (prob >= t).astype(int)


def one_hot(targets: np.ndarray, kind: str, num_outputs: int) -> np.ndarray:
    """Truth as 0/1 ``[N, n]``: multi-class class indices become one-hot rows."""
    if kind == "multiclass":
        return np.eye(num_outputs, dtype=int)[np.asarray(targets, dtype=int)]
    return np.asarray(targets).astype(int)


# --- helpers -------------------------------------------------------------------------------

def _nll_function(z: np.ndarray, targets: Any, kind: str) -> Callable[[float], float]:
    """Mean NLL of ``z / t`` as a function of ``t``: what the temperature fit minimises."""
    _check(kind, 1.0)
    if z.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {z.shape}")
    y = _to_numpy(targets)
    if kind == "multiclass":
        if y.ndim == 2:
            y = y.argmax(axis=1)
        y = y.astype(int)
        if y.shape != (z.shape[0],):
            raise ValueError(f"targets {y.shape} do not match logits {z.shape}")
        rows = np.arange(len(y))

        def nll(t: float) -> float:
            return float(-np.mean(log_softmax(z / t, axis=1)[rows, y]))
    else:
        y = y.astype(np.float64)
        if y.shape != z.shape:
            raise ValueError(f"targets {y.shape} do not match logits {z.shape}")

        def nll(t: float) -> float:
            s = z / t
            return float(-np.mean(y * log_expit(s) + (1.0 - y) * log_expit(-s)))
    return nll


def _best_f1_threshold(y: np.ndarray, p: np.ndarray, column: int) -> float:
    y = y.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        log.warning("class %d has no positive example; threshold left at 0.5", column)
        return DEFAULT_THRESHOLD
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
        return DEFAULT_THRESHOLD
    needed = int(np.ceil(target * n_pos - 1e-9))          # positives that must sit at or above t
    value = np.sort(p[y])[::-1][needed - 1]
    below = p[p < value]
    lower = float(below.max()) if below.size else min(0.0, value)
    return float((value + lower) / 2.0)


def check_kind(kind: str) -> None:
    """Refuse a label kind other than "multilabel" or "multiclass" (also used by headct.metrics)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def as_columns(a: np.ndarray, name: str) -> np.ndarray:
    """``[N]`` → ``[N, 1]``; ``[N, C]`` as is; anything else refused (also used by headct.metrics)."""
    if a.ndim == 1:
        return a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N, C], got shape {a.shape}")
    return a


def _check(kind: str, temperature: float) -> None:
    check_kind(kind)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):          # torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


# --- a split's studies -------------------------------------------------------------

@dataclass
class StudyTable:
    """One row per study: probabilities and truth (same conventions as the slices)."""

    studies: np.ndarray        # str [M]
    prob: np.ndarray           # float [M, n]
    targets: np.ndarray


def study_table(pred: SplitPredictions, task: Task, temperature: float) -> StudyTable:
    """One row per study: aggregated slice probabilities (or the series model's own) and truth."""
    slice_prob = probabilities(pred.logits, task.kind, temperature)
    studies = list(dict.fromkeys(pred.studies.tolist()))
    probs, targets = [], []
    for study in studies:
        members = pred.studies == study
        targets.append(aggregate_truth(pred.targets[members], task.kind, task.num_outputs))
        if pred.series_logits is not None:
            series_prob = probabilities(pred.series_logits[pred.series_studies == study], task.kind,
                                        temperature)
            probs.append(aggregate_probabilities(series_prob, task.kind))
        else:
            probs.append(aggregate_probabilities(slice_prob[members], task.kind))
    n = task.num_outputs
    return StudyTable(
        studies=np.asarray(studies, dtype=str),
        prob=np.stack(probs) if probs else np.zeros((0, n)),
        targets=np.stack(targets) if targets else np.zeros((0, n) if task.kind == "multilabel" else 0),
    )
