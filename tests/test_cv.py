"""Cross-validation: end to end through the CLI, pooled metrics that match the file, resume after a kill."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from headct.training.config import TrainConfig

FLAGS = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0.0, "max_steps_per_epoch": 2,
         "progress": False, "tensorboard": False, "patience": 0, "model_kwargs": {"drop_rate": 0.2}}


def _config(cache: Path, out: Path, model: str) -> TrainConfig:
    return TrainConfig(data=str(cache), model=model, task="rsna", out=str(out), **FLAGS)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cv_end_to_end_through_the_cli(fold_cache: Path, tiny_model: str, tmp_path: Path) -> None:
    from headct.cli import main

    out = tmp_path / "cv"
    argv = ["cv", "--data", str(fold_cache), "--model", tiny_model, "--task", "rsna", "--out", str(out),
            "--bootstrap", "20", "--model-kwargs", json.dumps(FLAGS["model_kwargs"])]
    for key, value in FLAGS.items():
        if key != "model_kwargs":
            argv += ["--" + key.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    assert main(argv) == 0

    rows = _rows(out / "predictions.csv")
    slices = [r for r in rows if r["level"] == "slice"]
    studies = [r for r in rows if r["level"] == "study"]
    assert len(slices) == 16 * 6 and len(studies) == 16  # every train/val study once, the test split never
    assert {r["study"] for r in studies} == {f"study{s}" for s in range(16)}
    metrics = json.loads((out / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["folds"]] == [0, 1, 2] and metrics["cv"]["complete"]
    assert metrics["level"]["study"]["n"] == 16 and metrics["level"]["slice"]["n"] == 96
    assert metrics["level"]["study"]["ci95"]["groups"] is True
    # the pooled study AUROC is that of the pooled file's own columns
    y = np.array([int(r["y_any"]) for r in studies])
    p = np.array([float(r["p_any"]) for r in studies])
    assert metrics["level"]["study"]["per_class"]["any"]["auroc"] == pytest.approx(roc_auc_score(y, p))
    # each fold's probabilities are carried over unchanged (its own temperature)
    for fold in range(3):
        fold_rows = {r["uid"]: r["p_any"] for r in _rows(out / f"fold{fold}" / "predictions.csv")
                     if r["level"] == "slice"}
        assert {r["uid"] for r in slices if r["uid"] in fold_rows} == set(fold_rows)
        assert all(r["p_any"] == fold_rows[r["uid"]] for r in slices if r["uid"] in fold_rows)
        assert json.loads((out / f"fold{fold}" / "run" / "best" / "config.json").read_text()
                          )["training"]["split"]["fold"] == fold
    assert "cross-validation" in (out / "report.html").read_text()


def test_a_run_killed_between_folds_resumes_to_the_same_predictions(fold_cache: Path, tiny_model: str,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import headct.cv as cv

    cv.cross_validate(_config(fold_cache, tmp_path / "whole", tiny_model), n_bootstrap=10, report=False)

    real_run_fold, trained = cv.run_fold, []

    def run_fold_then_die(config, cache, task, fold, fold_dir, **kw):
        if fold == 2:
            raise KeyboardInterrupt  # killed after folds 0 and 1 were written
        trained.append(fold)
        return real_run_fold(config, cache, task, fold, fold_dir, **kw)

    cut = _config(fold_cache, tmp_path / "cut", tiny_model)
    cv.cross_validate(cut, folds=[0], n_bootstrap=10, report=False)  # `headct cv --folds 0`
    monkeypatch.setattr(cv, "run_fold", run_fold_then_die)
    with pytest.raises(KeyboardInterrupt):
        cv.cross_validate(cut, n_bootstrap=10, report=False)
    assert trained == [1]  # fold 0 was done already: skipped
    assert not (tmp_path / "cut" / "fold2" / "predictions.csv").exists()
    monkeypatch.setattr(cv, "run_fold", real_run_fold)
    cv.cross_validate(cut, n_bootstrap=10, report=False)

    whole, resumed = _rows(tmp_path / "whole" / "predictions.csv"), _rows(tmp_path / "cut" / "predictions.csv")
    assert len(whole) == 16 * 6 + 16 and whole == resumed
    with pytest.raises(ValueError, match="other settings"):
        cv.cross_validate(TrainConfig(**{**cut.to_dict(), "lr": 1e-3}), report=False)


def test_a_cache_without_folds_is_one_clear_line(cache: Path, tiny_model: str, tmp_path: Path) -> None:
    from headct.cli import main

    with pytest.raises(SystemExit, match=r"^headct cv: .*no folds; run `headct prepare --folds K`$"):
        main(["cv", "--data", str(cache), "--model", tiny_model, "--task", "rsna", "--out", str(tmp_path / "cv")])
    with pytest.raises(SystemExit, match="--folds takes fold numbers"):
        main(["cv", "--data", str(cache), "--model", tiny_model, "--task", "rsna", "--out", str(tmp_path / "cv"),
              "--folds", "a,b"])
    assert not any((tmp_path / "cv").glob("fold*"))
