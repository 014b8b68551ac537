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
    with pytest.raises(InputError, match="records no input window"):
        Predictor.from_checkpoint(tmp_path / "unknown", device="cpu").predict(tmp_path / "study")


# --- several images per row (--path-column brain,bone) --------------------------------------------

PAIR_PATIENTS, PAIR_SLICES = 6, 3


def _by_hand(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """8-bit grey through one window, written out here rather than through headct.windows."""
    low = np.float32(center - width / 2)
    scaled = np.clip((hu.astype(np.float32) - low) / np.float32(width), 0.0, 1.0)
    return np.rint(scaled * np.float32(255.0)).astype(np.uint8)


@pytest.fixture(scope="module")
def pair_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phantom slices as PhysioNet CT-ICH ships them: a brain-window and a bone-window image per slice.
    Brain images are 64 px; bone images are 96x80 (another size, as real sets have), so each is resampled alone."""
    from headct.phantom.generator import generate_study

    root = tmp_path_factory.mktemp("paircsv")
    (root / "img").mkdir()
    lines = ["patient,slice,brain,bone,bleed"]
    for p in range(PAIR_PATIENTS):
        lesions = ("intraparenchymal",) if p % 2 == 0 else ()
        study = generate_study(p, size=64, slices=PAIR_SLICES, lesions=lesions, noise=False)
        for k in range(PAIR_SLICES):
            Image.fromarray(_by_hand(study.hu[k], 40, 80)).save(root / "img" / f"p{p}_{k}_brain.png")
            bone = cv2_resize(_by_hand(study.hu[k], 500, 2000), (80, 96))
            Image.fromarray(bone).save(root / "img" / f"p{p}_{k}_bone.png")
            label = int(bool(study.masks[k].any()))
            lines.append(f"P{p},{k},img/p{p}_{k}_brain.png,img/p{p}_{k}_bone.png,{label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def cv2_resize(image: np.ndarray, width_height: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(image, width_height, interpolation=cv2.INTER_LINEAR)


def _prepare(csv_path: Path, out: Path, columns: str, size: int = 32) -> int:
    from headct.cli import main

    return main(["prepare", str(csv_path), "--format", "csv", "--path-column", columns, "--label-columns", "bleed",
                 "--out", str(out), "--size", str(size), "--fractions", "0.5,0.25,0.25"])


def test_two_path_columns_stack_each_row_as_channels(pair_csv: Path, tmp_path: Path) -> None:
    from headct.data.cache import Cache
    from headct.data.resample import resample_slices

    assert _prepare(pair_csv, tmp_path / "pair", "brain,bone") == 0
    assert _prepare(pair_csv, tmp_path / "brain", "brain") == 0
    pair, brain = Cache(tmp_path / "pair"), Cache(tmp_path / "brain")
    assert pair.channels == 2 and pair.meta["channels"] == ["brain", "bone"] and pair.kind == "uint8"
    assert brain.channels == 1 and "channels" not in brain.meta
    # the index is the one-column cache's, row for row
    assert (tmp_path / "pair" / "index.csv").read_text() == (tmp_path / "brain" / "index.csv").read_text()
    for shard in dict.fromkeys(pair.index["shard"].tolist()):
        stack = np.asarray(pair.series_slices(shard))
        assert stack.shape == (PAIR_SLICES, 2, 32, 32) and stack.dtype == np.uint8
        np.testing.assert_array_equal(stack[:, 0], brain.series_slices(shard))  # channel 0: the brain images
        uids = pair.index["uid"][pair.series_rows(shard)]
        bones = np.stack([np.asarray(Image.open(pair_csv.parent / "img" / f"{u.replace('_brain', '_bone')}.png"))
                          for u in uids])
        assert bones.shape[1:] == (96, 80)
        np.testing.assert_array_equal(stack[:, 1], resample_slices(bones, 32))  # channel 1: bone, padded + resampled
    assert pair.slice(0).shape == (2, 32, 32)


def test_a_bad_second_image_skips_only_its_row(pair_csv: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from headct.data.cache import Cache

    root = tmp_path / "copy"
    shutil.copytree(pair_csv.parent, root)
    (root / "img" / "p1_2_bone.png").write_bytes(b"not a png")  # line 7 of the CSV: P1, slice 2
    lines = (root / "labels.csv").read_text().splitlines()
    lines[10] = lines[10].replace("p3_0_bone.png", "gone.png")  # line 11: P3, slice 0
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        assert _prepare(root / "labels.csv", tmp_path / "cache", "brain,bone") == 0
    cache = Cache(tmp_path / "cache")
    assert len(cache) == PAIR_PATIENTS * PAIR_SLICES - 2
    assert not {"p1_2_brain", "p3_0_brain"} & set(cache.index["uid"].tolist())
    assert {"p1_1_brain", "p3_1_brain"} <= set(cache.index["uid"].tolist())  # their neighbours stay
    text = caplog.text
    assert "labels.csv line 7: bone image: not a readable PNG/JPG image" in text
    assert "labels.csv line 11 (no bone image (row skipped))" in text
    assert "p1_2" not in text and "P1" not in text  # names the row, not the files or the patient
    skipped = json.loads((tmp_path / "cache" / "meta.json").read_text())["summary"]["skipped"]
    assert len(skipped) == 2 and all("line" not in s["file"] for s in skipped)  # hashed on disk


@pytest.fixture(scope="module")
def pair_run(pair_csv: Path, tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two training steps on the brain+bone cache at 64 px; the best checkpoint."""
    from headct.train import train
    from headct.training.config import TrainConfig

    root = tmp_path_factory.mktemp("pairrun")
    assert _prepare(pair_csv, root / "cache", "brain,bone", size=64) == 0
    return train(TrainConfig(data=str(root / "cache"), model=tiny_model, task="bleed", out=str(root / "run"),
                             epochs=1, batch_size=4, max_steps_per_epoch=2, progress=False, tensorboard=False,
                             input_windows="brain,bone"))


def test_a_brain_bone_model_predicts_a_dicom_series_through_both_windows(pair_run: Path, tmp_path: Path,
                                                                         write_ct_series) -> None:
    from headct.checkpoint import load_checkpoint
    from headct.data.resample import resample_slices
    from headct.predict import Predictor

    model, config = load_checkpoint(pair_run)
    assert config.input_windows == ["brain", "bone"] and config.input.image_channels == 2
    _, _, hu = write_ct_series(tmp_path / "study", slices=3, size=40)
    result = Predictor.from_checkpoint(pair_run, device="cpu").predict(tmp_path / "study")
    images = np.stack([_by_hand(hu, 40, 80), _by_hand(hu, 500, 2000)], axis=1)  # [S, 2, 40, 40]
    x = torch.from_numpy(resample_slices(images, 64)).float()
    with torch.no_grad():
        logits = model.eval()(x)[:, 0] / config.applied_temperature
    got = [s["probabilities"]["bleed"] for s in result["slices"]]
    np.testing.assert_allclose(got, torch.sigmoid(logits).numpy(), rtol=1e-5, atol=1e-6)
    assert len(set(np.round(got, 6))) > 1  # the slices differ: not a constant output


def test_mismatched_windows_and_images_are_refused_in_one_line(pair_run: Path, tiny_model: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from headct.cli import main
    from headct.errors import InputError
    from headct.predict import Predictor

    cache = pair_run.parent.parent / "cache"
    assert main(["train", "--data", str(cache), "--model", tiny_model, "--task", "bleed", "--out",
                 str(tmp_path / "run"), "--epochs", "1", "--input-windows", "brain"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names 1 window but the cache holds 2 8-bit images per slice" in err[0]
    assert not (tmp_path / "run").exists()

    (tmp_path / "png").mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "png" / "a_001.png")
    with pytest.raises(InputError, match="one 8-bit image per slice, but the model reads 2 per slice"):
        Predictor.from_checkpoint(pair_run, device="cpu").predict(tmp_path / "png" / "a_001.png")


def test_study_seq_trains_and_evaluates_on_brain_bone_studies(pair_csv: Path, pair_run: Path, tiny_model: str,
                                                              tmp_path: Path) -> None:
    from headct.evaluate import evaluate
    from headct.train import train
    from headct.training.config import TrainConfig

    cache = pair_run.parent.parent / "cache"
    best = train(TrainConfig(data=str(cache), model="study-seq", task="bleed", out=str(tmp_path / "run"), epochs=1,
                             batch_size=2, max_steps_per_epoch=1, progress=False, tensorboard=False,
                             input_windows="brain,bone", augment=True,
                             model_kwargs={"encoder": tiny_model, "hidden": 8, "layers": 1}))
    config = json.loads((best / "config.json").read_text())
    assert config["input"]["image_channels"] == 2 and config["input_windows"] == ["brain", "bone"]
    evaluate(best, cache, tmp_path / "eval", split="test", report=False, n_bootstrap=0)
    with open(tmp_path / "eval" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len([r for r in rows if r["level"] == "slice"]) == PAIR_SLICES * json.loads(
        (cache / "meta.json").read_text())["split"]["n_test"]


def test_path_column_lists_are_checked_and_non_images_skip_their_row(pair_csv: Path, tmp_path: Path) -> None:
    from headct.errors import InputError

    with pytest.raises(InputError, match="no path column 'bonee'"):
        plan_csv(pair_csv, TableColumns(path="brain,bonee"))
    with pytest.raises(InputError, match="names a column twice"):
        plan_csv(pair_csv, TableColumns(path="brain, BRAIN"))
    lines = pair_csv.read_text().splitlines()
    lines[2] = lines[2].replace("img/p0_1_bone.png", "scan.dcm")  # CSV line 3
    (tmp_path / "scan.dcm").write_bytes(b"DICM")
    (tmp_path / "img").symlink_to(pair_csv.parent / "img")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    plan = plan_csv(tmp_path / "labels.csv", TableColumns(path="brain,bone"))
    assert plan.channels == ["brain", "bone"] and plan.kind == "uint8" and plan.label_names == ["bleed"]
    assert sum(len(job.sources) for job in plan.jobs) == PAIR_PATIENTS * PAIR_SLICES - 1
    assert plan.skipped == [{"file": "labels.csv line 3",
                             "reason": "bone image is not a PNG/JPG (several images per row are 8-bit channels; "
                                       "row skipped)"}]
    source = plan.jobs[0].sources[0]
    assert source.reader == "images" and [c for c, _ in source.channels] == ["brain", "bone"]
    uids = {s.uid for job in plan.jobs for s in job.sources}  # each slice named by its first image
    assert "p0_0_brain" in uids and "p0_1_brain" not in uids
