"""Paired tests between two evaluations of the same test items (``headct compare``).

Two ``EVAL/predictions.csv`` files (see docs/internals.md, "Evaluation
outputs") are joined on ``level`` + ``uid``; they must hold exactly the same
items, labels and truth, otherwise the comparison is refused with one line.
For each level present (slice, study) and each label, and overall:

- **McNemar** on the decisions (``d_<label>`` right or wrong against
  ``y_<label>``): exact two-sided binomial test on the discordant pairs when
  there are fewer than 25 of them, the chi-squared test with continuity
  correction otherwise. "Overall" counts an item right when every label is
  (for a multi-class task: the arg-max class is right).
- **Paired bootstrap** of the AUROC difference A - B: items resampled with
  replacement, whole studies at a time (slices of one study are not
  independent); percentile 95 % interval and a two-sided p-value
  ``2 * min(P*(diff <= 0), P*(diff >= 0))`` with the usual +1 correction.
  "Overall" is the macro AUROC (mean of the per-label AUROCs).
- **DeLong** test for two correlated AUROCs on the same items (per label).
  It treats items as independent, so at slice level it is optimistic when
  studies hold many slices; the grouped bootstrap is the safer figure there.

Public functions: :func:`read_predictions`, :func:`align`, :func:`mcnemar_test`,
:func:`delong_test`, :func:`paired_bootstrap_auroc`, :func:`compare_evaluations`,
:func:`format_table`, :func:`compare_command`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest, chi2, norm, rankdata

from headct import atomic
from headct.errors import InputError
from headct.metrics import auroc, resample_indices

log = logging.getLogger(__name__)

MCNEMAR_EXACT_BELOW = 25
LEVELS = ("slice", "study")


@dataclass
class Evaluation:
    """The columns of one ``predictions.csv`` that the tests need, row-aligned."""

    path: Path
    labels: list[str]
    level: np.ndarray      # str [N]
    study: np.ndarray      # str [N]
    uid: np.ndarray        # str [N]
    prob: np.ndarray       # float [N, C]
    truth: np.ndarray      # int [N, C]
    decision: np.ndarray   # int [N, C]

    def take(self, idx: np.ndarray) -> Evaluation:
        return Evaluation(self.path, self.labels, self.level[idx], self.study[idx], self.uid[idx],
                          self.prob[idx], self.truth[idx], self.decision[idx])


def read_predictions(path: str | Path) -> Evaluation:
    """Read ``predictions.csv`` (or the EVAL directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.csv"
    if not path.is_file():
        raise InputError(path, "no such predictions file")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        rows = list(reader)
    missing = [c for c in ("level", "study", "uid") if c not in columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    labels = [c[2:] for c in columns if c.startswith("p_")]
    for label in labels:
        for prefix in ("y_", "d_"):
            if prefix + label not in columns:
                raise InputError(path, f"column p_{label} has no {prefix}{label}")
    if not labels:
        raise InputError(path, "no p_<label> columns")
    if not rows:
        raise InputError(path, "no rows")
    try:
        matrix = {prefix: np.array([[float(r[prefix + lab]) for lab in labels] for r in rows])
                  for prefix in ("p_", "y_", "d_")}
    except ValueError as err:
        raise InputError(path, f"a value is not a number ({err})") from None
    return Evaluation(
        path=path,
        labels=labels,
        level=np.array([r["level"] for r in rows]),
        study=np.array([r["study"] for r in rows]),
        uid=np.array([r["uid"] for r in rows]),
        prob=matrix["p_"],
        truth=matrix["y_"].astype(int),
        decision=matrix["d_"].astype(int),
    )


def align(a: Evaluation, b: Evaluation) -> tuple[Evaluation, Evaluation]:
    """Order both evaluations by (level, uid); refuse unless items, labels and truth agree."""
    if a.labels != b.labels:
        raise InputError(b.path, f"labels {b.labels} differ from {a.path}'s {a.labels}")
    keys_a, keys_b = _keys(a), _keys(b)
    index_b = {key: i for i, key in enumerate(keys_b)}
    only_a = sum(key not in index_b for key in keys_a)
    only_b = len(set(keys_b) - set(keys_a))
    if only_a or only_b:
        raise InputError(b.path, f"not the same test items as {a.path}: {only_b} item(s) only here, "
                                 f"{only_a} only there (join on level+uid)")
    order_a = np.array(sorted(range(len(keys_a)), key=keys_a.__getitem__))
    order_b = np.array([index_b[keys_a[i]] for i in order_a])
    a, b = a.take(order_a), b.take(order_b)
    differs = int((a.truth != b.truth).any(axis=1).sum())
    if differs:
        raise InputError(b.path, f"truth (y_ columns) differs from {a.path} on {differs} item(s)")
    return a, b


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's test on paired right/wrong outcomes.

    ``b`` = A right and B wrong, ``c`` = A wrong and B right. Exact binomial
    (``scipy.stats.binomtest``, p = 0.5, two-sided) when ``b + c < 25``, else
    chi-squared with continuity correction ``(|b - c| - 1)^2 / (b + c)``, 1 d.o.f.
    """
    ra, rb = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b = int((ra & ~rb).sum())
    c = int((~ra & rb).sum())
    n = b + c
    if n == 0:
        return {"a_only_right": 0, "b_only_right": 0, "discordant": 0, "method": "none",
                "statistic": None, "p": 1.0}
    if n < MCNEMAR_EXACT_BELOW:
        return {"a_only_right": b, "b_only_right": c, "discordant": n, "method": "exact",
                "statistic": None, "p": float(binomtest(b, n, 0.5).pvalue)}
    statistic = (abs(b - c) - 1.0) ** 2 / n
    return {"a_only_right": b, "b_only_right": c, "discordant": n, "method": "chi2-cc",
            "statistic": float(statistic), "p": float(chi2.sf(statistic, df=1))}


def delong_test(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, Any]:
    """DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUROCs.

    Hand-written: neither scikit-learn nor scipy ships it (R's pROC does), and
    the Python packages that do are unmaintained. This is the fast mid-rank
    form of Sun & Xu (2014): each positive's (negative's) structural component
    is the share of negatives below it (positives above it), ties counting
    half; their covariance across the two scores gives the variance of the
    difference. Returns the two AUROCs, ``diff`` (A - B), ``se``, ``z``,
    two-sided ``p`` and a normal 95 % ``ci95``; all ``None`` when the truth has
    one class only.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    scores = np.stack([np.asarray(score_a, float).ravel(), np.asarray(score_b, float).ravel()])
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return {"auroc_a": None, "auroc_b": None, "diff": None, "se": None, "z": None,
                "p": None, "ci95": [None, None]}
    aucs, v10, v01 = _delong_components(scores[:, y], scores[:, ~y])
    return _delong_result(aucs, v10, v01)


def paired_bootstrap_auroc(
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    n: int = 2000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Bootstrap the AUROC difference A - B on shared resamples (see module doc)."""
    y = np.asarray(y_true)
    if y.ndim == 1:
        y, score_a, score_b = y[:, None], np.asarray(score_a)[:, None], np.asarray(score_b)[:, None]
    point = _macro_auroc(y, score_a), _macro_auroc(y, score_b)
    if None in point:
        return {"diff": None, "ci95": [None, None], "p": None, "n_valid": 0}
    diffs = []
    for idx in resample_indices(len(y), n, seed, groups):
        a, b = _macro_auroc(y[idx], score_a[idx]), _macro_auroc(y[idx], score_b[idx])
        if a is not None and b is not None:
            diffs.append(a - b)
    d = np.asarray(diffs)
    if len(d) < max(1, n // 2):
        return {"diff": point[0] - point[1], "ci95": [None, None], "p": None, "n_valid": len(d)}
    low, high = np.quantile(d, [0.025, 0.975])
    tail = min((np.sum(d <= 0) + 1) / (len(d) + 1), (np.sum(d >= 0) + 1) / (len(d) + 1))
    return {"diff": float(point[0] - point[1]), "ci95": [float(low), float(high)],
            "p": float(min(1.0, 2.0 * tail)), "n_valid": len(d)}


def compare_evaluations(a: Evaluation, b: Evaluation, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """All paired tests, per level present and per label plus overall, as a JSON-ready dict."""
    a, b = align(a, b)
    levels: dict[str, Any] = {}
    for level in [lv for lv in LEVELS if lv in set(a.level)] + sorted(set(a.level) - set(LEVELS)):
        rows = np.flatnonzero(a.level == level)
        levels[level] = _compare_level(a.take(rows), b.take(rows), n_boot=n_boot, seed=seed)
    return {
        "a": str(a.path), "b": str(b.path), "labels": a.labels, "n_boot": n_boot, "seed": seed,
        "levels": levels,
        "notes": [
            "diff = A - B; bootstrap resamples whole studies; DeLong assumes independent items",
            f"McNemar: exact binomial below {MCNEMAR_EXACT_BELOW} discordant pairs, else chi2 with continuity correction",
        ],
    }


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width text table of :func:`compare_evaluations`' result."""
    head = (f"{'level':<6} {'label':<18} {'n':>6} {'AUROC A':>8} {'AUROC B':>8} {'diff':>7} "
            f"{'95% CI (bootstrap)':>19} {'p boot':>7} {'p DeLong':>8} {'A/B only':>9} {'p McNemar':>9}")
    lines = [f"A: {result['a']}", f"B: {result['b']}", head, "-" * len(head)]
    for level, block in result["levels"].items():
        for label, row in [*block["per_label"].items(), ("overall (macro)", block["overall"])]:
            boot, mc = row["bootstrap"], row["mcnemar"]
            ci = boot["ci95"]
            ci_text = f"[{_fmt(ci[0], '+.3f')}, {_fmt(ci[1], '+.3f')}]"
            lines.append(
                f"{level:<6} {label[:18]:<18} {block['n_items']:>6} {_fmt(row['auroc_a'], '.4f'):>8} "
                f"{_fmt(row['auroc_b'], '.4f'):>8} {_fmt(boot['diff'], '+.4f'):>7} {ci_text:>19} "
                f"{_fmt_p(boot['p']):>7} {_fmt_p(row['delong']['p']):>8} "
                f"{mc['a_only_right']:>4}/{mc['b_only_right']:<4} {_fmt_p(mc['p']):>9}"
            )
    lines.append("A/B only: items that only A (only B) decided right")
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


def compare_command(args: argparse.Namespace) -> int:
    """``headct compare EVAL_A EVAL_B [--json FILE] [--bootstrap N] [--seed S]``."""
    try:
        a, b = read_predictions(args.eval_a), read_predictions(args.eval_b)
        result = compare_evaluations(a, b, n_boot=args.bootstrap, seed=args.seed)
    except InputError as err:
        print(f"headct compare: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        _write_json_atomic(Path(args.json), result)
        print(f"paired tests written to {args.json}")
    return 0


# --- helpers -------------------------------------------------------------------

def _keys(e: Evaluation) -> list[tuple[str, str]]:
    keys = list(zip(e.level.tolist(), e.uid.tolist(), strict=True))
    if len(set(keys)) != len(keys):
        raise InputError(e.path, f"{len(keys) - len(set(keys))} duplicate (level, uid) row(s)")
    return keys


def _compare_level(a: Evaluation, b: Evaluation, *, n_boot: int, seed: int) -> dict[str, Any]:
    groups = a.study if len(set(a.study)) < len(a.study) else None
    per_label = {}
    for c, label in enumerate(a.labels):
        y = a.truth[:, c]
        per_label[label] = {
            "positives": int(y.sum()),
            "auroc_a": auroc(y, a.prob[:, c]),
            "auroc_b": auroc(y, b.prob[:, c]),
            "mcnemar": mcnemar_test(a.decision[:, c] == y, b.decision[:, c] == y),
            "bootstrap": paired_bootstrap_auroc(y, a.prob[:, c], b.prob[:, c], n=n_boot,
                                                seed=seed, groups=groups),
            "delong": delong_test(y, a.prob[:, c], b.prob[:, c]),
        }
    overall = {
        "auroc_a": _macro_auroc(a.truth, a.prob),
        "auroc_b": _macro_auroc(a.truth, b.prob),
        "mcnemar": mcnemar_test((a.decision == a.truth).all(axis=1), (b.decision == a.truth).all(axis=1)),
        "bootstrap": paired_bootstrap_auroc(a.truth, a.prob, b.prob, n=n_boot, seed=seed, groups=groups),
        "delong": {"p": None, "note": "per label only"},
    }
    return {"n_items": len(a.level), "n_studies": len(set(a.study)), "grouped_by_study": groups is not None,
            "per_label": per_label, "overall": overall}


def _macro_auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    values = [auroc(y[:, c], score[:, c]) for c in range(y.shape[1])]
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _delong_components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs [K] and structural components V10 [K, m], V01 [K, n] via mid-ranks."""
    m, n = pos.shape[1], neg.shape[1]
    both = np.concatenate([pos, neg], axis=1)
    rank_all = rankdata(both, axis=1)
    rank_pos = rankdata(pos, axis=1)
    rank_neg = rankdata(neg, axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n           # share of negatives below each positive
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m     # share of positives above each negative
    aucs = v10.mean(axis=1)
    return aucs, v10, v01


def _delong_result(aucs: np.ndarray, v10: np.ndarray, v01: np.ndarray) -> dict[str, Any]:
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.cov(v10) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(v01) if n > 1 else np.zeros((2, 2))
    contrast = np.array([1.0, -1.0])
    variance = float(contrast @ (s10 / m + s01 / n) @ contrast)
    diff = float(aucs[0] - aucs[1])
    se = float(np.sqrt(max(variance, 0.0)))
    if se > 0:
        z = diff / se
        p = float(2.0 * norm.sf(abs(z)))
    elif diff == 0:  # identical structural components: no evidence of a difference
        z, p = 0.0, 1.0
    else:  # degenerate (e.g. one positive and one negative): no test possible
        z, p = None, None
    half = 1.959963984540054 * se
    return {"auroc_a": float(aucs[0]), "auroc_b": float(aucs[1]), "diff": diff, "se": se,
            "z": None if z is None else float(z), "p": p, "ci95": [diff - half, diff + half]}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic.write_text(path, json.dumps(data, indent=2) + "\n")
