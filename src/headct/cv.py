"""K-fold cross-validation over a cache's patient folds: ``headct cv``.

Small real datasets are judged by cross-validation, not by one split of a few
patients. ``headct prepare --folds K`` assigns each patient group of the train
and val splits to a fold (the cache's test split stays out of every fold);
``headct cv`` then, for each fold K:

1. trains with the training loop as it is (``headct train --fold K``): the
   other folds train, a validation share carved from them by patient drives
   early stopping, the temperature and the thresholds (``headct.data.folds``);
2. predicts fold K with the best checkpoint, the way ``headct evaluate`` does;
3. writes ``DIR/fold<K>/``: ``run/`` (the training run), ``logits.npz`` (what
   the pooling reads), ``metrics.json`` (that fold alone) and, last,
   ``predictions.csv``. A fold is done once its ``predictions.csv`` exists, so
   a killed ``headct cv`` rerun with the same ``--out`` skips finished folds,
   resumes an interrupted training from its ``train_state.pt``, and goes on.

Then the out-of-fold predictions of every finished fold are pooled into
``DIR/predictions.csv`` (evaluate's columns), ``DIR/metrics.json`` (evaluate's
slice and study blocks, intervals from resampling patients, a ``folds`` table)
and ``DIR/report.html``. Each fold's probabilities use that fold's own
temperature; pooled decisions use the median of the folds' thresholds (each
fold's own decisions are in its ``fold<K>/predictions.csv``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headct import atomic
from headct.checkpoint import CheckpointConfig
from headct.decide import probabilities, study_table
from headct.errors import HeadCTError
from headct.inference import SplitPredictions, predict_split, resolve_amp
from headct.training.config import (
    TrainConfig,
    check_complete,
    load_config,
    resolve_config,
    save_config,
)

log = logging.getLogger(__name__)

CV_CONFIG = "cv_config.yaml"
PREDICTIONS = "predictions.csv"
LOGITS = "logits.npz"
_PRED_FIELDS = ("rows", "uids", "studies", "series", "logits", "targets", "series_keys", "series_studies")


# --- the command ------------------------------------------------------------------

def cv_command(args: argparse.Namespace) -> int:
    """``headct cv``: the training flags of ``headct train`` plus ``--folds``; prints where outputs are."""
    if getattr(args, "resume", None) or getattr(args, "fold", None) is not None:
        raise SystemExit("headct cv: no --resume or --fold; rerun with the same --out to resume, "
                         "--folds 0,2 to run some folds")
    skip = {"command", "verbose", "config", "resume", "folds", "fold", "bootstrap"}
    flags = {k: v for k, v in vars(args).items() if k not in skip}
    try:
        config = resolve_config(args.config, flags)
        check_complete(config)
        folds = parse_folds(args.folds)
    except ValueError as err:
        raise SystemExit(f"headct cv: {err}") from None
    try:
        paths = cross_validate(config, folds=folds, n_bootstrap=args.bootstrap)
    except (ValueError, HeadCTError) as err:  # one line: no folds, another run's DIR, an unreadable cache
        raise SystemExit(f"headct cv: {err}") from None
    print(f"out-of-fold metrics: {paths['metrics']}")
    if "report" in paths:
        print(f"report: {paths['report']}")
    return 0


def parse_folds(text: str | None) -> list[int] | None:
    """``"0,2"`` → [0, 2]; None or empty → None (every fold)."""
    if text is None or not str(text).strip():
        return None
    try:
        folds = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--folds takes fold numbers like 0,2; got {text!r}") from None
    if any(f < 0 for f in folds):
        raise ValueError(f"--folds takes fold numbers >= 0; got {text!r}")
    return folds


def cross_validate(
    config: TrainConfig,
    *,
    folds: Sequence[int] | None = None,
    n_bootstrap: int | None = None,
    report: bool = True,
) -> dict[str, Path]:
    """Run (or resume) cross-validation as ``config`` says, into ``config.out``; returns the pooled outputs."""
    from headct.data.cache import Cache
    from headct.data.folds import cache_folds
    from headct.evaluate import N_BOOTSTRAP
    from headct.tasks import get_task

    check_complete(config)
    out = Path(config.out)
    cache = Cache(config.data)
    task = get_task(config.task, cache.labels)
    available = cache_folds(cache)
    if not available:
        raise ValueError(f"{cache.path}: the cache has no folds; run `headct prepare --folds K`")
    missing = sorted(set(folds or ()) - set(available))
    if missing:
        raise ValueError(f"{cache.path}: no fold(s) {missing}; the cache has folds {available}")
    _claim(out, config)
    chosen = list(folds) if folds else available
    n_bootstrap = N_BOOTSTRAP if n_bootstrap is None else n_bootstrap
    for fold in chosen:
        fold_dir = out / f"fold{fold}"
        if (fold_dir / PREDICTIONS).is_file():
            log.info("fold %d: done already (%s)", fold, fold_dir / PREDICTIONS)
            continue
        run_fold(config, cache, task, fold, fold_dir, n_bootstrap=n_bootstrap)
    return write_pooled(out, cache, task, chosen, available, n_bootstrap=n_bootstrap, report=report)


def run_fold(config: TrainConfig, cache: Any, task: Any, fold: int, fold_dir: Path, *, n_bootstrap: int) -> Path:
    """Train with fold ``fold`` held out, predict it, write the fold's files; returns its predictions.csv."""
    import torch

    from headct.checkpoint import load_checkpoint
    from headct.data.folds import fold_view
    from headct.evaluate import evaluation_results, write_json, write_predictions_csv
    from headct.train import train
    from headct.training.state import STATE_FILE

    run_dir = fold_dir / "run"
    fold_config = dataclasses.replace(config, fold=fold, out=str(run_dir))
    resume = (run_dir / STATE_FILE).is_file()
    log.info("fold %d: %s training", fold, "resuming" if resume else "starting")
    best = train(fold_config, resume=resume)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, stored = load_checkpoint(best, map_location=device)
    view = fold_view(cache, fold, seed=config.seed)
    pred = predict_split(model, view, task, "test", batch_size=config.batch_size, device=device,
                         amp=resolve_amp(config.amp, device), progress=config.progress,
                         tta_flip=stored.tta_flip)
    if len(pred.rows) == 0:
        raise ValueError(f"{cache.path}: fold {fold} has no usable slices for task {task.name!r}")
    thresholds, temperature = _decision_settings(stored, task)
    result = evaluation_results(pred, task, thresholds, temperature, n_bootstrap=n_bootstrap)
    training = stored.training
    result["metrics"]["fold"] = {
        "fold": fold, "temperature": temperature, "thresholds": thresholds,
        "best_epoch": training.get("best_epoch"), "epochs_run": training.get("epochs_run"),
        "split": view.meta["split"],
    }
    _write_logits(fold_dir / LOGITS, pred)
    write_json(fold_dir / "metrics.json", result["metrics"])
    path = write_predictions_csv(fold_dir / PREDICTIONS, result["tables"], task, thresholds)  # last: marks done
    log.info("fold %d: done (%d slices, %d studies)", fold, len(pred.rows), len(np.unique(pred.studies)))
    return path


