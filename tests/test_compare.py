"""Paired tests: McNemar by hand, DeLong against brute force, bootstrap, and the command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from headct.cli import main
from headct.compare import (
    compare_evaluations,
    delong_test,
    mcnemar_test,
    paired_bootstrap_auroc,
    read_predictions,
)
from headct.errors import InputError

LABELS = ["hemorrhage", "ischemia"]


# --- McNemar -----------------------------------------------------------------------

def test_mcnemar_exact_below_25_discordant() -> None:
    # b = 10 (A right only), c = 2 (B right only), 5 both right
    a = np.array([1] * 10 + [0] * 2 + [1] * 5, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 5, bool)
    r = mcnemar_test(a, b)
    assert (r["a_only_right"], r["b_only_right"], r["method"]) == (10, 2, "exact")
    # two-sided exact: 2 * P(X <= 2 | n=12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert r["p"] == pytest.approx(2 * 79 / 4096)


def test_mcnemar_chi2_with_continuity_at_25_and_more() -> None:
    a = np.array([1] * 30 + [0] * 10, bool)
    b = ~a
    r = mcnemar_test(a, b)
    assert r["method"] == "chi2-cc"
    assert r["statistic"] == pytest.approx((20 - 1) ** 2 / 40)  # 9.025
    # chi2 with 1 d.o.f.: P(X > x) = erfc(sqrt(x / 2)) = 0.002663
    assert r["p"] == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert r["p"] == pytest.approx(0.002663, abs=1e-6)


def test_mcnemar_without_discordance_is_p_one() -> None:
    same = np.array([1, 0, 1], bool)
    assert mcnemar_test(same, same)["p"] == 1.0


# --- DeLong ------------------------------------------------------------------------

def _brute_force_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong 1988 written out: psi over every (positive, negative) pair."""
    pos, neg = y == 1, y == 0
    v10, v01 = [], []
    for s in (a, b):
        psi = np.array([[1.0 if x > z else 0.5 if x == z else 0.0 for z in s[neg]] for x in s[pos]])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = pos.sum(), neg.sum()
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    var = s10[0, 0] / m + s01[0, 0] / n + s10[1, 1] / m + s01[1, 1] / n \
        - 2 * (s10[0, 1] / m + s01[0, 1] / n)
    diff = v10[0].mean() - v10[1].mean()
    return diff, 2 * norm.sf(abs(diff) / np.sqrt(var))


def test_delong_matches_brute_force_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    a = np.round(y * 0.8 + rng.normal(size=80), 1)   # rounding makes ties
    b = np.round(y * 0.3 + rng.normal(size=80) + 0.5 * a, 1)
    r = delong_test(y, a, b)
    diff, p = _brute_force_delong(y, a, b)
    assert r["auroc_a"] == pytest.approx(roc_auc_score(y, a))
    assert r["auroc_b"] == pytest.approx(roc_auc_score(y, b))
    assert r["diff"] == pytest.approx(diff)
    assert r["p"] == pytest.approx(p, rel=1e-9)
    assert r["ci95"][0] < r["diff"] < r["ci95"][1]


def test_delong_identical_scores_and_single_class() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert delong_test(y, s, s)["p"] == 1.0
    assert delong_test(np.zeros(6), s, s)["p"] is None


def test_delong_finds_a_real_difference() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    noise = rng.normal(size=400)
    strong, weak = 2.0 * y + noise, 0.3 * y + noise + rng.normal(size=400)
    assert delong_test(y, strong, weak)["p"] < 1e-6


# --- paired bootstrap ---------------------------------------------------------------

def test_paired_bootstrap_difference_ci_and_p() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    noise = rng.normal(size=300)
    strong, weak = 2.0 * y + noise, 0.5 * y + noise + rng.normal(size=300)
    r = paired_bootstrap_auroc(y, strong, weak, n=300, seed=0)
    assert r["diff"] == pytest.approx(roc_auc_score(y, strong) - roc_auc_score(y, weak))
    assert 0 < r["ci95"][0] < r["diff"] < r["ci95"][1]
    assert r["p"] == pytest.approx(2 / 301)  # no resample crosses zero
    same = paired_bootstrap_auroc(y, strong, strong, n=100, seed=0)
    assert same["diff"] == 0.0 and same["p"] == 1.0


# --- predictions.csv, alignment, command -------------------------------------------

