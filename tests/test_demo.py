"""``headct demo --quick``: phantom → prepare → train → evaluate → report, end to end."""

from __future__ import annotations

import json
from pathlib import Path

from headct.checkpoint import read_checkpoint_config
from headct.cli import main


def test_quick_demo_runs_every_step_and_says_where_the_report_is(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = out / "eval" / "report.html"
    assert f"report: {report}" in printed and "test micro AUROC" in printed
    assert (out / "phantom" / "labels.csv").is_file()
    meta = json.loads((out / "cache" / "meta.json").read_text())
    assert meta["split"]["how"] == "patient" and meta["has_masks"]
    config = read_checkpoint_config(out / "run" / "best")
    assert config["task"] == "rsna" and set(config["thresholds"]) == set(config["labels"])
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["split"]["how"] == "patient" and metrics["n"] > 0
    page = report.read_text()
    assert "by patient" in page and "data:image/png;base64," in page  # plots embedded in the page
    assert (out / "run" / "metrics.csv").read_text().startswith("epoch,train_loss,val_loss")
