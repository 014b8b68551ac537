"""Report: every plot is a real PNG, the HTML is self-contained and holds the table values."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from headct.decide import probabilities
from headct.metrics import bootstrap_metric_cis, classification_metrics
from headct.report import (
    GradcamTile,
    model_card,
    plot_confusion,
    plot_gradcam_grid,
    plot_precision_recall,
    plot_reliability,
    plot_roc,
    plot_training_curves,
    small_sample_warnings,
    split_sentence,
    worst_missed,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["non-stroke", "hemorrhagic", "ischemic"]


@pytest.fixture(scope="module")
def multiclass_set() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    logits = 3.0 * (rng.normal(size=(150, 3)) + 1.2 * np.eye(3)[y])
    return y, logits


class _Collector(HTMLParser):
    """Checks the page parses, and collects img sources and tag balance."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> after {self.stack[-3:]}")
        else:
            self.stack.pop()


def test_plots_write_png_files(tmp_path: Path, multiclass_set) -> None:
    y, logits = multiclass_set
    prob = probabilities(logits, "multiclass", 1.0)
    cm = classification_metrics(y, prob, labels=LABELS, kind="multiclass")["confusion_matrix"]
    ml_y = (np.random.default_rng(1).random((50, 2)) < 0.4).astype(int)
    ml_p = np.clip(ml_y * 0.4 + np.random.default_rng(2).random((50, 2)) * 0.6, 0, 1)
    ml_cm = classification_metrics(ml_y, ml_p, labels=["a", "b"], kind="multilabel")["confusion_matrix"]
    written = [
        plot_roc(y, prob, LABELS, "multiclass", tmp_path / "roc.png"),
        plot_precision_recall(y, prob, LABELS, "multiclass", tmp_path / "pr.png"),
        plot_reliability(y, prob, probabilities(logits, "multiclass", 3.0), "multiclass",
                         tmp_path / "rel.png"),
        plot_confusion(cm, LABELS, tmp_path / "cm.png"),
        plot_confusion(ml_cm, ["a", "b"], tmp_path / "cm_ml.png"),
        plot_roc(ml_y, ml_p, ["a", "b"], "multilabel", tmp_path / "roc_ml.png"),
        plot_reliability(ml_y, ml_p, None, "multilabel", tmp_path / "rel_ml.png"),
    ]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temp files


