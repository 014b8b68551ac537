"""Temperature scaling recovers a known over-confidence and lowers ECE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headct.calibrate import apply_temperature, fit_temperature, negative_log_likelihood
from headct.metrics import expected_calibration_error


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
    before = expected_calibration_error(y, apply_temperature(hot, 1.0, "multiclass"), "multiclass")
    after = expected_calibration_error(y, apply_temperature(hot, t, "multiclass"), "multiclass")
    assert after < before / 2
    assert negative_log_likelihood(hot, y, "multiclass", t) < negative_log_likelihood(hot, y, "multiclass")


def test_multilabel_shares_one_temperature_and_recovers_it() -> None:
    z, y = _calibrated_multilabel()
    hot = 3.0 * z
    t = fit_temperature(torch.from_numpy(hot).float(), torch.from_numpy(y), "multilabel")
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(y, apply_temperature(hot, 1.0, "multilabel"), "multilabel")
    after = expected_calibration_error(y, apply_temperature(hot, t, "multilabel"), "multilabel")
    assert after < before / 2


def test_under_confident_logits_give_t_below_one() -> None:
    z, y = _calibrated_multiclass(seed=2)
    assert fit_temperature(z / 2.0, np.eye(4)[y], "multiclass") == pytest.approx(0.5, rel=0.1)


def test_apply_temperature_keeps_ranking_and_sums() -> None:
    z = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    p = apply_temperature(z, 2.5, "multiclass")
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (p.argmax(axis=1) == z.argmax(axis=1)).all()
    np.testing.assert_allclose(apply_temperature(z, 2.0, "multilabel"), 1 / (1 + np.exp(-z / 2)))


def test_bad_arguments_are_refused() -> None:
    z = np.zeros((3, 2))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(z, 0.0, "multiclass")
    with pytest.raises(ValueError, match="kind"):
        fit_temperature(z, np.zeros(3), "binary")
    with pytest.raises(ValueError, match="match"):
        fit_temperature(z, np.zeros(4), "multiclass")
