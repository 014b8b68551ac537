"""Plots and the self-contained HTML report of an evaluation.

``headct evaluate`` draws each figure with one ``plot_*`` function (each writes
one PNG and returns its path), then calls :func:`write_report` with the
``metrics.json`` dict and those paths. The report is a single ``report.html``
with every image embedded as a base64 data URI, so it can be mailed or
archived on its own.

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
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
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
                     kind: str, path: str | Path, n_bins: int = ECE_BINS) -> Path:
    """Reliability diagram before (and, if given, after) temperature scaling.

    Multi-class: top-label confidence vs accuracy; multi-label: predicted
    probability vs fraction of positives (as in :func:`headct.metrics.expected_calibration_error`).
    """
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, label="perfect calibration")
    curves = [("before", prob_before, "tab:red")]
    if prob_after is not None:
        curves.append(("after temperature", prob_after, "tab:blue"))
    for name, prob, colour in curves:
        stats = reliability_bins(y_true, prob, kind, n_bins)
        full = stats["count"] > 0
        ece = expected_calibration_error(y_true, prob, kind, n_bins)
        ax.plot(stats["confidence"][full], stats["accuracy"][full], "o-", color=colour,
                label=f"{name} (ECE {ece:.3f})")
    xlabel = "confidence (top-label probability)" if kind == "multiclass" else "predicted probability"
    ylabel = "accuracy" if kind == "multiclass" else "fraction positive"
    _axes(ax, xlabel, ylabel, f"Reliability ({n_bins} bins)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]] | Mapping[str, Sequence[Sequence[int]]],
                   labels: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix: C x C (rows truth, columns decision), or one 2x2 per label.

    Takes ``metrics["confusion_matrix"]`` as it is: a nested list for
    multi-class, a {label: [[tn, fp], [fn, tp]]} dict for multi-label.
    """
    if isinstance(matrix, Mapping):
        panels = [(label, np.asarray(m), ["neg", "pos"]) for label, m in matrix.items()]
    else:
        panels = [("", np.asarray(matrix), list(labels))]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    size = 4.0 if len(panels) == 1 else 2.6
    fig = Figure(figsize=(size * cols + 0.5, size * rows + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, m, ticks) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(m, cmap="Blues")
        for (r, c), value in np.ndenumerate(m):
            ax.text(c, r, str(int(value)), ha="center", va="center",
                    color="white" if value > m.max() / 2 else "black", fontsize=9)
        ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=8)
        ax.set_xlabel("decision", fontsize=8)
        ax.set_ylabel("truth", fontsize=8)
        ax.set_title(name, fontsize=9)
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
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    panels = [("loss", [c for c in ("train_loss", "val_loss") if c in columns], False),
              ("validation metrics", metric_names, False), ("learning rate", ["lr"] if "lr" in columns else [], True)]
    for i, (title, names, log_scale) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        for name in names:
            ok = np.isfinite(columns[name])
            ax.plot(epoch[ok], columns[name][ok], "o-", ms=3, label=name)
        if log_scale and names and (columns[names[0]][np.isfinite(columns[names[0]])] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
    return _save(fig, path)


# --- the report ----------------------------------------------------------------

def write_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    plots: Mapping[str, str | Path],
    *,
    title: str,
    split_note: str | None = None,
    gallery: Sequence[str | Path] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    ``metrics`` is the ``metrics.json`` dict: either one block of
    :func:`headct.metrics.classification_metrics` keys, or ``level`` {slice,
    study} blocks; ``ci95`` (from :func:`headct.metrics.bootstrap_metric_cis`)
    inside a block adds intervals to its table. ``plots`` maps a caption to a
    PNG; ``gallery`` lists Grad-CAM overlays (captioned by file name).
    ``split_note`` is the sentence on how the split was made; when ``None`` it
    is built from ``metrics["split"]`` by :func:`split_sentence`.
    """
    out_dir = Path(out_dir)
    note = split_note if split_note is not None else split_sentence(metrics.get("split"))
    parts = [f"<h1>{_esc(title)}</h1>", _meta_line(metrics), f"<p class='split'>{_esc(note)}</p>"]
    levels = metrics.get("level")
    if isinstance(levels, Mapping) and levels:
        for name, block in levels.items():
            parts.append(_metrics_section(f"{name.capitalize()} level", block, metrics))
    else:
        parts.append(_metrics_section("Results", metrics, metrics))
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        parts.extend(_figure_html(Path(p), caption) for caption, p in plots.items())
        parts.append("</div>")
    if gallery:
        parts.append("<h2>Grad-CAM gallery</h2><p>Where the model looked (last convolutional layer, "
                     "normalised to 0..1, overlaid in false colour).</p><div class='gallery'>")
        parts.extend(_figure_html(Path(p), Path(p).stem) for p in gallery)
        parts.append("</div>")
    page = _PAGE.format(title=_esc(title), css=_CSS, body="\n".join(parts))
    atomic.write_text(out_dir / "report.html", page)
    return out_dir / "report.html"


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
.plots, .gallery { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 520px; width: 100%; border: 1px solid #eee; }
.gallery figure img { max-width: 256px; } figcaption { font-size: 0.85em; color: #555; }
"""


def _meta_line(metrics: Mapping[str, Any]) -> str:
    facts = [f"headct {__version__}"]
    for key in ("task", "label_kind", "kind"):
        if metrics.get(key):
            facts.append(f"{key.replace('_', ' ')}: {metrics[key]}")
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
    n = f" ({block['n']} items)" if block.get("n") is not None else ""
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


def _figure_html(path: Path, caption: str) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".svg": "image/svg+xml"}.get(path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:{mime};base64,{data}' alt='{_esc(caption)}'>"
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