def test_plotting_leaves_pyplot_and_the_backend_alone(tmp_path: Path) -> None:
    code = (
        "import sys, matplotlib, numpy as np\n"
        "before = matplotlib.rcParams._get('backend')\n"
        "from headct.report import plot_roc\n"
        f"plot_roc(np.array([0, 1, 1, 0]), np.array([.1, .8, .6, .3]), ['x'], 'multilabel', r'{tmp_path / 'r.png'}')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert matplotlib.rcParams._get('backend') == before, 'backend changed'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_training_curves_from_history_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "history.csv"
    csv_path.write_text("epoch,train_loss,val_loss,val_f1_macro,val_auroc,lr\n"
                        "1,0.9,0.8,0.5,0.7,0.001\n2,0.6,0.65,0.6,0.8,0.0005\n3,0.4,,0.7,0.85,0.0001\n")
    out = plot_training_curves(csv_path, tmp_path / "curves.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    (tmp_path / "bad.csv").write_text("step,loss\n1,2\n")
    with pytest.raises(ValueError, match="epoch"):
        plot_training_curves(tmp_path / "bad.csv", tmp_path / "bad.png")


def test_split_sentence_says_how_and_sizes() -> None:
    text = split_sentence({"how": "patient", "seed": 0, "n_train": 80, "n_val": 10, "n_test": 10})
    assert "by patient" in text and "80 train / 10 validation / 10 test studies" in text
    assert "optimistic" in split_sentence({"how": "image", "n_test": 5})
    assert "not recorded" in split_sentence(None)


def test_report_is_self_contained_with_table_values(tmp_path: Path, multiclass_set) -> None:
    y, logits = multiclass_set
    prob = probabilities(logits, "multiclass", 2.5)
    slice_block = classification_metrics(y, prob, labels=LABELS, kind="multiclass")
    slice_block["ci95"] = bootstrap_metric_cis(y, prob, labels=LABELS, kind="multiclass", n=100)
    study_block = classification_metrics(y[:40], prob[:40], labels=LABELS, kind="multiclass")
    metrics = {
        "task": "3class", "label_kind": "multiclass", "labels": LABELS,
        "temperature": 2.5, "ece_calibrated": 0.0421,
        "split": {"how": "study", "n_train": 120, "n_val": 15, "n_test": 15},
        "level": {"slice": slice_block, "study": study_block},
    }
    roc = plot_roc(y, prob, LABELS, "multiclass", tmp_path / "roc.png")
    grid = tmp_path / "gradcam.png"
    grid.write_bytes(roc.read_bytes())
    report = write_report(tmp_path / "eval", metrics, {"ROC": roc}, title="3-class <test>", gradcam=grid)
    page = report.read_text()
    assert report == tmp_path / "eval" / "report.html"

    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert not parser.errors and parser.stack == []
    assert len(parser.images) == 2
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == roc.read_bytes()
    assert not re.search(r"src=['\"](?!data:)", page)  # nothing fetched from outside

    assert "3-class &lt;test&gt;" in page  # title escaped
    assert "Slice level (150 slices)" in page and "Study level (40 studies)" in page
    assert "by study" in page and "120 train / 15 validation / 15 test studies" in page
    assert f"{slice_block['f1_macro']:.3f}" in page
    assert f"{study_block['f1_macro']:.3f}" in page
    assert f"{slice_block['per_class']['ischemic']['auroc']:.3f}" in page
    low, high = slice_block["ci95"]["per_class"]["hemorrhagic"]["f1"]
    assert f"[{low:.3f}, {high:.3f}]" in page
    assert "0.042" in page and "2.500" in page  # calibration facts from the top level
    assert "<h2>Grad-CAM</h2>" in page
    assert page.count("multi-class") == 1 and "kind:" not in page  # the header says the kind once, in words


def test_report_without_levels_plots_or_gallery(tmp_path: Path) -> None:
    y = np.array([[0, 1], [1, 0], [1, 1], [0, 0]])
    prob = np.array([[0.2, 0.9], [0.7, 0.1], [0.6, 0.8], [0.3, 0.4]])
    metrics = classification_metrics(y, prob, labels=["epidural", "any"], kind="multilabel")
    metrics["rsna_log_loss"] = 0.1234
    page = write_report(tmp_path, metrics, {}, title="rsna", split_note="Split by patient: 3/1/1.").read_text()
    assert "Split by patient: 3/1/1." in page and "0.123" in page
    assert "accuracy (subset)" in page and "Grad-CAM" not in page and "<img" not in page


def test_reliability_is_per_class_with_bin_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.axes import Axes

    y = np.array([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0]])
    p = np.array([[0.91, 0.11], [0.12, 0.115], [0.92, 0.55], [0.11, 0.56], [0.915, 0.12]])
    notes: list[str] = []
    original = Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda self, text, *a, **k: notes.append((self.get_title(), text))
                        or original(self, text, *a, **k))
    plot_reliability(y, p, None, "multilabel", tmp_path / "rel.png", labels=["epidural", "any"])
    # epidural: 2 items near 0.1 and 3 near 0.9; any: 3 near 0.1, 2 near 0.6
    assert sorted(notes) == [("any", "2"), ("any", "3"), ("epidural", "2"), ("epidural", "3")]