# --- pooling ----------------------------------------------------------------------------

def write_pooled(out: Path, cache: Any, task: Any, chosen: Sequence[int], available: Sequence[int], *,
                 n_bootstrap: int, report: bool = True) -> dict[str, Path]:
    """Pool the finished folds among ``chosen`` into DIR/predictions.csv, metrics.json, report.html."""
    from headct.evaluate import write_json, write_predictions_csv

    done = [f for f in chosen if (out / f"fold{f}" / PREDICTIONS).is_file()]
    parts = [_read_fold(out / f"fold{f}") for f in done]
    result = pooled_results(parts, cache, task, n_bootstrap=n_bootstrap)
    metrics = result["metrics"]
    metrics["cv"] = {"folds_pooled": done, "folds_in_cache": list(available),
                     "complete": sorted(done) == sorted(available),
                     "thresholds": "median of the folds' thresholds; probabilities use each fold's temperature"}
    metrics["folds"] = [fold_row(fold_metrics) for _, fold_metrics in parts]
    metrics["split"] = _split_summary(cache, parts)
    paths = {
        "predictions": write_predictions_csv(out / PREDICTIONS, result["tables"], task, result["thresholds"]),
        "metrics": write_json(out / "metrics.json", metrics),
    }
    if report:
        from headct import report as report_module

        paths["report"] = report_module.write_report(
            out, metrics, {}, title=f"headct cross-validation: {task.name}, folds {done}",
            split_note=_split_note(metrics))
    return paths


def pooled_results(parts: list[tuple[Any, dict[str, Any]]], cache: Any, task: Any, *,
                   n_bootstrap: int) -> dict[str, Any]:
    """Slice and study metrics of the pooled out-of-fold predictions (intervals resample patients)."""
    from headct.evaluate import level_metrics

    if not parts:
        raise ValueError("no finished folds to pool")
    raw = _concat([pred for pred, _ in parts])
    scaled = _concat([_scaled(pred, m["fold"]["temperature"]) for pred, m in parts])
    thresholds = {label: float(np.median([m["fold"]["thresholds"][label] for _, m in parts]))
                  for label in task.labels}
    patient_of_study = _patients(cache)
    slice_patients = np.asarray([patient_of_study[s] for s in scaled.studies])
    studies, raw_studies = study_table(scaled, task, 1.0), study_table(raw, task, 1.0)
    study_patients = np.asarray([patient_of_study[s] for s in studies.studies])
    prob = probabilities(scaled.logits, task.kind, 1.0)
    blocks = {
        "slice": level_metrics(scaled.targets, probabilities(raw.logits, task.kind, 1.0), prob, task,
                               thresholds, 1.0, groups=slice_patients, n_bootstrap=n_bootstrap),
        "study": level_metrics(studies.targets, raw_studies.prob, studies.prob, task, thresholds, 1.0,
                               groups=study_patients, n_bootstrap=n_bootstrap),
    }
    for block in blocks.values():
        block["temperature"] = None  # one per fold: see "folds"
    metrics = {"task": task.name, "label_kind": task.kind, "labels": list(task.labels), "primary_level": "slice",
               **blocks["slice"], "level": blocks}
    return {"metrics": metrics, "tables": {"slice": (scaled, prob), "study": studies}, "thresholds": thresholds}


