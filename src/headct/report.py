"""Plots and the self-contained HTML report of an evaluation, written for a person to read.

``headct evaluate`` draws each figure with one ``plot_*`` function (each writes
one PNG and returns its path), then calls :func:`write_report` with the
``metrics.json`` dict, those paths and what else it knows: the model card
(:func:`model_card`), the Grad-CAM grid (:func:`plot_gradcam_grid`), the
localisation scores when the cache has lesion masks, and the studies the model
missed most confidently (:func:`worst_missed`). A banner warns when the test
set is too small for its intervals (:func:`small_sample_warnings`). The report
is a single ``report.html`` with every image embedded as a base64 data URI, so
it can be mailed or archived on its own.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly,
so importing this module never changes matplotlib's global backend. Every file
is written atomically (temp file + rename).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from headct import __version__, atomic
from headct.metrics import ECE_BINS, expected_calibration_error, reliability_bins

log = logging.getLogger(__name__)

SUMMARY_KEYS = [
    ("micro_auroc", "micro AUROC"),
    ("macro_auroc", "macro AUROC"),
    ("f1_macro", "F1 macro"),
    ("f1_micro", "F1 micro"),
    ("f1_weighted", "F1 weighted"),
    ("precision_macro", "precision macro"),
    ("recall_macro", "recall macro"),
    ("accuracy", "accuracy"),
    ("label_accuracy", "mean per-label accuracy"),
    ("ece", "ECE (before temperature)"),
    ("ece_calibrated", "ECE (after temperature)"),
    ("temperature", "temperature"),
    ("rsna_log_loss", "RSNA weighted log loss"),
]
PER_CLASS_KEYS = [
    ("support", "positives"),
    ("auroc", "AUROC"),
    ("f1", "F1"),
    ("precision", "precision"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("threshold", "threshold"),
]
MIN_STUDIES_PER_SIDE = 20
"""Fewer positive (or negative) test studies than this for a class, and its intervals say little."""
INTENDED_USE = ("not recorded in this checkpoint. headct models are research tools: not a medical device, "
                "not validated for diagnosis.")
"""Shown when the checkpoint's config has no ``intended_use`` of its own."""
CURVE_NAMES = {"train_loss": "training loss", "val_loss": "validation loss", "lr": "learning rate"}
KIND_WORDS = {"multilabel": "multi-label (each label decided on its own)",
              "multiclass": "multi-class (one class per item)"}
SPLIT_WORDS = {
    "patient": "by patient (a salted hash of the patient ID), so no patient is on both sides",
    "study": "by study, so no study is on both sides (patients with several studies may be)",
    "image": "by image: slices of one patient may be on both sides, so the figures may be optimistic",
}


# --- plots ---------------------------------------------------------------------

