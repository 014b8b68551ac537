"""Evaluation outputs: predictions.csv and metrics.json by the contract, consistent with sklearn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from headct.checkpoint import read_checkpoint_config, save_checkpoint
from headct.evaluate import evaluate

TINY = "tiny-test-effnet"  # the tiny_model fixture of tests/conftest.py registers it
RSNA = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
CONTRACT = {"per_class", "micro_auroc", "macro_auroc", "f1_macro", "f1_micro", "f1_weighted", "accuracy",
            "confusion_matrix", "ece", "ece_calibrated", "temperature", "ci95", "split"}

pytestmark = pytest.mark.usefixtures("tiny_model")  # registered for this module only (tests/conftest.py)



def _checkpoint(path: Path, task: str, labels: list[str], kind: str, **fields) -> Path:
    from headct.models import build_model

    torch.manual_seed(0)
    model = build_model(TINY, len(labels))
    with torch.no_grad():  # spread the outputs so AUROC and thresholds mean something
        model.head[-1].weight.mul_(50.0)
    return save_checkpoint(model, path, size=32, task=task, labels=labels, label_kind=kind, **fields)


def test_rsna_outputs_follow_the_contract_and_agree_with_sklearn(cache: Path, tmp_path: Path) -> None:
    thresholds = {label: 0.3 + 0.05 * i for i, label in enumerate(RSNA)}
    ckpt = _checkpoint(tmp_path / "ckpt", "rsna", RSNA, "multilabel", thresholds=thresholds, temperature=2.0)
    paths = evaluate(ckpt, cache, tmp_path / "eval", split="test", device="cpu", n_bootstrap=100)
    metrics = json.loads(paths["metrics"].read_text())
    rows = list(csv.DictReader(paths["predictions"].open()))

    assert CONTRACT <= set(metrics) and {"slice", "study"} == set(metrics["level"])
    assert metrics["split"] == {"how": "study", "seed": 0, "n_train": 12, "n_val": 4, "n_test": 4,
                                "evaluated": "test"}
    assert metrics["temperature"] == 2.0 and metrics["checkpoint"]["thresholds_source"] == "checkpoint"
    assert "rsna_log_loss" in metrics
    assert set(rows[0]) == {"level", "study", "uid", "row", *(f"{p}_{label}" for p in "pyd" for label in RSNA)}

    slices = [r for r in rows if r["level"] == "slice"]
    assert len(slices) == 4 * 6 and metrics["n"] == 24
    p = np.array([[float(r[f"p_{label}"]) for label in RSNA] for r in slices])
    y = np.array([[int(r[f"y_{label}"]) for label in RSNA] for r in slices])
    d = np.array([[int(r[f"d_{label}"]) for label in RSNA] for r in slices])
    np.testing.assert_array_equal(d, p >= np.array([thresholds[label] for label in RSNA]))
    for c, label in enumerate(RSNA):
        block = metrics["per_class"][label]
        assert block["threshold"] == pytest.approx(thresholds[label])
        assert block["f1"] == pytest.approx(f1_score(y[:, c], d[:, c], zero_division=0))
        if len(set(y[:, c])) == 2:
            assert block["auroc"] == pytest.approx(roc_auc_score(y[:, c], p[:, c]))
        else:
            assert block["auroc"] is None
    assert metrics["micro_auroc"] == pytest.approx(roc_auc_score(y.ravel(), p.ravel()))
    assert metrics["f1_micro"] == pytest.approx(f1_score(y, d, average="micro", zero_division=0))
    low, high = metrics["ci95"]["micro_auroc"]
    assert low <= metrics["micro_auroc"] <= high

    # study rows: the maximum over each study's slices, and the labels any slice has
    studies = [r for r in rows if r["level"] == "study"]
    assert [r["uid"] for r in studies] == [r["study"] for r in studies] and len(studies) == 4
    for study in studies:
        members = [i for i, r in enumerate(slices) if r["study"] == study["study"]]
        for c, label in enumerate(RSNA):
            assert float(study[f"p_{label}"]) == pytest.approx(p[members, c].max())
            assert int(study[f"y_{label}"]) == y[members, c].max()
    assert metrics["level"]["study"]["n"] == 4
    assert (tmp_path / "eval" / "report.html").is_file()
    assert "by study" in (tmp_path / "eval" / "report.html").read_text()


def test_missing_thresholds_are_fitted_on_validation_and_stored(cache: Path, tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt", "presence", ["non-stroke", "stroke"], "multiclass", thresholds=None,
                       temperature=None)
    paths = evaluate(ckpt, cache, tmp_path / "eval", split="test", device="cpu", report=False, n_bootstrap=50)
    stored = read_checkpoint_config(ckpt)
    metrics = json.loads(paths["metrics"].read_text())
    assert set(stored.thresholds) == {"non-stroke", "stroke"} and stored.temperature > 0
    assert metrics["temperature"] == pytest.approx(stored.temperature)
    assert metrics["checkpoint"]["thresholds_source"] == "validation"

    everything = list(csv.DictReader(paths["predictions"].open()))
    rows = [r for r in everything if r["level"] == "slice"]
    p = np.array([[float(r["p_non-stroke"]), float(r["p_stroke"])] for r in rows])
    y = np.array([int(r["y_stroke"]) for r in rows])
    d = np.array([[int(r["d_non-stroke"]), int(r["d_stroke"])] for r in rows])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-9)
    np.testing.assert_array_equal(d.argmax(axis=1), p.argmax(axis=1))  # multi-class: one-hot arg-max
    assert (d.sum(axis=1) == 1).all()
    assert metrics["confusion_matrix"] == confusion_matrix(y, p.argmax(axis=1), labels=[0, 1]).tolist()
    assert metrics["per_class"]["stroke"]["auroc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    # a study is its most abnormal slice, and a stroke study when any slice is
    for study in (r for r in everything if r["level"] == "study"):
        members = [i for i, r in enumerate(rows) if r["study"] == study["study"]]
        assert float(study["p_stroke"]) == pytest.approx(p[members, 1].max())
        assert int(study["y_stroke"]) == y[members].max()



def test_gradcam_examples_are_the_surest_and_least_sure_positive_and_the_worst_negative() -> None:
    from headct.evaluate import _gradcam_examples

    truth = np.array([0, 1, 1, 0, 1, 0])
    prob = np.array([0.3, 0.9, 0.2, 0.8, 0.5, 0.1])
    assert _gradcam_examples(truth, prob) == [1, 2, 3]
    assert _gradcam_examples(np.array([1, 0]), np.array([0.4, 0.6])) == [0, 1]
    assert _gradcam_examples(np.array([0, 0]), np.array([0.4, 0.6])) == [1]
