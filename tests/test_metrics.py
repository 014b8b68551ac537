"""Metrics: agreement with scikit-learn, hand-computed ECE and log loss, bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, precision_score, recall_score, roc_auc_score

from headct.metrics import (
    auroc,
    bootstrap_metric_cis,
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
    resample_indices,
    rsna_log_loss,
)

LABELS3 = ["a", "b", "c"]


def _multilabel_set(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.5, 0.2]).astype(int)
    prob = np.clip(0.35 * y + rng.random((n, 3)) * 0.65, 0, 1)
    return y, prob


def _multiclass_set(n: int = 300, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, prob


# --- classification_metrics ---------------------------------------------------

def test_multilabel_metrics_match_sklearn() -> None:
    y, prob = _multilabel_set()
    t = np.array([0.4, 0.5, 0.6])
    m = classification_metrics(y, prob, labels=LABELS3, kind="multilabel", thresholds=t)
    d = (prob >= t).astype(int)
    assert m["f1_macro"] == pytest.approx(f1_score(y, d, average="macro"))
    assert m["f1_micro"] == pytest.approx(f1_score(y, d, average="micro"))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, d, average="weighted"))
    assert m["micro_auroc"] == pytest.approx(roc_auc_score(y, prob, average="micro"))
    assert m["macro_auroc"] == pytest.approx(roc_auc_score(y, prob, average="macro"))
    assert m["accuracy"] == pytest.approx(np.mean((d == y).all(axis=1)))
    assert m["accuracy_kind"] == "subset"
    assert m["label_accuracy"] == pytest.approx(np.mean(d == y))
    for c, label in enumerate(LABELS3):
        pc = m["per_class"][label]
        assert pc["auroc"] == pytest.approx(roc_auc_score(y[:, c], prob[:, c]))
        assert pc["f1"] == pytest.approx(f1_score(y[:, c], d[:, c]))
        assert pc["precision"] == pytest.approx(precision_score(y[:, c], d[:, c]))
        assert pc["sensitivity"] == pytest.approx(recall_score(y[:, c], d[:, c]))
        negatives = y[:, c] == 0
        assert pc["specificity"] == pytest.approx(np.mean(d[negatives, c] == 0))
        assert pc["threshold"] == t[c]
        assert pc["support"] == int(y[:, c].sum())
        tn = int(((y[:, c] == 0) & (d[:, c] == 0)).sum())
        tp = int(((y[:, c] == 1) & (d[:, c] == 1)).sum())
        assert m["confusion_matrix"][label][0][0] == tn
        assert m["confusion_matrix"][label][1][1] == tp
    json.dumps(m)  # JSON-ready


def test_multiclass_metrics_match_sklearn_and_accept_one_hot() -> None:
    y, prob = _multiclass_set()
    m = classification_metrics(y, prob, labels=LABELS3, kind="multiclass")
    d = prob.argmax(axis=1)
    assert m["decision"] == "argmax"
    assert m["accuracy"] == pytest.approx(np.mean(d == y))
    assert m["f1_macro"] == pytest.approx(f1_score(y, d, average="macro"))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, d, average="weighted"))
    assert m["macro_auroc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    onehot = np.eye(3, dtype=int)[y]
    assert m["micro_auroc"] == pytest.approx(roc_auc_score(onehot, prob, average="micro"))
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == len(y)
    assert cm[1, 2] == int(((y == 1) & (d == 2)).sum())
    assert m["per_class"]["b"]["specificity"] == pytest.approx(np.mean(d[y != 1] != 1))
    assert m["per_class"]["b"]["threshold"] is None
    assert "binary" not in m
    again = classification_metrics(onehot, prob, labels=LABELS3, kind="multiclass")
    assert again["f1_macro"] == m["f1_macro"] and again["confusion_matrix"] == m["confusion_matrix"]


def test_binary_multiclass_reports_the_positive_class_threshold() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.3, 0.45, 0.4, 0.7, 0.9])
    prob = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, prob, labels=["non-stroke", "stroke"], kind="multiclass",
                               thresholds={"stroke": 0.35})
    b = m["binary"]
    assert b["positive"] == "stroke" and b["threshold"] == 0.35
    # at 0.35: decisions 0,0,1,1,1,1 -> tp 3, fp 1, tn 2, fn 0
    assert b["sensitivity"] == 1.0
    assert b["specificity"] == pytest.approx(2 / 3)
    assert b["f1"] == pytest.approx(6 / 7)
    # arg-max (0.5): decisions 0,0,0,0,1,1 -> stroke recall 2/3
    assert m["per_class"]["stroke"]["sensitivity"] == pytest.approx(2 / 3)


def test_undefined_auroc_is_none_not_a_crash() -> None:
    y = np.array([[0, 1], [0, 0], [0, 1], [0, 0]])
    prob = np.array([[0.2, 0.9], [0.1, 0.2], [0.3, 0.6], [0.6, 0.4]])
    m = classification_metrics(y, prob, labels=["empty", "x"], kind="multilabel")
    assert m["per_class"]["empty"]["auroc"] is None
    assert m["per_class"]["x"]["auroc"] == 1.0
    assert m["macro_auroc"] == 1.0  # mean of the defined ones
    assert m["per_class"]["empty"]["f1"] == 0.0


def test_shape_and_kind_errors_are_clear() -> None:
    y, prob = _multilabel_set(10)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(y, prob, labels=["a", "b"], kind="multilabel")
    with pytest.raises(ValueError, match="kind"):
        classification_metrics(y, prob, labels=LABELS3, kind="binary")
    with pytest.raises(ValueError, match="0 and 1"):
        classification_metrics(y * 2, prob, labels=LABELS3, kind="multilabel")


# --- ECE -------------------------------------------------------------------------

def test_ece_multiclass_hand_computed() -> None:
    # top-label confidences 0.9, 0.9, 0.6, 0.6; right, wrong, right, right
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    # bins (0.8667,0.9333]: conf .9 acc .5 -> .4*2/4 ; (0.6,0.6667]? 0.6 is in (0.5333,0.6]: conf .6 acc 1 -> .4*2/4
    assert expected_calibration_error(y, prob, "multiclass") == pytest.approx(0.4)


def test_ece_multilabel_hand_computed_and_perfect_is_zero() -> None:
    prob = np.array([[0.25, 0.75], [0.25, 0.75]])
    y = np.array([[0, 1], [1, 0]])
    # bin of 0.25: mean p .25 vs 1/2 positive -> .25 ; bin of .75: .75 vs 1/2 -> .25
    assert expected_calibration_error(y, prob, "multilabel") == pytest.approx(0.25)
    y_perfect = np.array([[0, 1], [0, 1], [1, 1], [0, 0]])
    p_perfect = np.array([[0.25, 0.75]] * 4)
    assert expected_calibration_error(y_perfect, p_perfect, "multilabel") == pytest.approx(0.0)


def test_ece_uses_bin_boundaries_right_closed() -> None:
    # with 2 bins 0.5 belongs to the first bin (0, 0.5], 0.0 too
    prob = np.array([[0.0], [0.5], [1.0]])
    y = np.array([[0], [1], [1]])
    # bin 1: conf mean .25, frac pos .5 -> gap .25 * 2/3 ; bin 2: 1 vs 1 -> 0
    assert expected_calibration_error(y, prob, "multilabel", n_bins=2) == pytest.approx(0.25 * 2 / 3)
    stats = reliability_bins(y, prob, "multilabel", n_bins=2)
    assert stats["count"].tolist() == [2, 1]


# --- RSNA log loss -----------------------------------------------------------------

def test_rsna_log_loss_hand_computed() -> None:
    labels = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    y = np.array([[0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]])
    prob = np.array([[0.1, 0.2, 0.1, 0.1, 0.1, 0.3], [0.8, 0.1, 0.1, 0.1, 0.1, 0.9]])
    row0 = -(np.log(0.9) * 3 + np.log(0.8) + np.log(0.9) + 2 * np.log(0.7)) / 7
    row1 = -(np.log(0.8) + np.log(0.9) * 4 + 2 * np.log(0.9)) / 7
    assert rsna_log_loss(y, prob, labels) == pytest.approx((row0 + row1) / 2)
    # with equal weights it would be sklearn's per-element log loss; with "any" x2 it is not
    assert rsna_log_loss(y, prob, labels) != pytest.approx(log_loss(y.ravel(), prob.ravel()))
    with pytest.raises(ValueError, match="any"):
        rsna_log_loss(y, prob, labels[:5] + ["other"])


def test_rsna_log_loss_clips_certain_mistakes() -> None:
    labels = ["subdural", "any"]
    value = rsna_log_loss(np.array([[1, 1]]), np.array([[0.0, 1.0]]), labels)
    assert value == pytest.approx(-np.log(1e-15) / 3, rel=1e-6)


# --- bootstrap ---------------------------------------------------------------------

def test_fast_auroc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert auroc(np.ones(5), np.arange(5)) is None


def test_group_resampling_keeps_groups_whole() -> None:
    groups = np.array(["s1", "s1", "s1", "s2", "s3", "s3"])
    for idx in resample_indices(6, 20, seed=1, groups=groups):
        counts = {g: int(np.sum(groups[idx] == g)) for g in ("s1", "s2", "s3")}
        assert counts["s1"] % 3 == 0 and counts["s3"] % 2 == 0
        assert sum(counts.values()) == len(idx)


def test_bootstrap_intervals_bracket_the_estimate_and_are_reproducible() -> None:
    y, prob = _multilabel_set(300)
    ci = bootstrap_metric_cis(y, prob, labels=LABELS3, kind="multilabel", n=300, seed=0)
    low, high = ci["per_class"]["b"]["auroc"]
    point = roc_auc_score(y[:, 1], prob[:, 1])
    assert low < point < high and high - low < 0.2
    assert bootstrap_metric_cis(y, prob, labels=LABELS3, kind="multilabel", n=300, seed=0) == ci
    # resampling groups of ten rows changes the draws but still brackets the estimate
    groups = np.arange(300) // 10
    grouped = bootstrap_metric_cis(y, prob, labels=LABELS3, kind="multilabel", n=300, seed=0, groups=groups)
    g_low, g_high = grouped["per_class"]["b"]["auroc"]
    assert g_low < point < g_high and (g_low, g_high) != (low, high)


def test_bootstrap_metric_cis_cover_the_point_metrics() -> None:
    y, prob = _multiclass_set(240)
    m = classification_metrics(y, prob, labels=LABELS3, kind="multiclass")
    ci = bootstrap_metric_cis(y, prob, labels=LABELS3, kind="multiclass", n=200, seed=0)
    for name in ("f1_macro", "f1_micro", "micro_auroc", "macro_auroc"):
        low, high = ci[name]
        assert low <= m[name] <= high, name
    for label in LABELS3:
        for metric in ("auroc", "f1"):
            low, high = ci["per_class"][label][metric]
            assert low <= m["per_class"][label][metric] <= high
    json.dumps(ci)


def test_bootstrap_of_an_undefined_metric_gives_none() -> None:
    y = np.zeros((20, 1), int)
    prob = np.linspace(0, 1, 20)[:, None]
    ci = bootstrap_metric_cis(y, prob, labels=["x"], kind="multilabel", n=50)
    assert ci["per_class"]["x"]["auroc"] == [None, None]
