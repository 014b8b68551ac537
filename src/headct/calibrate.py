"""Temperature scaling (Guo et al. 2017): one scalar that makes probabilities honest.

A network's logits are divided by a temperature ``T > 0`` fitted on the
validation set by minimising the negative log-likelihood; ``T > 1`` softens an
over-confident model. The arg-max (and the ranking, so AUROC) does not change.
``headct evaluate`` fits ``T`` on validation logits, stores it in the
checkpoint's ``config.json`` (``temperature``) and reports ECE before and after.

- ``kind="multiclass"``: softmax over the classes, cross-entropy NLL;
  targets [N] class indices or [N, C] one-hot.
- ``kind="multilabel"``: one temperature shared by every label, sigmoid per
  label, binary cross-entropy NLL averaged over (sample, label); targets [N, C]
  of 0/1.

The fit is a bounded 1-D minimisation over ``log T`` (scipy's Brent method),
so ``T`` stays positive and the search needs no learning rate.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax

log = logging.getLogger(__name__)

KINDS = ("multilabel", "multiclass")
LOG_T_BOUNDS = (-4.0, 4.0)   # T in [0.018, 55]: far beyond any sensible network


def fit_temperature(logits: Any, targets: Any, kind: str) -> float:
    """The temperature that minimises validation NLL of ``logits / T``.

    ``logits`` [N, C] (numpy array or torch tensor). Returns ``T`` as a float.
    """
    z = _to_numpy(logits)
    nll = _nll_function(z, targets, kind)
    result = minimize_scalar(lambda log_t: nll(np.exp(log_t)), bounds=LOG_T_BOUNDS,
                             method="bounded", options={"xatol": 1e-6})
    temperature = float(np.exp(result.x))
    if np.isclose(result.x, LOG_T_BOUNDS, atol=1e-3).any():
        log.warning("temperature %.4g sits at the search bound; the logits may be degenerate",
                    temperature)
    log.info("temperature %.4f: NLL %.4f -> %.4f", temperature, nll(1.0), nll(temperature))
    return temperature


def apply_temperature(logits: Any, temperature: float, kind: str) -> np.ndarray:
    """Probabilities of ``logits / T``: softmax (multiclass) or sigmoid (multilabel)."""
    _check(kind, temperature)
    z = _to_numpy(logits) / temperature
    if kind == "multiclass":
        return softmax(z, axis=-1)
    return expit(z)


def negative_log_likelihood(logits: Any, targets: Any, kind: str, temperature: float = 1.0) -> float:
    """Mean NLL of ``logits / T`` (cross-entropy or per-label BCE); what the fit minimises."""
    return _nll_function(_to_numpy(logits), targets, kind)(temperature)


# --- helpers -------------------------------------------------------------------

def _nll_function(z: np.ndarray, targets: Any, kind: str):
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


def _check(kind: str, temperature: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):          # torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)
