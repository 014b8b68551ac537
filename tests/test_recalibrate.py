"""Site recalibration: a shifted-intensity site gets a lower ECE and its target study sensitivity."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from headct.training.config import TrainConfig

SITE_SHIFT_HU = 80  # the site's scanner reads everything 80 HU brighter: the model is badly calibrated there


@pytest.fixture(scope="module")
def trained_best(cache: Path, tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headct.train import train

    run = tmp_path_factory.mktemp("recal") / "run"
    return train(TrainConfig(data=str(cache), model=tiny_model, task="rsna", out=str(run), epochs=4, batch_size=8,
                             lr=3e-3, warmup_epochs=0.0, max_steps_per_epoch=4, progress=False,
                             tensorboard=False, patience=0, augment=False))


@pytest.fixture(scope="module")
def site(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cache with every shard +80 HU, and every study in the test split (the site's labelled set)."""
    path = tmp_path_factory.mktemp("site") / "cache"
    shutil.copytree(cache, path)
    for shard in (path / "shards").glob("*.npy"):
        np.save(shard, np.load(shard) + np.int16(SITE_SHIFT_HU))
    index = path / "index.csv"
    header, *rows = index.read_text().splitlines()
    column = header.split(",").index("split")
    fixed = []
    for row in rows:
        cells = row.split(",")
        cells[column] = "test"
        fixed.append(",".join(cells))
    index.write_text("\n".join([header, *fixed]) + "\n")
    return path


def _evaluated(checkpoint: Path, site: Path, out: Path) -> dict:
    from headct.evaluate import evaluate

    evaluate(checkpoint, site, out, split="test", report=False, n_bootstrap=0)
    return json.loads((out / "metrics.json").read_text())


def test_calibrate_on_a_shifted_site_lowers_ece_and_reaches_the_target_sensitivity(
        trained_best: Path, site: Path, tmp_path: Path) -> None:
    from headct.checkpoint import read_checkpoint_config
    from headct.cli import main

    out = tmp_path / "site_ckpt"
    assert main(["calibrate", str(trained_best), "--data", str(site), "--split", "test",
                 "--target-sensitivity", "0.9", "--out", str(out)]) == 0

    before = _evaluated(trained_best, site, tmp_path / "eval_before")
    after = _evaluated(out, site, tmp_path / "eval_after")  # evaluate's own path, with the frozen values
    for level in ("slice", "study"):
        assert after["level"][level]["ece_calibrated"] < before["level"][level]["ece_calibrated"], level
    for label in ("intraparenchymal", "any"):  # the classes with positives on this site
        assert after["level"]["study"]["per_class"][label]["sensitivity"] >= 0.9
    config = read_checkpoint_config(out)
    record = config.training["calibration"]
    assert config.provenance.calibration.startswith("recalibrated on 20 studies (test split")
    assert record["studies"] == 20 and record["split"] == "test" and record["target_sensitivity"] == 0.9
    assert record["ece"]["study"]["after"] == pytest.approx(after["level"]["study"]["ece_calibrated"])
    assert str(site) not in json.dumps(config.to_dict())  # the site's data is named by a hash
    assert config.temperature != read_checkpoint_config(trained_best).temperature
    with open(out / "calibration" / "calibration.csv", newline="") as handle:
        table = {(r["level"], r["label"], r["metric"]): r for r in csv.DictReader(handle)}
    assert float(table[("study", "any", "sensitivity")]["after"]) >= 0.9
    assert float(table[("slice", "all", "ece")]["after"]) < float(table[("slice", "all", "ece")]["before"])
    assert (out / "calibration" / "reliability_study.png").stat().st_size > 1000


def test_max_f1_default_and_bad_arguments(trained_best: Path, site: Path, tmp_path: Path) -> None:
    from headct.checkpoint import read_checkpoint_config
    from headct.recalibrate import recalibrate

    record = recalibrate(trained_best, site, tmp_path / "f1", split="all")
    assert record["method"].startswith("max-F1") and record["slices"] == 120
    assert set(read_checkpoint_config(tmp_path / "f1").thresholds) == {
        "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"}
    with pytest.raises(ValueError, match="new directory"):
        recalibrate(trained_best, site, trained_best)
    with pytest.raises(ValueError, match="no usable slices"):
        recalibrate(trained_best, site, tmp_path / "none", split="val")  # the site has only test studies


def test_sensitivity_thresholds_pick_the_most_specific_point() -> None:
    from headct.decide import sensitivity_thresholds

    y = np.array([[1], [1], [1], [1], [0], [0]])
    p = np.array([[0.9], [0.8], [0.4], [0.3], [0.5], [0.1]])
    t = sensitivity_thresholds(y, p, 0.75)[0]  # 3 of 4 positives: at or above 0.4, not 0.3
    assert 0.3 < t <= 0.4 and ((p[:, 0] >= t) & (y[:, 0] == 1)).sum() == 3
    assert sensitivity_thresholds(y, p, 1.0)[0] <= 0.3
    with pytest.raises(ValueError, match="target sensitivity"):
        sensitivity_thresholds(y, p, 0.0)


def test_calibrate_command_refuses_a_bad_target_in_one_line(trained_best: Path, site: Path, tmp_path: Path) -> None:
    from headct.cli import main

    with pytest.raises(SystemExit, match=r"^headct calibrate: target sensitivity must be in \(0, 1\]"):
        main(["calibrate", str(trained_best), "--data", str(site), "--split", "test", "--target-sensitivity", "1.5",
              "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
