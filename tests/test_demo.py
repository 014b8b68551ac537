"""``headct demo --quick``: phantom → prepare → train → evaluate → report, end to end."""

from __future__ import annotations

import json
from pathlib import Path

from headct import load
from headct.checkpoint import INTENDED_USE_SYNTHETIC, SYNTHETIC_WARNING, read_checkpoint_config
from headct.cli import main


def test_quick_demo_runs_every_step_and_says_where_the_report_is(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = out / "eval" / "report.html"
    assert f"report: {report}" in printed and "test micro AUROC" in printed
    assert (out / "phantom" / "labels.csv").is_file()
    meta = json.loads((out / "cache" / "meta.json").read_text())
    assert meta["split"]["how"] == "patient" and meta["has_masks"] and meta["synthetic"] is True
    config = read_checkpoint_config(out / "run" / "best")
    assert config.task == "rsna" and set(config.thresholds) == set(config.labels)
    # trained on the phantom: it says so in its config and in every prediction
    assert config.provenance.synthetic is True and config.provenance.source_format == meta["source_format"]
    assert config.provenance.n_studies == meta["summary"]["studies"] and config.provenance.split_how == "patient"
    assert config.provenance.calibration.startswith("temperature and F1-best thresholds fitted on the validation")
    assert config.intended_use == INTENDED_USE_SYNTHETIC
    study = next(p for p in (out / "phantom" / "dicom").iterdir() if p.is_dir())
    prediction = load(str(out / "run" / "best"), device="cpu").predict(study)
    assert SYNTHETIC_WARNING in prediction["warnings"]
    assert prediction["model"]["provenance"]["synthetic"] is True
    assert prediction["model"]["intended_use"] == INTENDED_USE_SYNTHETIC
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["split"]["how"] == "patient" and metrics["n"] > 0
    page = report.read_text()
    assert "by patient" in page and "data:image/png;base64," in page  # plots embedded in the page
    assert (out / "run" / "metrics.csv").read_text().startswith("epoch,train_loss,val_loss")
