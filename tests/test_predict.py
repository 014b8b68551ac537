"""Predictor and `headct predict`: the prediction contract, resampling, calibration, streaming, privacy."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import headct
from headct.checkpoint import INTENDED_USE_UNKNOWN, Provenance, save_checkpoint
from headct.cli import main
from headct.data.resample import resample_slices
from headct.errors import InputError
from headct.io.volume import Volume
from headct.models import build_model
from headct.predict import Predictor

SIZE = 32
WriteSeries = Callable[..., tuple[str, list[str], np.ndarray]]
LABELS = ["intraparenchymal", "subdural", "any"]
THRESHOLDS = {"intraparenchymal": 0.0, "subdural": 1.0, "any": 0.5}  # always, never, by value
TEMPERATURE = 2.5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(build_model("mobilenetv2", len(LABELS)), path, size=SIZE, task=",".join(LABELS),
                    labels=LABELS, label_kind="multilabel", thresholds=THRESHOLDS, temperature=TEMPERATURE)
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return headct.load(str(checkpoint), device="cpu")


def test_prediction_follows_the_contract(predictor: Predictor, tmp_path: Path, write_ct_series: WriteSeries) -> None:
    study_uid, uids, hu = write_ct_series(tmp_path / "study")
    result = predictor.predict(tmp_path / "study")
    assert set(result) == {"study", "model", "slices", "study_probabilities", "study_positive", "warnings"}
    assert result["study"] == study_uid
    assert result["model"] == {"name": "mobilenetv2", "version": headct.__version__, "labels": LABELS,
                               "thresholds": THRESHOLDS, "provenance": dataclasses.asdict(Provenance()),
                               "intended_use": INTENDED_USE_UNKNOWN}
    assert not any("synthetic" in w for w in result["warnings"])  # nothing says this model saw the phantom
    assert [s["index"] for s in result["slices"]] == [0, 1, 2, 3]
    assert [s["uid"] for s in result["slices"]] == uids  # scan order, not file-name order

    # The numbers: cache resampling, the model, the checkpoint's temperature.
    model = predictor.model
    x = torch.from_numpy(resample_slices(hu, SIZE)).float()[:, None]
    with torch.no_grad():
        expected = torch.sigmoid(model(x) / TEMPERATURE).numpy()
    got = np.array([[s["probabilities"][label] for label in LABELS] for s in result["slices"]])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    for s in result["slices"]:
        assert "intraparenchymal" in s["positive"] and "subdural" not in s["positive"]
        assert ("any" in s["positive"]) == (s["probabilities"]["any"] >= 0.5)
    study_p = [result["study_probabilities"][label] for label in LABELS]
    np.testing.assert_allclose(study_p, got.max(axis=0), atol=1e-9)  # max over slices (multi-label)


def test_no_patient_identifiers_anywhere(checkpoint: Path, tmp_path: Path, write_ct_series: WriteSeries) -> None:
    write_ct_series(tmp_path / "in" / "a")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(out), "--overlays"]) == 0
    text = "".join(p.read_text() for p in out.iterdir() if p.is_file())
    for secret in ("SECRET", "Doe", "Jane", "19700101"):
        assert secret not in text


def test_a_volume_and_its_dicom_give_the_same_probabilities(predictor: Predictor, tmp_path: Path, write_ct_series: WriteSeries) -> None:
    study_uid, uids, hu = write_ct_series(tmp_path / "s", slices=3, size=48)
    from_files = predictor.predict(tmp_path / "s")
    volume = Volume(hu, slice_uids=uids, study_uid=study_uid, series_uid=from_files["slices"][0]["series"])
    assert predictor.predict(volume)["slices"] == from_files["slices"]


def test_many_studies_stream_and_a_bad_one_is_skipped(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, write_ct_series: WriteSeries) -> None:
    root = tmp_path / "studies"
    first, _, _ = write_ct_series(root / "a", slices=3, seed=1)
    second, _, _ = write_ct_series(root / "b", slices=5, size=64, seed=2)
    (root / "broken").mkdir()
    (root / "broken" / "x.dcm").write_bytes(b"not dicom at all")
    out = tmp_path / "out"
    assert main(["predict", str(root), "--model", str(checkpoint), "--out", str(out), "--overlays"]) == 0
    assert sorted(p.name for p in out.glob("*.json")) == sorted([f"{first}.json", f"{second}.json"])
    assert any("broken" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["level"] for r in rows].count("slice") == 8 and [r["level"] for r in rows].count("study") == 2
    study_row = next(r for r in rows if r["level"] == "study" and r["study"] == second)
    saved = json.loads((out / f"{second}.json").read_text())
    assert float(study_row["p_any"]) == saved["study_probabilities"]["any"]
    # Every slice is positive for intraparenchymal (threshold 0): one overlay each, at the slice's own size.
    overlays = sorted((out / "overlays" / second).glob("*_intraparenchymal.png"))
    assert len(overlays) == 5
    assert np.asarray(Image.open(overlays[0])).shape == (64, 64, 3)


def test_png_into_a_hu_model_is_a_clear_error(predictor: Predictor, tmp_path: Path) -> None:
    png = tmp_path / "slice.png"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(png)
    with pytest.raises(InputError, match="8-bit windowed images.*model reads Hounsfield units"):
        predictor.predict(png)


def test_png_slices_group_into_studies_for_a_uint8_model(tmp_path: Path) -> None:
    ckpt = tmp_path / "png-model"
    save_checkpoint(build_model("mobilenetv2", 3, input_kind="uint8"), ckpt, size=SIZE, task="3class",
                    labels=["non-stroke", "hemorrhagic", "ischemic"], label_kind="multiclass")
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p1_002", "p1_001", "p2_001"):
        Image.fromarray(rng.integers(0, 255, (40, 40)).astype(np.uint8)).save(folder / f"{name}.png")
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    results = [r for r in predictor.predict_many(folder)]
    assert sorted(len(r["slices"]) for r in results) == [1, 2]
    for r in results:
        probs = np.array([[s["probabilities"][c] for c in ("non-stroke", "hemorrhagic", "ischemic")] for s in r["slices"]])
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        # multi-class study: the most abnormal slice (lowest non-stroke probability), arg-max decision
        worst = probs[probs[:, 0].argmin()]
        assert list(r["study_probabilities"].values()) == pytest.approx(worst.tolist(), abs=1e-6)
        assert r["study_positive"] == [["non-stroke", "hemorrhagic", "ischemic"][int(worst.argmax())]]


def test_one_study_only_through_predict(predictor: Predictor, tmp_path: Path, write_ct_series: WriteSeries) -> None:
    write_ct_series(tmp_path / "two" / "a", slices=2, seed=1)
    write_ct_series(tmp_path / "two" / "b", slices=2, seed=2)
    with pytest.raises(InputError, match="holds 2 studies"):
        predictor.predict(tmp_path / "two")
    with pytest.raises(InputError, match="no such file"):
        predictor.predict(tmp_path / "missing")
