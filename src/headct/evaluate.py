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
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from torch import nn

from headct import atomic, report
from headct.checkpoint import (
    CheckpointConfig,
    load_checkpoint,
    read_checkpoint_config,
    update_checkpoint_config,
)
from headct.data.cache import Cache, display_plane
from headct.decide import (
    StudyTable,
    decisions,
    fit_calibration,
    fit_thresholds,
    one_hot,
    probabilities,
    study_table,
)
from headct.distributed import (
    DistInfo,
    close_distributed,
    init_distributed,
)
from headct.explain import LABEL_BITS, ExplainConfig, cache_maps, score_cache
from headct.inference import SplitPredictions, predict_split, prepare_for_inference
from headct.metrics import (
    bootstrap_metric_cis,
    classification_metrics,
    expected_calibration_error,
    rsna_log_loss,
)
from headct.tasks import Task, get_task

log = logging.getLogger(__name__)

N_BOOTSTRAP = 1000


# --- the command ----------------------------------------------------------------

def evaluate_command(args: argparse.Namespace) -> int:
    """``headct evaluate``: run, write, print where metrics.json and report.html are."""
    paths = evaluate(args.checkpoint, args.data, args.out, split=args.split,
                     batch_size=args.batch_size, device=args.device)
    if not paths:  # a torchrun process other than rank 0: rank 0 wrote everything
        return 0
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
    """Evaluate ``checkpoint`` on ``split`` of the cache ``data``; returns the written paths.

    Under ``torchrun`` every process predicts every world_size-th series and rank 0
    merges them, computes and writes everything (the others return ``{}``).
    """
    checkpoint = Path(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = init_distributed(device, backend="gloo")  # gloo: several processes may share a GPU
    device = str(info.device)
    model, config = load_checkpoint(checkpoint)
    model = model.to(device).eval()
    fast = prepare_for_inference(model, device, amp=None)  # fp32 as trained; a frozen graph on the CPU
    cache = Cache(data)
    task = task_for(config, cache)

    thresholds, temperature, source = _frozen_or_fitted(fast, config, checkpoint, cache, task,
                                                        batch_size=batch_size, device=device, dist=info)
    pred = predict_split(fast, cache, task, split, batch_size=batch_size, device=device, dist=info,
                         tta_flip=config.tta_flip)
    close_distributed(info)
    if not info.is_main:
        return {}
    if len(pred.rows) == 0:
        raise ValueError(f"{cache.path}: split {split!r} has no usable slices for task {task.name!r}")
    result = evaluation_results(pred, task, thresholds, temperature, n_bootstrap=n_bootstrap)
    result["metrics"].update(
        split=split_summary(cache, split),
        checkpoint={"model": config.model.name, "thresholds_source": source},
    )
    paths = {
        "predictions": write_predictions_csv(out / "predictions.csv", result["tables"], task, thresholds),
        "metrics": write_json(out / "metrics.json", result["metrics"]),
    }
    if report:
        paths.update(_write_report(out, result, task, checkpoint, cache, model, split))
    return paths


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
    raw = probabilities(pred.logits, task.kind)
    prob = probabilities(pred.logits, task.kind, temperature)
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
    slice_y = one_hot(pred.targets, task.kind, task.num_outputs)
    slice_d = decisions(slice_prob, task.kind, labels, thresholds)
    for i in range(len(pred.rows)):
        writer.writerow(["slice", pred.studies[i], pred.uids[i], int(pred.rows[i]),
                         *_fmt(slice_prob[i]), *slice_y[i].tolist(), *slice_d[i].tolist()])
    study_y = one_hot(studies.targets, task.kind, task.num_outputs)
    study_d = decisions(studies.prob, task.kind, labels, thresholds)
    for i, study in enumerate(studies.studies):
        writer.writerow(["study", study, study, -1, *_fmt(studies.prob[i]), *study_y[i].tolist(),
                         *study_d[i].tolist()])
    atomic.write_text(path, buffer.getvalue())
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    atomic.write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


# --- helpers ----------------------------------------------------------------------------------

def task_for(config: CheckpointConfig, cache: Cache) -> Task:
    if config.task is None:
        raise ValueError("the checkpoint names no task; evaluate needs one")
    task = get_task(config.task, cache.labels)
    if config.labels is not None and list(task.labels) != config.labels:
        raise ValueError(f"checkpoint labels {config.labels} differ from task {task.name!r} "
                         f"on this cache ({list(task.labels)})")
    return task


def _frozen_or_fitted(
    model: nn.Module, config: CheckpointConfig, checkpoint: Path, cache: Cache, task: Task, *,
    batch_size: int, device: str, dist: DistInfo | None = None,
) -> tuple[dict[str, float], float, str]:
    """The checkpoint's thresholds and temperature, or both fitted on validation now (and stored)."""
    thresholds = config.thresholds or {}
    temperature = config.temperature
    if thresholds and temperature is not None:
        return {k: float(v) for k, v in thresholds.items()}, float(temperature), "checkpoint"
    log.info("checkpoint has no %s: fitting on the validation split",
             "thresholds" if not thresholds else "temperature")
    val = predict_split(model, cache, task, "val", batch_size=batch_size, device=device, dist=dist,
                        tta_flip=config.tta_flip)
    if len(val.rows) == 0:
        raise ValueError(f"{cache.path}: no validation slices to fit thresholds/temperature on")
    if temperature is None:
        fitted_thresholds, temperature = fit_calibration(val.logits, val.targets, task.labels, task.kind)
    else:  # keep the stored temperature; sweep thresholds on its scale
        fitted_thresholds = fit_thresholds(val.logits, val.targets, task.labels, task.kind, float(temperature))
    thresholds = thresholds or fitted_thresholds
    if dist is None or dist.is_main:
        update_checkpoint_config(checkpoint, thresholds=thresholds, temperature=float(temperature))
    return {k: float(v) for k, v in thresholds.items()}, float(temperature), "validation"


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
                  model: nn.Module, split: str) -> dict[str, Path]:
    """Plots per level, training curves when the run has them, the model card, the missed studies,
    a Grad-CAM grid (and localisation scores when the cache has masks), then ``report.html``."""
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
        plots[f"Confusion matrix ({level})"] = report.plot_confusion(
            block["confusion_matrix"], labels, plots_dir / f"confusion_{level}.png")
        plots[f"ROC ({level})"] = report.plot_roc(y, prob, labels, task.kind, plots_dir / f"roc_{level}.png")
        plots[f"Precision-recall ({level})"] = report.plot_precision_recall(
            y, prob, labels, task.kind, plots_dir / f"pr_{level}.png")
        plots[f"Reliability before/after temperature ({level})"] = report.plot_reliability(
            y, raw, prob, task.kind, plots_dir / f"reliability_{level}.png", labels=labels)
    history = checkpoint.resolve().parent / "metrics.csv"
    if history.is_file():
        try:
            plots["Training curves"] = report.plot_training_curves(history, plots_dir / "training.png")
        except ValueError as err:
            log.warning("training curves skipped: %s", err)
    config = read_checkpoint_config(checkpoint)
    gradcam, localisation = _gradcam(out, model, config, cache, split, pred, slice_prob, task,
                                     result["thresholds"])
    missed = report.worst_missed(studies.studies.tolist(), one_hot(studies.targets, task.kind, task.num_outputs), studies.prob, labels,
                                 task.kind, result["thresholds"])
    title = f"headct evaluation: {result['metrics'].get('checkpoint', {}).get('model')} on {task.name} ({split})"
    page = report.write_report(out, result["metrics"], plots, title=title,
                               card=report.model_card(config.to_dict(), result["metrics"]), gradcam=gradcam,
                               localisation=localisation, missed=missed)
    return {"report": page}