def plot_roc(y_true: np.ndarray, prob: np.ndarray, labels: Sequence[str], kind: str,
             path: str | Path) -> Path:
    """ROC curve per class (one-vs-rest for multi-class) plus the micro-average."""
    y, p = _indicator(y_true, prob, kind)
    fig, ax = _figure()
    for c, label in enumerate(labels):
        if np.unique(y[:, c]).size < 2:
            continue
        fpr, tpr, _ = roc_curve(y[:, c], p[:, c])
        ax.plot(fpr, tpr, lw=1.5, label=f"{label} ({auc(fpr, tpr):.3f})")
    if np.unique(y).size == 2:
        fpr, tpr, _ = roc_curve(y.ravel(), p.ravel())
        ax.plot(fpr, tpr, "k--", lw=2, label=f"micro-average ({auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=1)
    _axes(ax, "false positive rate (1 - specificity)", "true positive rate (sensitivity)", "ROC")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_precision_recall(y_true: np.ndarray, prob: np.ndarray, labels: Sequence[str], kind: str,
                          path: str | Path) -> Path:
    """Precision-recall curve per class, average precision in the legend."""
    y, p = _indicator(y_true, prob, kind)
    fig, ax = _figure()
    for c, label in enumerate(labels):
        if y[:, c].sum() == 0:
            continue
        precision, recall, _ = precision_recall_curve(y[:, c], p[:, c])
        ap = average_precision_score(y[:, c], p[:, c])
        ax.step(recall, precision, where="post", lw=1.5, label=f"{label} (AP {ap:.3f})")
    _axes(ax, "recall (sensitivity)", "precision", "Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_reliability(y_true: np.ndarray, prob_before: np.ndarray, prob_after: np.ndarray | None,
                     kind: str, path: str | Path, n_bins: int = ECE_BINS,
                     labels: Sequence[str] | None = None) -> Path:
    """Reliability diagrams before (and, if given, after) temperature scaling, one panel per class.

    Each class is read one-vs-rest: predicted probability against the fraction
    of items that truly have it, with the number of items in each bin written
    beside its point (a bin of 3 items is no evidence either way).
    """
    y, before = _indicator(y_true, prob_before, kind)
    after = _indicator(y_true, prob_after, kind)[1] if prob_after is not None else None
    names = list(labels) if labels is not None else [f"class {c}" for c in range(before.shape[1])]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.9 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    for c, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, c + 1)
        _axes(ax, "predicted probability", "fraction truly positive", name)
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, label="perfect calibration")
        curves = [("before", before, "tab:red")] + ([("after T", after, "tab:blue")] if after is not None else [])
        for curve, prob, colour in curves:
            stats = reliability_bins(y[:, c:c + 1], prob[:, c:c + 1], "multilabel", n_bins)
            full = stats["count"] > 0
            ece = expected_calibration_error(y[:, c:c + 1], prob[:, c:c + 1], "multilabel", n_bins)
            ax.plot(stats["confidence"][full], stats["accuracy"][full], "o-", ms=4, color=colour,
                    label=f"{curve} (ECE {ece:.3f})")
            if curve == curves[-1][0]:  # counts once, for the curve the decisions use
                for x, acc, count in zip(stats["confidence"][full], stats["accuracy"][full],
                                         stats["count"][full], strict=True):
                    ax.annotate(f"{int(count)}", (x, acc), textcoords="offset points", xytext=(4, -10),
                                fontsize=7, color=colour)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability per class ({n_bins} bins; small numbers: items per bin)", fontsize=11)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]] | Mapping[str, Sequence[Sequence[int]]],
                   labels: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix: C x C (rows truth, columns decision), or one 2x2 per label, with row shares.

    Takes ``metrics["confusion_matrix"]`` as it is: a nested list for
    multi-class, a {label: [[tn, fp], [fn, tp]]} dict for multi-label.
    """
    if isinstance(matrix, Mapping):
        panels = [(label, np.asarray(m), ["no", "yes"]) for label, m in matrix.items()]
    else:
        panels = [("", np.asarray(matrix), list(labels))]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    size = max(4.5, 0.9 * len(panels[0][2])) if len(panels) == 1 else 3.3
    fig = Figure(figsize=(size * cols + 0.3, size * rows + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, m, ticks) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(m, cmap="Blues", vmin=0)
        totals = m.sum(axis=1, keepdims=True)
        for (r, c), value in np.ndenumerate(m):
            share = f"\n{value / totals[r, 0]:.0%}" if totals[r, 0] else ""
            ax.text(c, r, f"{int(value)}{share}", ha="center", va="center", fontsize=12,
                    color="white" if value > m.max() / 2 else "black")
        ax.set_xticks(range(len(ticks)), ticks, rotation=30 if len(ticks) > 2 else 0,
                      ha="right" if len(ticks) > 2 else "center", fontsize=10)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=10)
        ax.set_xlabel("model says", fontsize=10)
        ax.set_ylabel("truth", fontsize=10)
        ax.set_title(name, fontsize=12)
    return _save(fig, path)


def plot_training_curves(history_csv: str | Path, path: str | Path) -> Path:
    """Losses, validation metrics and learning rate per epoch from a run's CSV.

    The CSV has ``epoch``, ``train_loss``, ``val_loss``, any ``val_<metric>``
    columns and ``lr``; empty cells are skipped.
    """
    columns = _read_numeric_csv(Path(history_csv))
    if "epoch" not in columns:
        raise ValueError(f"{history_csv}: no 'epoch' column")
    epoch = columns["epoch"]
    metric_names = [c for c in columns if c.startswith("val_") and c != "val_loss"]
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    panels = [("loss", [c for c in ("train_loss", "val_loss") if c in columns], False),
              ("validation metrics", metric_names, False), ("learning rate", ["lr"] if "lr" in columns else [], True)]
    for i, (title, names, log_scale) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        for name in names:
            ok = np.isfinite(columns[name])
            ax.plot(epoch[ok], columns[name][ok], "o-", ms=4, lw=1.8, label=_curve_name(name))
        if log_scale and names and (columns[names[0]][np.isfinite(columns[names[0]])] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("epoch", fontsize=10)
        ax.set_title(title, fontsize=12)
        ax.grid(alpha=0.3)
        if len(names) > 1:  # below the axes, so it hides no curve
            ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return _save(fig, path)


def _curve_name(column: str) -> str:
    if column in CURVE_NAMES:
        return CURVE_NAMES[column]
    return column.removeprefix("val_").replace("_", " ").replace("auroc", "AUROC").replace("ece", "ECE")


@dataclass
class GradcamTile:
    """One slice of the Grad-CAM grid: the slice, its map for one class, and what to print above it."""

    pixels: np.ndarray          # [H, W] HU (kind "hu") or 0..255 grey (kind "uint8")
    cam: np.ndarray             # [H, W] in 0..1
    label: str
    probability: float
    truth: bool
    called: bool
    """The model's decision for the class (its frozen threshold, or the arg-max)."""
    kind: str = "hu"
    outline: np.ndarray | None = None  # [H, W] bool: the lesion's outline, when masks exist

    @property
    def empty(self) -> bool:
        """No evidence for the class anywhere (Grad-CAM's ReLU left nothing)."""
        return not bool(np.any(self.cam > 0))


