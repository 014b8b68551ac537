"""Decisions: temperature scaling recovers a known over-confidence, the F1 sweep, study aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from headct.decide import (
    DecisionRule,
    aggregate_probabilities,
    aggregate_truth,
    decisions,
    fit_calibration,
    fit_temperature,
    probabilities,
    sweep_thresholds,
)
from headct.metrics import expected_calibration_error


def _nll(logits: np.ndarray, y: np.ndarray, t: float = 1.0) -> float:
    return float(F.cross_entropy(torch.from_numpy(logits / t), torch.from_numpy(y)))


def _calibrated_multiclass(n: int = 4000, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax *is* the true class distribution the labels are drawn from."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, c))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in p])
    return z, y


def _calibrated_multilabel(n: int = 3000, c: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, c))
    y = (rng.random((n, c)) < 1 / (1 + np.exp(-z))).astype(int)
    return z, y


def test_multiclass_over_confident_logits_recover_t_and_lower_ece() -> None:
    z, y = _calibrated_multiclass()
    hot = 3.0 * z
    t = fit_temperature(hot, y, "multiclass")
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(y, probabilities(hot, "multiclass", 1.0), "multiclass")
    after = expected_calibration_error(y, probabilities(hot, "multiclass", t), "multiclass")
    assert after < before / 2
    assert _nll(hot, y, t) < _nll(hot, y)


def test_multilabel_shares_one_temperature_and_recovers_it() -> None:
    z, y = _calibrated_multilabel()
    hot = 3.0 * z
    t = fit_temperature(torch.from_numpy(hot).float(), torch.from_numpy(y), "multilabel")
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(y, probabilities(hot, "multilabel", 1.0), "multilabel")
    after = expected_calibration_error(y, probabilities(hot, "multilabel", t), "multilabel")
    assert after < before / 2


def test_under_confident_logits_give_t_below_one() -> None:
    z, y = _calibrated_multiclass(seed=2)
    assert fit_temperature(z / 2.0, np.eye(4)[y], "multiclass") == pytest.approx(0.5, rel=0.1)


def test_probabilities_keep_ranking_and_sums() -> None:
    z = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    p = probabilities(z, "multiclass", 2.5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (p.argmax(axis=1) == z.argmax(axis=1)).all()
    np.testing.assert_allclose(probabilities(z, "multilabel", 2.0), 1 / (1 + np.exp(-z / 2)))


def test_bad_arguments_are_refused() -> None:
    z = np.zeros((3, 2))
    with pytest.raises(ValueError, match="temperature"):
        probabilities(z, "multiclass", 0.0)
    with pytest.raises(ValueError, match="kind"):
        fit_temperature(z, np.zeros(3), "binary")
    with pytest.raises(ValueError, match="match"):
        fit_temperature(z, np.zeros(4), "multiclass")


def test_probabilities_take_torch_tensors() -> None:
    logits = torch.tensor([[2.0, 0.0]])
    np.testing.assert_allclose(probabilities(logits, "multilabel", 2.0), torch.sigmoid(torch.tensor([[1.0, 0.0]])))
    np.testing.assert_allclose(probabilities(logits, "multiclass").sum(-1), [1.0])


# --- thresholds and calibration --------------------------------------------------------------------

def test_sweep_picks_the_known_best_threshold() -> None:
    # class 0: positives at .6,.7,.8 and a negative at .65 and .2/.3
    # best F1: everything >= .6 (tp 3, fp 1, F1 6/7) vs >= .7 (tp 2, fp 0, F1 .8)
    p0 = np.array([0.2, 0.3, 0.6, 0.65, 0.7, 0.8])
    y0 = np.array([0, 0, 1, 0, 1, 1])
    # class 1: clean separation between .4 and .55 -> middle of the gap .475
    p1 = np.array([0.1, 0.2, 0.4, 0.55, 0.9, 0.95])
    y1 = np.array([0, 0, 0, 1, 1, 1])
    t = sweep_thresholds(np.stack([y0, y1], 1), np.stack([p0, p1], 1))
    assert t[0] == pytest.approx((0.3 + 0.6) / 2)
    assert t[1] == pytest.approx((0.4 + 0.55) / 2)
    d = np.stack([p0, p1], 1) >= t
    assert f1_score(y0, d[:, 0]) == pytest.approx(6 / 7)
    assert f1_score(y1, d[:, 1]) == 1.0


def test_sweep_maximises_f1_against_a_fine_grid() -> None:
    y, prob = _multilabel_set(300, seed=3)
    t = sweep_thresholds(y, prob)
    for c in range(3):
        best_grid = max(f1_score(y[:, c], prob[:, c] >= g, zero_division=0)
                        for g in np.linspace(0, 1, 501))
        assert f1_score(y[:, c], prob[:, c] >= t[c]) >= best_grid - 1e-12


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=40))
def test_sweep_threshold_is_never_beaten_by_any_cut(pairs) -> None:
    y = np.array([int(b) for b, _ in pairs])
    p = np.array([v / 20 for _, v in pairs])  # coarse values: many ties
    if y.sum() == 0:
        return
    t = sweep_thresholds(y[:, None], p[:, None])[0]
    best = max(f1_score(y, p >= cut, zero_division=0) for cut in np.r_[np.unique(p), 1.01])
    assert f1_score(y, p >= t, zero_division=0) == pytest.approx(best)
    if t > 0:  # the threshold sits between values, not on one (except a cut below a 0.0)
        assert not np.isclose(p, t).any()


def test_sweep_without_positives_falls_back() -> None:
    t = sweep_thresholds(np.zeros((4, 1), int), np.array([[0.1], [0.2], [0.3], [0.4]]))
    assert t.tolist() == [0.5]



def _multilabel_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.5, 0.2]).astype(int)
    prob = np.clip(0.35 * y + rng.random((n, 3)) * 0.65, 0, 1)
    return y, prob


def test_fit_calibration_sweeps_on_the_calibrated_scale() -> None:
    z, y = _calibrated_multiclass(n=600, c=2, seed=4)
    thresholds, t = fit_calibration(3.0 * z, y, ["a", "b"], "multiclass")
    assert t == pytest.approx(fit_temperature(3.0 * z, y, "multiclass"))
    expected = sweep_thresholds(np.eye(2, dtype=int)[y], probabilities(3.0 * z, "multiclass", t))
    assert list(thresholds) == ["a", "b"]
    assert list(thresholds.values()) == pytest.approx(expected.tolist())


# --- studies and decisions ------------------------------------------------------------

def test_multilabel_study_is_the_maximum_per_label() -> None:
    prob = np.array([[0.1, 0.9], [0.7, 0.2], [0.3, 0.4]])
    assert aggregate_probabilities(prob, "multilabel").tolist() == [0.7, 0.9]
    truth = np.array([[0, 1], [1, 0], [0, 0]])
    assert aggregate_truth(truth, "multilabel", 2).tolist() == [1, 1]


def test_multiclass_study_is_the_slice_least_likely_first_class() -> None:
    prob = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.5, 0.2, 0.3]])
    assert aggregate_probabilities(prob, "multiclass").tolist() == [0.3, 0.6, 0.1]
    assert int(aggregate_truth(np.array([0, 2, 2, 1]), "multiclass", 3)) == 2
    assert int(aggregate_truth(np.array([0, 0]), "multiclass", 3)) == 0


def test_decisions_threshold_or_argmax() -> None:
    prob = np.array([[0.4, 0.6], [0.7, 0.3]])
    got = decisions(prob, "multilabel", ["a", "b"], {"a": 0.5, "b": 0.65})
    assert got.tolist() == [[0, 0], [1, 0]]
    assert decisions(prob, "multilabel", ["a", "b"], None).tolist() == [[0, 1], [1, 0]]
    assert decisions(prob, "multiclass", ["a", "b"], {"a": 0.99}).tolist() == [[0, 1], [1, 0]]
    assert decisions(np.zeros((0, 2)), "multiclass", ["a", "b"], None).shape == (0, 2)


def test_decision_rule_names_the_positive_labels() -> None:
    rule = DecisionRule(("a", "b"), "multilabel", temperature=2.0, thresholds={"a": 0.6, "b": 0.5})
    prob = rule.probabilities(np.array([[2.0, -2.0], [0.0, 0.2]]))
    np.testing.assert_allclose(prob[0], 1 / (1 + np.exp([-1.0, 1.0])))
    assert rule.positive(prob) == [["a"], ["b"]]
    assert rule.aggregate(prob).tolist() == pytest.approx([prob[0, 0], prob[1, 1]])
