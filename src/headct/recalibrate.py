"""Site recalibration: ``headct calibrate CKPT --data CACHE --out CKPT2``.

A model loses calibration, and its operating points move, on a new hospital's
scanners. Given that site's labelled studies (prepared into a cache), this
refits, without touching the weights:

- the temperature (NLL on the site's slice logits, ``headct.calibrate``);
- the thresholds, either F1-best per class on the calibrated slice
  probabilities (as training does, ``headct.evaluate.fit_calibration``), or,
  with ``--target-sensitivity S``, per class the most specific study-level
  threshold that still reaches sensitivity S on the site's studies
  (``headct.metrics.sensitivity_thresholds``; study probabilities aggregated
  as evaluate and predict do).

It writes a new checkpoint ``CKPT2`` (the same weights) whose config records
the calibration set (in ``provenance.calibration`` when the checkpoint has a
``provenance`` block, else in ``calibration``: the cache's hash, split, counts,
method, temperature and ECE before and after; never a path), and, in
``CKPT2/calibration/``, a before/after reliability diagram per level and
``calibration.csv``: per level and label, threshold, sensitivity,
specificity and F1 before and after, and ECE (long format). "Before" is the checkpoint as it
came (its own temperature and thresholds) on the site's data.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from headct import atomic
from headct.checkpoint import FIXED_FIELDS, load_checkpoint, save_checkpoint
from headct.data.cache import Cache
from headct.decide import fit_calibration, one_hot, sensitivity_thresholds, study_table
from headct.evaluate import evaluation_results, task_for
from headct.inference import predict_split

log = logging.getLogger(__name__)

SPLITS = ("val", "test", "all")
OUTPUT_FOLDER = "calibration"


def calibrate_command(args: argparse.Namespace) -> int:
    """``headct calibrate``: refit, write the new checkpoint, print ECE before/after and where it is."""
    from headct.errors import HeadCTError

    try:
        summary = recalibrate(args.checkpoint, args.data, args.out, split=args.split,
                              target_sensitivity=args.target_sensitivity, batch_size=args.batch_size,
                              device=args.device)
    except (ValueError, HeadCTError) as err:  # one line: bad checkpoint, cache, split or target
        raise SystemExit(f"headct calibrate: {err}") from None
    for level in ("slice", "study"):
        ece = summary["ece"][level]
        print(f"{level} ECE: {ece['before']:.4f} -> {ece['after']:.4f}")
    print(f"temperature: {summary['temperature']['before']:.4g} -> {summary['temperature']['after']:.4g}")
    print(f"checkpoint: {args.out}")
    print(f"reliability and table: {Path(args.out) / OUTPUT_FOLDER}")
    return 0


def recalibrate(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "val",
    target_sensitivity: float | None = None,
    batch_size: int = 32,
    device: str | None = None,
) -> dict[str, Any]:
    """Refit temperature and thresholds of ``checkpoint`` on ``split`` of ``data``; write ``out``.

    Returns the calibration record stored in the new checkpoint.
    """
    import torch


    checkpoint, out = Path(checkpoint), Path(out)
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    if target_sensitivity is not None and not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    if out.resolve() == checkpoint.resolve():
        raise ValueError(f"{out}: write the recalibrated checkpoint to a new directory, not over its source")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, stored = load_checkpoint(checkpoint, map_location=device)
    cache = Cache(data)
    task = task_for(stored, cache)
    pred = predict_split(model, cache, task, None if split == "all" else split, batch_size=batch_size,
                         device=device, tta_flip=stored.tta_flip)
    if len(pred.rows) == 0:
        raise ValueError(f"{cache.path}: split {split!r} has no usable slices for task {task.name!r}")

    before_thresholds = {label: float((stored.thresholds or {}).get(label, 0.5)) for label in task.labels}
    before_temperature = stored.applied_temperature
    thresholds, temperature = fit_calibration(pred.logits, pred.targets, task.labels, task.kind)
    if target_sensitivity is not None:
        thresholds = study_sensitivity_thresholds(pred, task, temperature, target_sensitivity)
    before = evaluation_results(pred, task, before_thresholds, before_temperature, n_bootstrap=0)
    after = evaluation_results(pred, task, thresholds, temperature, n_bootstrap=0)

    record = _record(cache, split, pred, task, target_sensitivity, before, after)
    fields = {k: v for k, v in stored.to_dict().items() if k not in FIXED_FIELDS | {"weights_sha256"}}
    fields.update(size=stored.input.size, thresholds=thresholds, temperature=temperature,
                  provenance={**fields["provenance"], "calibration": calibration_text(record)},
                  training={**fields["training"], "calibration": record})
    save_checkpoint(model, out, **fields)
    write_outputs(out / OUTPUT_FOLDER, task, before, after)
    log.info("recalibrated on %d studies: temperature %.4g -> %.4g", record["studies"], before_temperature,
             temperature)
    return record


def study_sensitivity_thresholds(pred: Any, task: Any, temperature: float, target: float) -> dict[str, float]:
    """Per class, the most specific threshold reaching ``target`` sensitivity on the studies of ``pred``."""
    studies = study_table(pred, task, temperature)
    values = sensitivity_thresholds(one_hot(studies.targets, task.kind, task.num_outputs), studies.prob, target)
    return {label: float(t) for label, t in zip(task.labels, values, strict=True)}


def write_outputs(folder: Path, task: Any, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Path]:
    """Reliability diagrams (before/after, per level) and ``calibration.csv``."""
    from headct import report

    paths: dict[str, Path] = {}
    for level in ("slice", "study"):
        y = before["tables"]["slice"][0].targets if level == "slice" else before["tables"]["study"].targets
        prob_before = before["tables"]["slice"][1] if level == "slice" else before["tables"]["study"].prob
        prob_after = after["tables"]["slice"][1] if level == "slice" else after["tables"]["study"].prob
        paths[level] = report.plot_reliability(y, prob_before, prob_after, task.kind,
                                               folder / f"reliability_{level}.png")
    paths["table"] = _write_table(folder / "calibration.csv", task, before, after)
    return paths


def calibration_text(record: dict[str, Any]) -> str:
    """The provenance line a recalibrated checkpoint carries (the full record is in ``training``)."""
    ece = record["ece"]["study"]
    return (f"recalibrated on {record['studies']} studies ({record['split']} split of a "
            f"{record['data']['source_format'] or 'unknown'} cache {record['data']['meta_sha256']}); "
            f"{record['method']}; study ECE {ece['before']:.3f} -> {ece['after']:.3f}")


# --- helpers -------------------------------------------------------------------------------

def _record(cache: Any, split: str, pred: Any, task: Any, target: float | None, before: dict[str, Any],
            after: dict[str, Any]) -> dict[str, Any]:
    meta = cache.path / "meta.json"
    levels = ("slice", "study")
    return {
        "data": {"meta_sha256": hashlib.sha256(meta.read_bytes()).hexdigest()[:16], "kind": cache.kind,
                 "source_format": cache.meta.get("source_format")},
        "split": split, "studies": int(len(np.unique(pred.studies))), "slices": int(len(pred.rows)),
        "method": ("max-F1 per class on calibrated slice probabilities" if target is None
                   else f"most specific study-level threshold with sensitivity >= {target}"),
        "target_sensitivity": target,
        "temperature": {"before": before["temperature"], "after": after["temperature"]},
        "ece": {level: {"before": before["metrics"]["level"][level]["ece_calibrated"],
                        "after": after["metrics"]["level"][level]["ece_calibrated"]} for level in levels},
    }


def _write_table(path: Path, task: Any, before: dict[str, Any], after: dict[str, Any]) -> Path:
    """Long format: level, label ("all" for ECE), metric, before, after."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["level", "label", "metric", "before", "after"])
    for level in ("slice", "study"):
        blocks = [run["metrics"]["level"][level] for run in (before, after)]
        writer.writerow([level, "all", "ece", *(_cell(b["ece_calibrated"]) for b in blocks)])
        for label in task.labels:
            for metric in ("threshold", "sensitivity", "specificity", "f1"):
                writer.writerow([level, label, metric, *(_cell(b["per_class"][label].get(metric)) for b in blocks)])
    atomic.write_text(path, buffer.getvalue())
    return path


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


__all__ = ["calibrate_command", "recalibrate", "study_sensitivity_thresholds", "write_outputs"]
