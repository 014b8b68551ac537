"""CSV datasets of 8-bit slices: studies from the study/patient and slice columns, study-level models
train and evaluate on them, and the checkpoint's input window lets predict read a DICOM series."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headct.data.tabular import TableColumns, plan_csv

SLICES = 5


@pytest.fixture(scope="module")
def png_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 patients, one study of 5 brain-window PNG slices each, listed out of order; even studies bleed."""
    root = tmp_path_factory.mktemp("pngcsv")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,patient,study,slice,bleed"]
    for s in range(12):
        for k in reversed(range(SLICES)):  # the slice column, not the CSV order, sets scan order
            grey = rng.integers(20, 60, (32, 32)).astype(np.uint8)
            label = int(s % 2 == 0 and 1 <= k <= 3)
            if label:
                grey[10:16, 10:16] = 200
            Image.fromarray(grey).save(root / "img" / f"s{s}_{k}.png")
            lines.append(f"img/s{s}_{k}.png,P{s},S{s},{k},{label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_rows_group_into_studies_in_slice_order(png_csv: Path) -> None:
    plan = plan_csv(png_csv, TableColumns())
    assert len(plan.jobs) == 12 and plan.kind == "uint8" and plan.label_names == ["bleed"]
    job = next(j for j in plan.jobs if j.study == "S0")
    assert [Path(s.name).stem for s in job.sources] == [f"s0_{k}" for k in range(SLICES)]
    assert [s.labels for s in job.sources] == [(0,), (1,), (1,), (1,), (0,)]
    assert len({j.patient for j in plan.jobs}) == 12 and all(j.patient and "P" not in j.patient for j in plan.jobs)


@pytest.fixture(scope="module")
def png_cache(png_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headct.cli import main

    out = tmp_path_factory.mktemp("pngcache") / "cache"
    assert main(["prepare", str(png_csv), "--format", "csv", "--out", str(out), "--size", "32",
                 "--fractions", "0.6,0.2,0.2"]) == 0
    return out


@pytest.mark.parametrize("model", ["effnet-lstm", "study-seq"])
def test_study_context_models_train_and_evaluate_on_8bit_studies(png_cache: Path, tiny_model: str, model: str,
                                                                 tmp_path: Path) -> None:
    from headct.evaluate import evaluate
    from headct.train import train
    from headct.training.config import TrainConfig

    kwargs = {"hidden": 8} if model == "effnet-lstm" else {"encoder": tiny_model, "hidden": 8, "layers": 1}
    best = train(TrainConfig(data=str(png_cache), model=model, task="bleed", out=str(tmp_path / "run"), epochs=1,
                             batch_size=4, max_steps_per_epoch=1, progress=False, tensorboard=False,
                             model_kwargs=kwargs))
    config = json.loads((best / "config.json").read_text())
    assert config["input"]["kind"] == "uint8" and config["input_windows"] == ["brain"]
    evaluate(best, png_cache, tmp_path / "eval", split="test", report=False, n_bootstrap=0)
    with open(tmp_path / "eval" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    studies = [r for r in rows if r["level"] == "study"]
    test_split = json.loads((png_cache / "meta.json").read_text())["split"]["n_test"]
    assert len(studies) == test_split and len(rows) == test_split * (SLICES + 1)


def test_predict_windows_a_dicom_series_for_an_8bit_model(tmp_path: Path, write_ct_series) -> None:
    from headct.checkpoint import save_checkpoint
    from headct.data.resample import resample_slices
    from headct.errors import InputError
    from headct.models import build_model
    from headct.predict import Predictor
    from headct.windows import to_uint8

    torch.manual_seed(0)
    model = build_model("mobilenetv2", 1, input_kind="uint8")
    common = {"size": 32, "task": "bleed", "labels": ["bleed"], "label_kind": "multilabel", "temperature": 1.0}
    save_checkpoint(model, tmp_path / "windowed", input_windows=["brain"], **common)
    save_checkpoint(model, tmp_path / "unknown", **common)
    _, _, hu = write_ct_series(tmp_path / "study", slices=3, size=40)

    result = Predictor.from_checkpoint(tmp_path / "windowed", device="cpu").predict(tmp_path / "study")
    x = torch.from_numpy(resample_slices(to_uint8(hu, "brain"), 32)).float()[:, None]
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(x))[:, 0].numpy()
    got = [s["probabilities"]["bleed"] for s in result["slices"]]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="records no single input window"):
        Predictor.from_checkpoint(tmp_path / "unknown", device="cpu").predict(tmp_path / "study")