def plot_gradcam_grid(tiles: Sequence[GradcamTile], path: str | Path, columns: int = 3) -> Path:
    """The Grad-CAM tiles as a grid, one row per class; each tile says class, probability and truth.

    The map is drawn in jet over the brain window with one colour bar for the
    figure (0: no evidence, 1: the strongest in that slice); an empty map is
    drawn plain and marked, never as a blank that looks like "nothing there".
    """
    by_label: dict[str, list[GradcamTile]] = {}
    for tile in tiles:
        by_label.setdefault(tile.label, []).append(tile)
    rows = max(len(by_label), 1)
    columns = max(1, min(columns, max((len(t) for t in by_label.values()), default=1)))
    fig = Figure(figsize=(2.6 * columns + 1.2, 2.75 * rows + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    colours = ScalarMappable(Normalize(0, 1), colormaps["jet"])
    axes = []
    for r, (label, members) in enumerate(by_label.items()):
        for c in range(columns):
            ax = fig.add_subplot(rows, columns, r * columns + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            axes.append(ax)
            if c >= len(members):
                ax.set_axis_off()
                continue
            _draw_tile(ax, members[c], colours)
            if c == 0:
                ax.set_ylabel(label, fontsize=11, fontweight="bold")
    if axes:
        bar = fig.colorbar(colours, ax=axes, shrink=0.6, pad=0.02)
        bar.set_label("Grad-CAM: evidence for the class (0 none, 1 strongest in the slice)", fontsize=9)
    fig.suptitle("Where the model looked (white outline: the true lesion, when known)", fontsize=11)
    return _save(fig, path)


def _draw_tile(ax: Any, tile: GradcamTile, colours: ScalarMappable) -> None:
    from headct.windows import apply_windows  # imports torch: only when a grid is drawn

    grey = apply_windows(tile.pixels, ["brain"])[0] if tile.kind == "hu" else np.asarray(tile.pixels) / 255.0
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
    if tile.empty:
        ax.text(0.5, 0.04, "empty map:\nno evidence found", transform=ax.transAxes, ha="center", va="bottom",
                fontsize=9, color="white", bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"})
        for spine in ax.spines.values():
            spine.set_edgecolor("tab:red")
            spine.set_linewidth(2)
    else:
        cam = tile.cam if tile.cam.shape == grey.shape else _resize(tile.cam, grey.shape)
        ax.imshow(cam, cmap=colours.cmap, norm=colours.norm, alpha=0.45)
    if tile.outline is not None and tile.outline.any():
        ax.contour(tile.outline.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    said = "called" if tile.called else "not called"
    ax.set_title(f"p {tile.probability:.2f}, {said} · truth: {'yes' if tile.truth else 'no'}", fontsize=9,
                 color="black" if tile.called == tile.truth else "tab:red")  # red: the model was wrong


def _resize(cam: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    rows = np.linspace(0, cam.shape[0] - 1, shape[0]).round().astype(int)
    cols = np.linspace(0, cam.shape[1] - 1, shape[1]).round().astype(int)
    return cam[np.ix_(rows, cols)]


# --- what the tables say -------------------------------------------------------

def worst_missed(studies: Sequence[str], truth: np.ndarray, prob: np.ndarray, labels: Sequence[str],
                 kind: str, thresholds: Mapping[str, float] | None, limit: int = 10) -> list[dict[str, Any]]:
    """The studies the model missed most confidently: truly positive for a class, decided negative.

    ``truth`` is 0/1 ``[M, n]``. Multi-label: a miss is ``prob < threshold``;
    multi-class: the arg-max is not the true class (the first class, "nothing
    found", is never a miss). Sorted by the probability given to the true class.
    """
    truth, prob = np.asarray(truth).astype(bool), np.asarray(prob, dtype=np.float64)
    missed = []
    for m, study in enumerate(studies):
        for c, label in enumerate(labels):
            if not truth[m, c] or (kind == "multiclass" and c == 0):
                continue
            threshold = float((thresholds or {}).get(label, 0.5)) if kind == "multilabel" else None
            said = prob[m, c] >= threshold if threshold is not None else int(prob[m].argmax()) == c
            if not said:
                missed.append({"study": str(study), "label": label, "probability": float(prob[m, c]),
                               "threshold": threshold,
                               "decided": labels[int(prob[m].argmax())] if kind == "multiclass" else "negative"})
    return sorted(missed, key=lambda row: row["probability"])[:limit]


def small_sample_warnings(block: Mapping[str, Any], unit: str = "studies",
                          minimum: int = MIN_STUDIES_PER_SIDE) -> list[str]:
    """Why the intervals of ``block`` (a metrics level) cannot be trusted, one sentence each; [] when fine."""
    n = block.get("n")
    per_class = block.get("per_class") or {}
    notes = []
    thin = []
    for label, values in per_class.items():
        positives = values.get("support")
        if positives is None or n is None:
            continue
        negatives = int(n) - int(positives)
        if min(int(positives), negatives) < minimum:
            thin.append(f"{label} ({int(positives)} positive, {negatives} negative)")
    if thin:
        notes.append(f"Too few test {unit} for these intervals to mean much: " + "; ".join(thin) +
                     f". Aim for at least {minimum} positive and {minimum} negative {unit} per class.")
    ci = block.get("ci95") or {}
    flat = [(key, bounds) for key, bounds in ci.items() if isinstance(bounds, list | tuple)]
    flat += [(f"{label} {key}", bounds) for label, values in (ci.get("per_class") or {}).items()
             for key, bounds in values.items()]
    degenerate = [key for key, bounds in flat
                  if len(bounds) == 2 and (None in bounds or not all(map(math.isfinite, bounds))
                                           or bounds[0] == bounds[1])]
    if degenerate:
        named = ", ".join(key.replace("_", " ") for key in degenerate[:3]) + (", ..." if len(degenerate) > 3 else "")
        notes.append(f"{len(degenerate)} of the {len(flat)} intervals are a single value or undefined ({named}): "
                     "the resamples did not vary enough to measure the uncertainty.")
    return notes


def model_card(config: Mapping[str, Any] | None, metrics: Mapping[str, Any]) -> dict[str, str]:
    """Model, training data, split and intended use, from the checkpoint config and the metrics.

    Reads ``provenance`` and ``intended_use`` from the config when it has them
    (strings or mappings); their absence is said, not guessed.
    """
    config = config or {}
    model = config.get("model") or {}
    inputs = config.get("input") or {}
    card = {
        "model": " · ".join(part for part in (
            str(model.get("name") or metrics.get("checkpoint", {}).get("model") or "unknown"),
            f"{model.get('level', 'slice')} level",
            f"input {inputs.get('kind', '?')} at {inputs.get('size', '?')} px" if inputs else "",
            f"headct {config.get('headct_version')}" if config.get("headct_version") else "") if part),
        "outputs": f"{', '.join(map(str, config.get('labels') or metrics.get('labels') or []))} "
                   f"({KIND_WORDS.get(str(config.get('label_kind') or metrics.get('kind')), 'kind not recorded')})",
        "training data": _as_text(config.get("provenance")) or _training_summary(config.get("training"))
                         or "not recorded in this checkpoint",
        "split": split_sentence(metrics.get("split")),
        "decisions": _decision_text(metrics),
        "intended use": _as_text(config.get("intended_use")) or INTENDED_USE,
    }
    return card


def _as_text(value: Any) -> str:
    if value in (None, "", {}, []):
        return ""
    if isinstance(value, Mapping):
        return "; ".join(f"{k.replace('_', ' ')}: {_as_text(v)}" for k, v in value.items() if v not in (None, ""))
    if isinstance(value, list | tuple):
        return ", ".join(_as_text(v) for v in value)
    return str(value)


def _training_summary(training: Any) -> str:
    """The checkpoint's ``training`` block in one sentence: data, sizes, epochs, best score."""
    if not isinstance(training, Mapping) or not training:
        return ""
    parts = []
    cache = training.get("cache") or {}
    if cache:
        parts.append(f"{cache.get('source_format', 'a')} data cached at {cache.get('size', '?')} px "
                     f"({cache.get('kind', '?')})")
    slices, split = training.get("slices") or {}, training.get("split") or {}
    if slices:
        studies = (f" from {split['n_train']} / {split['n_val']} studies"
                   if split.get("n_train") is not None and split.get("n_val") is not None else "")
        parts.append(f"{slices.get('train', '?')} training / {slices.get('val', '?')} validation slices{studies}")
    if training.get("epochs_run") is not None:
        best = training.get("best_score")
        score = f" ({training.get('monitor')} {best:.3f})" if isinstance(best, float) else ""
        parts.append(f"{training['epochs_run']} epoch(s) run, best epoch {training.get('best_epoch', '?')}{score}")
    return "; ".join(parts) or "; ".join(f"{k}: {v}" for k, v in training.items() if isinstance(v, str | int))


def _decision_text(metrics: Mapping[str, Any]) -> str:
    source = (metrics.get("checkpoint") or {}).get("thresholds_source")
    where = {"checkpoint": "frozen in the checkpoint (swept on validation at the end of training)",
             "validation": "fitted on the validation split by this evaluation"}.get(source, "as recorded")
    temperature = metrics.get("temperature")
    scaled = f", on probabilities scaled by temperature {temperature:.2f}" if isinstance(temperature, float) else ""
    return f"thresholds {where}{scaled}"


# --- the report ----------------------------------------------------------------

def write_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    plots: Mapping[str, str | Path],
    *,
    title: str,
    split_note: str | None = None,
    card: Mapping[str, str] | None = None,
    gradcam: str | Path | None = None,
    localisation: Mapping[str, Any] | None = None,
    missed: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    ``metrics`` is the ``metrics.json`` dict: either one block of
    :func:`headct.metrics.classification_metrics` keys, or ``level`` {slice,
    study} blocks; ``ci95`` (from :func:`headct.metrics.bootstrap_metric_cis`)
    inside a block adds intervals to its table. ``plots`` maps a caption to a
    PNG. ``card`` is :func:`model_card`'s dict, ``gradcam`` the grid of
    :func:`plot_gradcam_grid`, ``localisation`` ``headct.explain.score_cache``'s
    result and ``missed`` :func:`worst_missed`'s rows; each section appears
    only when given. ``split_note`` is the sentence on how the split was made;
    when ``None`` it is built from ``metrics["split"]`` by :func:`split_sentence`.
    """
    out_dir = Path(out_dir)
    note = split_note if split_note is not None else split_sentence(metrics.get("split"))
    levels = metrics.get("level")
    blocks = dict(levels) if isinstance(levels, Mapping) and levels else {"": metrics}
    parts = [f"<h1>{_esc(title)}</h1>", _meta_line(metrics)]
    headline = blocks.get("study") or next(iter(blocks.values()))
    warnings = small_sample_warnings(headline, "studies" if "study" in blocks else "items")
    if warnings:
        parts.append("<div class='banner'><strong>Read these figures with care.</strong> "
                     + " ".join(f"<p>{_esc(w)}</p>" for w in warnings) + "</div>")
    if not card or split_note is not None:  # the card says how the data were split
        parts.append(f"<p class='split'>{_esc(note)}</p>")
    if card:
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in card.items())
        parts.append(f"<h2>Model card</h2><table class='card'>{rows}</table>")
    for name, block in blocks.items():
        parts.append(_metrics_section(f"{name.capitalize()} level" if name else "Results", block, metrics))
    if missed is not None:
        parts.append(_missed_section(missed))
    if gradcam:
        parts.append("<h2>Grad-CAM</h2><p>Where the model looked for each class (last convolutional layer, "
                     "normalised per slice): the slices it was most and least sure of among those that truly "
                     "have the class, and the most suspicious slice that does not.</p>")
        parts.append(_figure_html(Path(gradcam), "Grad-CAM grid", wide=True))
    if localisation:
        parts.append(_localisation_section(localisation))
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        parts.extend(_figure_html(Path(p), caption, wide=_is_wide(Path(p))) for caption, p in plots.items())
        parts.append("</div>")
    page = _PAGE.format(title=_esc(title), css=_CSS, body="\n".join(parts))
    atomic.write_text(out_dir / "report.html", page)
    return out_dir / "report.html"


def _missed_section(missed: Sequence[Mapping[str, Any]]) -> str:
    if not missed:
        return "<h2>Missed studies</h2><p>No study was missed: every true finding was called.</p>"
    rows = "".join(
        f"<tr><td title='{_esc(m['study'])}'>{_esc(_short(m['study']))}</td><td>{_esc(m['label'])}</td>"
        f"<td>{_num(m['probability'])}</td><td>{_num(m.get('threshold'))}</td><td>{_esc(m['decided'])}</td></tr>"
        for m in missed)
    return ("<h2>Missed studies</h2><p>Studies that truly have a finding the model did not call, "
            "most confident miss first.</p><table><tr><th>study</th><th>finding</th><th>probability</th>"
            f"<th>threshold</th><th>model said</th></tr>{rows}</table>")


def _localisation_section(scores: Mapping[str, Any]) -> str:
    per_class = dict(scores.get("per_class") or {})
    pooled = scores.get("pooled")
    if pooled and pooled.get("n_slices"):
        per_class["pooled (lesion types)"] = pooled
    rows = "".join(
        f"<tr><td>{_esc(label)}</td><td>{_num(s.get('n_slices'))}</td><td>{_num(s.get('empty_maps'))}</td>"
        f"<td>{_num(s.get('pointing_game'))}</td><td>{_num(s.get('random_pointing_game'))}</td>"
        f"<td>{_num(s.get('energy_share'))}</td><td>{_num(s.get('random_energy_share'))}</td></tr>"
        for label, s in per_class.items())
    return ("<h2>Localisation</h2><p>Does the map point at the lesion? Pointing game: the map's peak lies "
            f"within {_esc(scores.get('tolerance_px', '?'))} px of the lesion mask; energy share: the part of the "
            "map inside the lesion. Each beside the same figure for random smooth maps, the bar to beat.</p>"
            "<table><tr><th>class</th><th>slices</th><th>empty maps</th><th>pointing</th><th>random</th>"
            f"<th>energy share</th><th>random</th></tr>{rows}</table>")


def _is_wide(path: Path) -> bool:
    """A figure of several panels: shown at full width, or its panels are too small to read."""
    from PIL import Image

    with Image.open(path) as image:
        return image.width > 900


def _short(study: str, keep: int = 14) -> str:
    return study if len(study) <= keep + 1 else "…" + study[-keep:]


def split_sentence(split: Mapping[str, Any] | None) -> str:
    """One sentence on how the data were split and the sizes, from ``metrics["split"]``."""
    if not split:
        return "How the data were split is not recorded for this evaluation."
    how = str(split.get("how", "unknown"))
    words = SPLIT_WORDS.get(how, f"by {how}")
    sizes = [f"{split[k]} {name}" for k, name in (("n_train", "train"), ("n_val", "validation"),
                                                  ("n_test", "test")) if split.get(k) is not None]
    unit = "images" if how == "image" else "studies"
    sized = f": {' / '.join(sizes)} {unit}" if sizes else ""
    seed = f" (seed {split['seed']})" if split.get("seed") is not None else ""
    return f"The data were split {words}{seed}{sized}."


# --- helpers: HTML ---------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 0.9em; } .split { background: #f4f6f8; padding: 0.6em 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f6f8; }
.ci { color: #777; font-size: 0.85em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 520px; width: 100%; border: 1px solid #eee; }
figure.wide img { max-width: 1000px; } figcaption { font-size: 0.85em; color: #555; }
.banner { background: #fff4e5; border-left: 5px solid #e67700; padding: 0.5em 1em; margin: 1em 0; }
.banner p { margin: 0.3em 0; }
table.card th { text-align: left; width: 9em; vertical-align: top; } table.card td { text-align: left; }
"""


def _meta_line(metrics: Mapping[str, Any]) -> str:
    facts = [f"headct {__version__}"]
    if metrics.get("task"):
        facts.append(f"task: {metrics['task']}")
    kind = metrics.get("label_kind") or metrics.get("kind")
    if kind:
        facts.append(KIND_WORDS.get(str(kind), str(kind)))
    labels = metrics.get("labels")
    if labels:
        facts.append("labels: " + ", ".join(map(str, labels)))
    return f"<p class='meta'>{_esc(' · '.join(facts))}</p>"


def _metrics_section(heading: str, block: Mapping[str, Any], top: Mapping[str, Any]) -> str:
    ci = block.get("ci95") or {}
    rows = []
    for key, name in SUMMARY_KEYS:
        value = block.get(key, top.get(key) if key in ("temperature", "ece_calibrated") else None)
        if value is None:
            continue
        if key == "accuracy" and block.get("accuracy_kind"):
            name = f"accuracy ({block['accuracy_kind']})"
        rows.append(f"<tr><td>{_esc(name)}</td><td>{_num(value)}{_ci(ci.get(key))}</td></tr>")
    unit = {"Slice level": ("slice", "slices"), "Study level": ("study", "studies")}.get(heading, ("item", "items"))
    n = f" ({block['n']} {unit[0] if block['n'] == 1 else unit[1]})" if block.get("n") is not None else ""
    out = [f"<h2>{_esc(heading)}{_esc(n)}</h2>", "<h3>Summary</h3>",
           "<table><tr><th>metric</th><th>value</th></tr>" + "".join(rows) + "</table>"]
    per_class = block.get("per_class") or {}
    if per_class:
        head = "".join(f"<th>{_esc(name)}</th>" for _, name in PER_CLASS_KEYS)
        body = []
        for label, values in per_class.items():
            class_ci = (ci.get("per_class") or {}).get(label, {})
            cells = "".join(f"<td>{_num(values.get(k))}{_ci(class_ci.get(k))}</td>"
                            for k, _ in PER_CLASS_KEYS)
            body.append(f"<tr><td>{_esc(label)}</td>{cells}</tr>")
        decision = "arg-max" if block.get("decision") == "argmax" else "per-class threshold (frozen on validation)"
        out.append(f"<h3>Per class</h3><p class='meta'>decision: {_esc(decision)}</p>"
                   f"<table><tr><th>class</th>{head}</tr>{''.join(body)}</table>")
    if ci:
        out.append(f"<p class='ci'>Intervals: 95 % percentile bootstrap, {_esc(ci.get('n_boot', '?'))} "
                   f"resamples{', whole studies resampled' if ci.get('groups') else ''}.</p>")
    binary = block.get("binary")
    if binary:
        cells = "".join(f"<tr><td>{_esc(k)}</td><td>{_num(binary.get(k))}</td></tr>"
                        for k in ("threshold", "auroc", "f1", "precision", "sensitivity", "specificity", "accuracy"))
        out.append(f"<h3>Binary: {_esc(binary.get('positive'))} when p &ge; threshold</h3>"
                   f"<table><tr><th>metric</th><th>value</th></tr>{cells}</table>")
    return "\n".join(out)


def _figure_html(path: Path, caption: str, wide: bool = False) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".svg": "image/svg+xml"}.get(path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure{' class=wide' if wide else ''}><img src='data:{mime};base64,{data}' alt='{_esc(caption)}'>"
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return _esc(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.3f}" if math.isfinite(value) else "–"


def _ci(bounds: Any) -> str:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or None in bounds:
        return ""
    return f" <span class='ci'>[{bounds[0]:.3f}, {bounds[1]:.3f}]</span>"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --- helpers: figures and files ----------------------------------------------------

def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _axes(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _indicator(y_true: np.ndarray, prob: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prob, dtype=np.float64)
    p = p[:, None] if p.ndim == 1 else p
    y = np.asarray(y_true)
    if kind == "multiclass" and y.ndim == 1:
        y = np.eye(p.shape[1], dtype=int)[y.astype(int)]
    y = y[:, None] if y.ndim == 1 else y
    return y.astype(int), p


def _read_numeric_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: no rows")

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {name: np.array([number(r.get(name)) for r in rows]) for name in rows[0]}


def _save(fig: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic.write_bytes(path, buffer.getvalue())
    return Path(path)