def _gradcam(out: Path, model: nn.Module, config: CheckpointConfig, cache: Cache, split: str,
             pred: SplitPredictions, slice_prob: np.ndarray, task: Task, thresholds: dict[str, float],
             ) -> tuple[Path | None, dict[str, Any] | None]:
    """The report's Grad-CAM grid, and the localisation scores when the cache has lesion masks."""
    model = model.float().cpu()  # Grad-CAM needs gradients: plain fp32 eager
    localisation = None
    if cache.has_masks:
        localisation = score_cache(model, config.labels or [], cache, None, ExplainConfig(split=split, limit=8))
        write_json(out / "gradcam" / "localisation.json", localisation)
    truth = one_hot(pred.targets, task.kind, task.num_outputs)
    called = decisions(slice_prob, task.kind, task.labels, thresholds)
    tiles = []
    for c, label in enumerate(task.labels):
        if task.kind == "multiclass" and c == 0:  # "nothing found" has no place to point at
            continue
        for i in _gradcam_examples(truth[:, c], slice_prob[:, c]):
            row = int(pred.rows[i])
            (cam,) = cache_maps(model, cache, [row], c, None, 16)
            mask = cache.mask(row) if cache.has_masks and label in LABEL_BITS else None
            outline = None
            if mask is not None and truth[i, c]:
                lesion = (np.asarray(mask) & LABEL_BITS[label]) > 0
                outline = lesion & ~ndimage.binary_erosion(lesion)
            tiles.append(report.GradcamTile(display_plane(cache.slice(row)), cam, label, float(slice_prob[i, c]),
                                            bool(truth[i, c]), bool(called[i, c]), cache.kind, outline))
    if not tiles:
        return None, localisation
    return report.plot_gradcam_grid(tiles, out / "plots" / "gradcam.png"), localisation


def _gradcam_examples(truth: np.ndarray, prob: np.ndarray) -> list[int]:
    """For one class: the truly positive slices the model was most and least sure of, and the
    negative slice it was most suspicious of (at most three indices, in that order)."""
    positives = np.flatnonzero(truth == 1)
    negatives = np.flatnonzero(truth == 0)
    chosen = []
    if len(positives):
        ranked = positives[np.argsort(-prob[positives], kind="stable")]
        chosen += [int(ranked[0])] + ([int(ranked[-1])] if len(ranked) > 1 else [])
    if len(negatives):
        chosen.append(int(negatives[np.argmax(prob[negatives])]))
    return chosen
