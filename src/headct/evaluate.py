"""Evaluate a checkpoint on one split of a cache: predictions, metrics and a report.

``headct evaluate CKPT --data CACHE --split test --out EVAL`` runs the model
over the split series by series (``headct.inference.series_logits``, the
forward path that predict and serve use too) and writes
(docs/internals.md, "Evaluation outputs"):

- ``EVAL/predictions.csv``: one row per slice and one per study, calibrated
  probabilities ``p_*``, truth ``y_*`` and decisions ``d_*``;
- ``EVAL/metrics.json``: DESIGN.md's metrics contract, slice level at the top
  and ``level: {slice, study}``;
- plots and ``EVAL/report.html`` through :mod:`headct.report`.

Decisions use the checkpoint's frozen thresholds (swept on validation at the
end of training). A checkpoint without them, or without a temperature, gets
them fitted on the validation split now, and stored back into it. Thresholds
apply to temperature-scaled probabilities (the ``p_*`` columns).

Study level: for slice models a study's probabilities are the maximum over its
slices (multi-label), or, for multi-class tasks, the probabilities of the slice
least likely to be the first class ("non-stroke"; "ischemic" for subtype). That
mirrors the study truth of ``SeriesDataset``: the maximum over slices
(multi-label), or the most frequent class other than the first when any slice
has one, else the first. Series-level models give their own series output.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from headct import atomic
from headct.calibrate import apply_temperature, fit_temperature
from headct.data.cache import Cache
from headct.inference import series_logits
from headct.metrics import (
    bootstrap_metric_cis,
    classification_metrics,
    expected_calibration_error,
    rsna_log_loss,
    sweep_thresholds,
)
from headct.tasks import Task, get_task

log = logging.getLogger(__name__)

N_BOOTSTRAP = 1000


@dataclass
class SplitPredictions:
    """Logits and truth for the usable slices of one split, in cache order.

    ``targets`` are float 0/1 ``[N, n]`` (multi-label) or int class indices
    ``[N]`` (multi-class). ``series_logits`` (series-level models) has one row
    per entry of ``series_keys``.
    """

    rows: np.ndarray           # int [N]
    uids: np.ndarray           # str [N]
    studies: np.ndarray        # str [N]
    series: np.ndarray         # str [N] (shard keys)
    logits: np.ndarray         # float32 [N, n]
    targets: np.ndarray
    series_keys: np.ndarray    # str [M]
    series_studies: np.ndarray  # str [M]
    series_logits: np.ndarray | None = None  # float32 [M, n]


@dataclass
class StudyTable:
    """One row per study: probabilities and truth (same conventions as the slices)."""

    studies: np.ndarray        # str [M]
    prob: np.ndarray           # float [M, n]
    targets: np.ndarray


# --- the command ----------------------------------------------------------------

def evaluate_command(args: argparse.Namespace) -> int:
    """``headct evaluate``: run, write, print where metrics.json and report.html are."""
    paths = evaluate(args.checkpoint, args.data, args.out, split=args.split,
                     batch_size=args.batch_size, device=args.device)
    print(f"metrics: {paths['metrics']}")
    if "report" in paths:
        print(f"report: {paths['report']}")
    return 0


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    batch_size: int = 32,
    device: str | None = None,
    report: bool = True,
    n_bootstrap: int = N_BOOTSTRAP,
) -> dict[str, Path]:
    """Evaluate ``checkpoint`` on ``split`` of the cache ``data``; returns the written paths."""
    from headct.checkpoint import load_checkpoint

    checkpoint = Path(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, config = load_checkpoint(checkpoint)
    model = model.to(device).eval()
    cache = Cache(data)
    task = _task_for(config, cache)

    thresholds, temperature, source = _frozen_or_fitted(model, config, checkpoint, cache, task,
                                                        batch_size=batch_size, device=device)
    pred = predict_split(model, cache, task, split, batch_size=batch_size, device=device,
                         tta_flip=bool(config.get("tta_flip")))
    if len(pred.rows) == 0:
        raise ValueError(f"{cache.path}: split {split!r} has no usable slices for task {task.name!r}")
    result = evaluation_results(pred, task, thresholds, temperature, n_bootstrap=n_bootstrap)
    result["metrics"].update(
        split=split_summary(cache, split),
        checkpoint={"model": config.get("model", {}).get("name"), "thresholds_source": source},
    )
    paths = {
        "predictions": write_predictions_csv(out / "predictions.csv", result["tables"], task, thresholds),
        "metrics": write_json(out / "metrics.json", result["metrics"]),
    }
    if report:
        paths.update(_write_report(out, result, task, checkpoint, cache, model, split, device))
    return paths


# --- predicting a split ------------------------------------------------------------

def predict_split(
    model: nn.Module,
    cache: Cache,
    task: Task,
    split: str,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    amp: str | None = None,
    max_series: int | None = None,
    progress: bool = True,
    tta_flip: bool = False,
) -> SplitPredictions:
    """Logits for every usable slice of ``split``, series by series (whole series per forward path);
    ``tta_flip`` averages with the mirrored series (``headct.inference.series_logits``)."""
    targets_all, keep_all = task.targets(cache.label_matrix)
    split_rows = cache.rows(split)
    shards = list(dict.fromkeys(cache.index["shard"][split_rows].tolist()))
    if max_series is not None:
        shards = shards[:max_series]
    rows, logits, series_out, series_keys = [], [], [], []
    model.eval()
    for shard in tqdm(shards, desc=f"predict {split}", unit="series", disable=not progress, leave=False):
        series_rows = cache.series_rows(shard)
        keep = keep_all[series_rows]
        if not keep.any():
            continue
        out = series_logits(model, np.array(cache.series_slices(shard)), batch_size=batch_size,
                            device=device, amp=amp, tta_flip=tta_flip)
        rows.append(series_rows[keep])
        logits.append(out.slice_logits.numpy()[keep])
        if out.series_logits is not None:
            series_out.append(out.series_logits.numpy())
        series_keys.append(shard)
    n = task.num_outputs
    rows_arr = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    index = cache.index
    study_of_shard = {str(s): str(st) for s, st in zip(index["shard"][split_rows], index["study"][split_rows],
                                                      strict=True)}
    return SplitPredictions(
        rows=rows_arr,
        uids=index["uid"][rows_arr],
        studies=index["study"][rows_arr],
        series=index["shard"][rows_arr],
        logits=np.concatenate(logits).astype(np.float32) if logits else np.zeros((0, n), np.float32),
        targets=targets_all[rows_arr],
        series_keys=np.asarray(series_keys, dtype=str),
        series_studies=np.asarray([study_of_shard[s] for s in series_keys], dtype=str),
        series_logits=np.stack(series_out).astype(np.float32) if series_out else None,
    )


def fit_calibration(pred: SplitPredictions, task: Task) -> tuple[dict[str, float], float]:
    """Temperature (NLL on validation logits), then F1-best thresholds on the calibrated probabilities."""
    temperature = fit_temperature(pred.logits, pred.targets, task.kind)
    prob = apply_temperature(pred.logits, temperature, task.kind)
    swept = sweep_thresholds(_one_hot(pred.targets, task), prob)
    return {label: float(t) for label, t in zip(task.labels, swept, strict=True)}, float(temperature)


# --- metrics -------------------------------------------------------------------------

def evaluation_results(
    pred: SplitPredictions,
    task: Task,
    thresholds: dict[str, float],
    temperature: float,
    *,
    n_bootstrap: int = N_BOOTSTRAP,
) -> dict[str, Any]:
    """Metrics for slices and studies, and the tables behind them (for the CSV and the plots)."""
    raw = apply_temperature(pred.logits, 1.0, task.kind)
    prob = apply_temperature(pred.logits, temperature, task.kind)
    slice_block = level_metrics(pred.targets, raw, prob, task, thresholds, temperature,
                                groups=pred.studies, n_bootstrap=n_bootstrap)
    studies = study_table(pred, task, temperature)
    raw_studies = study_table(pred, task, 1.0)
    study_block = level_metrics(studies.targets, raw_studies.prob, studies.prob, task, thresholds,
                                temperature, groups=None, n_bootstrap=n_bootstrap)
    metrics = {"task": task.name, "label_kind": task.kind, "labels": list(task.labels), "primary_level": "slice"}
    metrics.update(slice_block)
    metrics["level"] = {"slice": slice_block, "study": study_block}
    return {
        "metrics": metrics,
        "tables": {"slice": (pred, prob), "study": studies},
        "raw": {"slice": raw, "study": raw_studies.prob},
        "thresholds": thresholds,
        "temperature": temperature,
    }


def level_metrics(
    targets: np.ndarray,
    raw_prob: np.ndarray,
    prob: np.ndarray,
    task: Task,
    thresholds: dict[str, float],
    temperature: float,
    *,
    groups: np.ndarray | None,
    n_bootstrap: int,
) -> dict[str, Any]:
    """The metrics.json block for one level: point metrics on calibrated probabilities,
    ECE before and after the temperature, bootstrap intervals (by study when ``groups``)."""
    labels = list(task.labels)
    block = classification_metrics(targets, prob, labels=labels, kind=task.kind, thresholds=thresholds)
    block["ece"] = expected_calibration_error(targets, raw_prob, task.kind)
    block["ece_calibrated"] = expected_calibration_error(targets, prob, task.kind)
    block["temperature"] = float(temperature)
    if task.kind == "multilabel" and "any" in labels:
        block["rsna_log_loss"] = rsna_log_loss(targets, prob, labels)
        block["rsna_log_loss_uncalibrated"] = rsna_log_loss(targets, raw_prob, labels)
    block["ci95"] = bootstrap_metric_cis(targets, prob, labels=labels, kind=task.kind,
                                         thresholds=thresholds, n=n_bootstrap, seed=0, groups=groups)
    return block


def study_table(pred: SplitPredictions, task: Task, temperature: float) -> StudyTable:
    """One row per study: aggregated slice probabilities (or the series model's own) and truth."""
    slice_prob = apply_temperature(pred.logits, temperature, task.kind)
    studies = list(dict.fromkeys(pred.studies.tolist()))
    probs, targets = [], []
    for study in studies:
        members = pred.studies == study
        targets.append(_aggregate_truth(pred.targets[members], task))
        if pred.series_logits is not None:
            series_prob = apply_temperature(pred.series_logits[pred.series_studies == study], temperature,
                                            task.kind)
            probs.append(aggregate_probabilities(series_prob, task))
        else:
            probs.append(aggregate_probabilities(slice_prob[members], task))
    n = task.num_outputs
    return StudyTable(
        studies=np.asarray(studies, dtype=str),
        prob=np.stack(probs) if probs else np.zeros((0, n)),
        targets=np.stack(targets) if targets else np.zeros((0, n) if task.kind == "multilabel" else 0),
    )


def aggregate_probabilities(prob: np.ndarray, task: Task) -> np.ndarray:
    """``[k, n]`` slice (or series) probabilities of one study → ``[n]`` (rules in the module doc)."""
    if task.kind == "multilabel":
        return prob.max(axis=0)
    return prob[int(prob[:, 0].argmin())]


def split_summary(cache: Cache, split: str) -> dict[str, Any]:
    """How the cache was split and its sizes (studies), plus the evaluated split."""
    meta = dict(cache.meta.get("split", {}))
    out = {key: meta.get(key) for key in ("how", "seed", "n_train", "n_val", "n_test")}
    out["evaluated"] = split
    return out


# --- writing ----------------------------------------------------------------------------

def write_predictions_csv(
    path: Path, tables: dict[str, Any], task: Task, thresholds: dict[str, float] | None
) -> Path:
    """``predictions.csv``: slice rows then study rows; p_ calibrated, y_ truth, d_ decisions."""
    labels = list(task.labels)
    pred, slice_prob = tables["slice"]
    studies: StudyTable = tables["study"]
    header = ["level", "study", "uid", "row"]
    header += [f"p_{label}" for label in labels] + [f"y_{label}" for label in labels]
    header += [f"d_{label}" for label in labels]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    slice_y, slice_d = _one_hot(pred.targets, task), decisions(slice_prob, task, thresholds)
    for i in range(len(pred.rows)):
        writer.writerow(["slice", pred.studies[i], pred.uids[i], int(pred.rows[i]),
                         *_fmt(slice_prob[i]), *slice_y[i].tolist(), *slice_d[i].tolist()])
    study_y, study_d = _one_hot(studies.targets, task), decisions(studies.prob, task, thresholds)
    for i, study in enumerate(studies.studies):
        writer.writerow(["study", study, study, -1, *_fmt(studies.prob[i]), *study_y[i].tolist(),
                         *study_d[i].tolist()])
    atomic.write_text(path, buffer.getvalue())
    return path


def decisions(prob: np.ndarray, task: Task, thresholds: dict[str, float] | None) -> np.ndarray:
    """0/1 ``[N, n]``: ``prob >= threshold`` (multi-label) or the one-hot arg-max (multi-class)."""
    if task.kind == "multiclass":
        return np.eye(task.num_outputs, dtype=int)[prob.argmax(axis=1)] if len(prob) else np.zeros((0, task.num_outputs), int)
    t = np.array([(thresholds or {}).get(label, 0.5) for label in task.labels])
    return (prob >= t).astype(int)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    atomic.write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


# --- helpers ----------------------------------------------------------------------------------

def _task_for(config: dict[str, Any], cache: Cache) -> Task:
    task = get_task(config["task"], cache.labels)
    if list(task.labels) != list(config.get("labels", task.labels)):
        raise ValueError(f"checkpoint labels {config.get('labels')} differ from task {task.name!r} "
                         f"on this cache ({list(task.labels)})")
    return task


def _frozen_or_fitted(
    model: nn.Module, config: dict[str, Any], checkpoint: Path, cache: Cache, task: Task, *,
    batch_size: int, device: str,
) -> tuple[dict[str, float], float, str]:
    """The checkpoint's thresholds and temperature, or both fitted on validation now (and stored)."""
    thresholds = config.get("thresholds") or {}
    temperature = config.get("temperature")
    if thresholds and temperature is not None:
        return {k: float(v) for k, v in thresholds.items()}, float(temperature), "checkpoint"
    from headct.checkpoint import update_checkpoint_config

    log.info("checkpoint has no %s: fitting on the validation split",
             "thresholds" if not thresholds else "temperature")
    val = predict_split(model, cache, task, "val", batch_size=batch_size, device=device,
                        tta_flip=bool(config.get("tta_flip")))
    if len(val.rows) == 0:
        raise ValueError(f"{cache.path}: no validation slices to fit thresholds/temperature on")
    fitted_thresholds, fitted_temperature = fit_calibration(val, task)
    if temperature is None:
        temperature = fitted_temperature
    else:  # keep the stored temperature; sweep thresholds on its scale
        prob = apply_temperature(val.logits, float(temperature), task.kind)
        fitted_thresholds = dict(zip(task.labels, map(float, sweep_thresholds(_one_hot(val.targets, task), prob)),
                                     strict=True))
    thresholds = thresholds or fitted_thresholds
    update_checkpoint_config(checkpoint, thresholds=thresholds, temperature=float(temperature))
    return {k: float(v) for k, v in thresholds.items()}, float(temperature), "validation"


def _aggregate_truth(targets: np.ndarray, task: Task) -> np.ndarray:
    if task.kind == "multilabel":
        return targets.max(axis=0)
    counts = np.bincount(targets.astype(int), minlength=task.num_outputs)
    return np.int64(1 + counts[1:].argmax()) if counts[1:].sum() > 0 else np.int64(0)


def _one_hot(targets: np.ndarray, task: Task) -> np.ndarray:
    if task.kind == "multiclass":
        return np.eye(task.num_outputs, dtype=int)[np.asarray(targets, dtype=int)]
    return np.asarray(targets).astype(int)


def _fmt(values: Sequence[float]) -> list[str]:
    return [repr(float(v)) for v in values]  # exact round trip: metrics recompute from the file


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")



def _write_report(out: Path, result: dict[str, Any], task: Task, checkpoint: Path, cache: Cache,
                  model: nn.Module, split: str, device: str) -> dict[str, Path]:
    """Plots per level, training curves when the run has them, a Grad-CAM gallery when
    ``headct.explain`` is there, then ``report.html``."""
    from headct import report

    plots_dir = out / "plots"
    plots: dict[str, Path] = {}
    pred, slice_prob = result["tables"]["slice"]
    studies: StudyTable = result["tables"]["study"]
    levels = {"slice": (pred.targets, result["raw"]["slice"], slice_prob),
              "study": (studies.targets, result["raw"]["study"], studies.prob)}
    labels = list(task.labels)
    for level, (y, raw, prob) in levels.items():
        if len(y) == 0:
            continue
        block = result["metrics"]["level"][level]
        plots[f"ROC ({level})"] = report.plot_roc(y, prob, labels, task.kind, plots_dir / f"roc_{level}.png")
        plots[f"Precision-recall ({level})"] = report.plot_precision_recall(
            y, prob, labels, task.kind, plots_dir / f"pr_{level}.png")
        plots[f"Reliability before/after temperature ({level})"] = report.plot_reliability(
            y, raw, prob, task.kind, plots_dir / f"reliability_{level}.png")
        plots[f"Confusion matrix ({level})"] = report.plot_confusion(
            block["confusion_matrix"], labels, plots_dir / f"confusion_{level}.png")
    history = checkpoint.resolve().parent / "metrics.csv"
    if history.is_file():
        try:
            plots["Training curves"] = report.plot_training_curves(history, plots_dir / "training.png")
        except ValueError as err:
            log.warning("training curves skipped: %s", err)
    gallery = _gradcam_gallery(out, model, checkpoint, cache, split)
    title = f"headct evaluation: {result['metrics'].get('checkpoint', {}).get('model')} on {task.name} ({split})"
    page = report.write_report(out, result["metrics"], plots, title=title, gallery=gallery)
    return {"report": page}


def _gradcam_gallery(out: Path, model: nn.Module, checkpoint: Path, cache: Cache, split: str) -> list[Path]:
    """Grad-CAM overlays of lesion slices (scored against masks when the cache has them); optional."""
    try:
        from headct.explain import ExplainConfig, draw_split, format_table, score_cache
    except ImportError:  # headct.explain is optional for evaluate
        return []
    from headct.checkpoint import read_checkpoint_config

    config = read_checkpoint_config(checkpoint)
    folder = out / "gradcam"
    model = model.float().cpu()  # Grad-CAM needs gradients: plain fp32 eager
    settings = ExplainConfig(split=split, limit=8, gallery=4)
    if cache.has_masks:
        scores = score_cache(model, config, cache, folder, settings)
        write_json(folder / "localisation.json", scores)
        log.info("Grad-CAM localisation:\n%s", format_table(scores))
    else:
        draw_split(model, config, cache, folder / "overlays", settings)
    return sorted((folder / "overlays").glob("*.png"))