def _write_predictions(path: Path, prob: np.ndarray, truth: np.ndarray, *, studies: list[str],
                       labels: list[str] = LABELS, shuffle_seed: int | None = None) -> Path:
    """A predictions.csv as `headct evaluate` writes it (slice rows and study rows)."""
    rows = []
    for i, study in enumerate(studies):
        rows.append({"level": "slice", "study": study, "uid": f"1.2.{i}", "row": i,
                     **_label_columns(prob[i], truth[i], labels)})
    for study in sorted(set(studies)):
        members = [i for i, s in enumerate(studies) if s == study]
        rows.append({"level": "study", "study": study, "uid": study, "row": -1,
                     **_label_columns(prob[members].max(axis=0), truth[members].max(axis=0), labels)})
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(rows))
        rows = [rows[i] for i in order]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _label_columns(p: np.ndarray, y: np.ndarray, labels: list[str]) -> dict[str, object]:
    out: dict[str, object] = {f"p_{lab}": float(p[c]) for c, lab in enumerate(labels)}
    out.update({f"y_{lab}": int(y[c]) for c, lab in enumerate(labels)})
    out.update({f"d_{lab}": int(p[c] >= 0.5) for c, lab in enumerate(labels)})
    return out


@pytest.fixture()
def two_evals(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 120
    truth = (rng.random((n, 2)) < 0.4).astype(int)
    studies = [f"study{i // 6:02d}" for i in range(n)]
    good = 1 / (1 + np.exp(-(3.0 * (truth - 0.5) + rng.normal(size=(n, 2)))))
    poor = 1 / (1 + np.exp(-(0.8 * (truth - 0.5) + rng.normal(size=(n, 2)))))
    a = _write_predictions(tmp_path / "A" / "predictions.csv", good, truth, studies=studies)
    b = _write_predictions(tmp_path / "B" / "predictions.csv", poor, truth, studies=studies, shuffle_seed=0)
    return a.parent, b.parent, truth


def test_compare_aligns_rows_by_level_and_uid(two_evals) -> None:
    dir_a, dir_b, truth = two_evals
    result = compare_evaluations(read_predictions(dir_a), read_predictions(dir_b), n_boot=200)
    slices = result["levels"]["slice"]
    assert set(result["levels"]) == {"slice", "study"}
    assert slices["n_items"] == 120 and slices["n_studies"] == 20 and slices["grouped_by_study"]
    assert result["levels"]["study"]["n_items"] == 20
    assert not result["levels"]["study"]["grouped_by_study"]
    hem = slices["per_label"]["hemorrhage"]
    assert hem["positives"] == int(truth[:, 0].sum())
    assert hem["auroc_a"] > hem["auroc_b"]  # the shuffled B rows were matched back correctly
    assert hem["delong"]["p"] < 0.05 and hem["bootstrap"]["p"] < 0.05
    assert hem["delong"]["auroc_a"] == pytest.approx(hem["auroc_a"])
    json.dumps(result)


def test_compare_command_prints_table_and_writes_json(two_evals, tmp_path: Path, capsys) -> None:
    dir_a, dir_b, _ = two_evals
    out = tmp_path / "cmp" / "tests.json"
    assert main(["compare", str(dir_a), str(dir_b), "--json", str(out), "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert "hemorrhage" in printed and "overall (macro)" in printed and str(out) in printed
    data = json.loads(out.read_text())
    assert data["n_boot"] == 100 and data["labels"] == LABELS
    assert not list(out.parent.glob(".*"))  # no temp file left


def test_compare_refuses_different_items(two_evals, tmp_path: Path, capsys) -> None:
    dir_a, _, truth = two_evals
    rng = np.random.default_rng(4)
    fewer = _write_predictions(tmp_path / "C" / "predictions.csv", rng.random((100, 2)), truth[:100],
                               studies=[f"study{i // 6:02d}" for i in range(100)])
    assert main(["compare", str(dir_a), str(fewer), "--bootstrap", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not the same test items" in err and str(fewer) in err and "\n" not in err


def test_compare_refuses_different_labels_and_truth(two_evals, tmp_path: Path) -> None:
    dir_a, _, truth = two_evals
    studies = [f"study{i // 6:02d}" for i in range(120)]
    other = _write_predictions(tmp_path / "D" / "predictions.csv", np.full((120, 2), 0.5), truth,
                               studies=studies, labels=["epidural", "subdural"])
    with pytest.raises(InputError, match="labels"):
        compare_evaluations(read_predictions(dir_a), read_predictions(other))
    flipped = truth.copy()
    flipped[0, 0] = 1 - flipped[0, 0]
    wrong = _write_predictions(tmp_path / "E" / "predictions.csv", np.full((120, 2), 0.5), flipped,
                               studies=studies)
    with pytest.raises(InputError, match="truth"):
        compare_evaluations(read_predictions(dir_a), read_predictions(wrong))


def test_missing_predictions_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such predictions file"):
        read_predictions(tmp_path / "nothing")