def fold_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """One line of the per-fold table: sizes, training, and the headline metrics per level."""
    fold = metrics["fold"]
    row = {"fold": fold["fold"], "best_epoch": fold.get("best_epoch"), "epochs_run": fold.get("epochs_run"),
           "temperature": fold["temperature"], "thresholds": fold["thresholds"],
           "train_studies": fold["split"].get("n_train"), "val_studies": fold["split"].get("n_val")}
    for level, block in metrics["level"].items():
        row[level] = {"n": block.get("n"), **{k: block.get(k) for k in ("micro_auroc", "macro_auroc", "f1_macro",
                                                                        "ece_calibrated")}}
    return row


# --- helpers ------------------------------------------------------------------------------

def _claim(out: Path, config: TrainConfig) -> None:
    """Record the settings in DIR/cv_config.yaml; refuse a DIR that holds a run with other settings."""
    recorded = out / CV_CONFIG
    if recorded.is_file():
        before = load_config(recorded).to_dict()
        now = config.to_dict()
        changed = sorted(k for k in now if k not in ("device", "workers", "progress") and now[k] != before.get(k))
        if changed:
            raise ValueError(f"{out} holds a cross-validation with other settings ({', '.join(changed)}); "
                             "use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, recorded)


def _decision_settings(stored: CheckpointConfig, task: Any) -> tuple[dict[str, float], float]:
    thresholds = stored.thresholds or {}
    temperature = stored.temperature
    if not thresholds or temperature is None:
        log.warning("the fold's checkpoint has no fitted thresholds/temperature (no validation slices): "
                    "0.5 and 1 are used")
    return ({label: float(thresholds.get(label, 0.5)) for label in task.labels},
            float(temperature) if temperature is not None else 1.0)


def _write_logits(path: Path, pred: Any) -> None:
    buffer = io.BytesIO()
    arrays = {name: np.asarray(getattr(pred, name)) for name in _PRED_FIELDS}
    if pred.series_logits is not None:
        arrays["series_logits"] = pred.series_logits
    np.savez(buffer, **arrays)
    atomic.write_bytes(path, buffer.getvalue())


def _read_fold(fold_dir: Path) -> tuple[Any, dict[str, Any]]:
    with np.load(fold_dir / LOGITS, allow_pickle=False) as data:
        fields = {name: data[name] for name in _PRED_FIELDS}
        series = data["series_logits"] if "series_logits" in data.files else None
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    return SplitPredictions(**fields, series_logits=series), metrics


def _scaled(pred: Any, temperature: float) -> Any:
    """The same predictions with logits divided by the fold's temperature (so T = 1 calibrates them)."""
    # float64 first, as decide.probabilities divides: the pooled p_ columns equal the fold's own, bit for bit
    series = None if pred.series_logits is None else pred.series_logits.astype(np.float64) / temperature
    return dataclasses.replace(pred, logits=pred.logits.astype(np.float64) / temperature, series_logits=series)


def _concat(preds: list[Any]) -> Any:
    fields = {name: np.concatenate([getattr(p, name) for p in preds]) for name in _PRED_FIELDS}
    series = ([p.series_logits for p in preds] if all(p.series_logits is not None for p in preds) else None)
    return SplitPredictions(**fields, series_logits=np.concatenate(series) if series else None)


def _patients(cache: Any) -> dict[str, str]:
    """Study → its patient group (the salted patient key, else the study itself)."""
    groups: dict[str, str] = {}
    for study, patient in zip(cache.index["study"], cache.index["patient"], strict=True):
        key = str(study)
        if key not in groups or (not groups[key].startswith("patient:") and patient):
            groups[key] = f"patient:{patient}" if patient else f"study:{study}"
    return groups


def _split_summary(cache: Any, parts: list[tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
    meta = cache.meta.get("split", {})
    return {"how": meta.get("how"), "seed": meta.get("seed"), "folds": meta.get("folds"),
            "evaluated": "out-of-fold", "n_test": sum(len(np.unique(p.studies)) for p, _ in parts)}


def _split_note(metrics: dict[str, Any]) -> str:
    split, cv = metrics["split"], metrics["cv"]
    return (f"Out-of-fold predictions of folds {cv['folds_pooled']} of {len(cv['folds_in_cache'])} "
            f"({split['n_test']} studies), folds assigned by {split.get('how')}; each fold's model trained on "
            "the other folds, validated on a share of them carved by patient; the cache's test split is not "
            f"used. Intervals resample patients. {cv['thresholds'].capitalize()}.")


__all__ = ["cross_validate", "cv_command", "parse_folds", "pooled_results", "run_fold"]