def test_gradcam_grid_marks_empty_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.axes import Axes

    cam = np.zeros((32, 32), np.float32)
    cam[10:14, 10:14] = 1.0
    tiles = [GradcamTile(np.full((32, 32), 40, np.int16), cam, "subdural", 0.91, True, True),
             GradcamTile(np.full((32, 32), 40, np.int16), np.zeros((32, 32)), "subdural", 0.08, True, False),
             GradcamTile(np.full((32, 32), 40, np.int16), cam, "epidural", 0.62, False, True)]
    texts: list[str] = []
    titles: list[tuple[str, str]] = []
    original_text, original_title = Axes.text, Axes.set_title
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, *a, **k: texts.append(s)
                        or original_text(self, x, y, s, *a, **k))
    monkeypatch.setattr(Axes, "set_title", lambda self, s, *a, **k: titles.append((s, k.get("color")))
                        or original_title(self, s, *a, **k))
    path = plot_gradcam_grid(tiles, tmp_path / "grid.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [t for t in texts if "empty" in t] == ["empty map:\nno evidence found"]  # only the empty one
    assert tiles[1].empty and not tiles[0].empty
    assert titles == [("p 0.91, called · truth: yes", "black"), ("p 0.08, not called · truth: yes", "tab:red"),
                      ("p 0.62, called · truth: no", "tab:red")]  # red where the model was wrong


def test_worst_missed_lists_confident_misses_first() -> None:
    truth = np.array([[1, 1], [1, 0], [0, 1], [1, 1]])
    prob = np.array([[0.9, 0.2], [0.05, 0.1], [0.3, 0.7], [0.4, 0.45]])
    rows = worst_missed(["s0", "s1", "s2", "s3"], truth, prob, ["a", "b"], "multilabel", {"a": 0.5, "b": 0.5})
    assert [(r["study"], r["label"]) for r in rows] == [("s1", "a"), ("s0", "b"), ("s3", "a"), ("s3", "b")]
    three = worst_missed(["s0", "s1"], np.eye(3)[[0, 2]], np.array([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]]),
                         LABELS, "multiclass", None)
    assert rows and three == [{"study": "s1", "label": "ischemic", "probability": 0.4, "threshold": None,
                               "decided": "non-stroke"}]  # a "non-stroke" truth is never a miss


def test_small_test_sets_get_a_banner(tmp_path: Path) -> None:
    y = np.array([[0, 1], [1, 0], [1, 1], [0, 0]])
    prob = np.array([[0.2, 0.9], [0.7, 0.1], [0.6, 0.8], [0.3, 0.4]])
    block = classification_metrics(y, prob, labels=["epidural", "any"], kind="multilabel")
    block["ci95"] = {"micro_auroc": [1.0, 1.0], "per_class": {"any": {"auroc": [0.5, 1.0]}}}
    notes = small_sample_warnings(block)
    assert "epidural (2 positive, 2 negative)" in notes[0] and "at least 20 positive" in notes[0]
    assert notes[1].startswith("1 of the 2 intervals are a single value") and "micro auroc" in notes[1]
    page = write_report(tmp_path, {"level": {"study": block}}, {}, title="t").read_text()
    assert "class='banner'" in page
    rng = np.random.default_rng(0)
    big_y = np.tile([[0, 1], [1, 0], [1, 1], [0, 0]], (15, 1))
    big = classification_metrics(big_y, np.clip(big_y * 0.6 + rng.random(big_y.shape) * 0.4, 0, 1),
                                 labels=["epidural", "any"], kind="multilabel")
    assert small_sample_warnings(big) == []
    assert "class='banner'" not in write_report(tmp_path, big, {}, title="t").read_text()


def test_model_card_reads_provenance_and_tolerates_its_absence(tmp_path: Path) -> None:
    metrics = {"split": {"how": "patient", "n_train": 8, "n_val": 1, "n_test": 1}, "labels": ["a"]}
    config = {"model": {"name": "effnet-2d", "level": "slice"}, "input": {"kind": "hu", "size": 96},
              "labels": ["a"], "label_kind": "multilabel",
              "provenance": {"dataset": "phantom v1", "studies": 250}, "intended_use": "teaching only"}
    card = model_card(config, metrics)
    assert card["model"].startswith("effnet-2d · slice level · input hu at 96 px")
    assert card["training data"] == "dataset: phantom v1; studies: 250"
    assert card["intended use"] == "teaching only" and "by patient" in card["split"]
    bare = model_card({"model": {"name": "x"}}, metrics)
    assert bare["training data"] == "not recorded in this checkpoint"
    assert "not a medical device" in bare["intended use"]
    page = write_report(tmp_path, {"level": {}}, {}, title="t", card=card).read_text()
    assert "<h2>Model card</h2>" in page and "teaching only" in page


def test_model_card_summarises_the_training_block() -> None:
    training = {"cache": {"source_format": "rsna", "size": 96, "kind": "hu"},
                "split": {"n_train": 175, "n_val": 37}, "slices": {"train": 2100, "val": 444},
                "epochs_run": 7, "best_epoch": 6, "monitor": "macro_auroc", "best_score": 0.91234}
    card = model_card({"model": {"name": "effnet-2d"}, "training": training}, {})
    assert card["training data"] == ("rsna data cached at 96 px (hu); 2100 training / 444 validation slices "
                                     "from 175 / 37 studies; 7 epoch(s) run, best epoch 6 (macro_auroc 0.912)")
