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
    assert set(result) == {"study", "model", "slices", "study_probabilities", "study_positive", "warnings",
                           "series", "gaps"}
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


def test_a_flat_folder_of_studies_is_read_a_study_at_a_time(checkpoint: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             write_ct_series: WriteSeries) -> None:
    """RSNA keeps every slice of every study in one folder: each study is read, predicted and let go
    in turn (never the whole folder at once), with the predictions of study folders read one by one."""
    import headct.predict as predict_module

    apart, flat = tmp_path / "apart", tmp_path / "flat"
    flat.mkdir()
    studies = []
    for number, slices in enumerate((3, 5, 4)):
        uid, _, _ = write_ct_series(apart / f"s{number}", slices=slices, seed=number)
        studies.append(uid)
        for file in (apart / f"s{number}").iterdir():
            (flat / f"s{number}_{file.name}").write_bytes(file.read_bytes())
    (flat / "junk.dcm").write_bytes(b"not dicom at all")  # no study: read (and skipped) once
    reads: list[int] = []
    real = predict_module.read_dicom_files
    monkeypatch.setattr(predict_module, "read_dicom_files",
                        lambda files, *a, **k: reads.append(len(files)) or real(files, *a, **k))

    assert main(["predict", str(flat), "--model", str(checkpoint), "--out", str(tmp_path / "out_flat")]) == 0
    sizes = dict(zip(studies, (3, 5, 4), strict=True))
    first = min(studies)  # the junk file is read (and skipped) with the first study by UID
    assert sorted(reads) == sorted(size + (uid == first) for uid, size in sizes.items())  # a study per read
    assert main(["predict", str(apart), "--model", str(checkpoint), "--out", str(tmp_path / "out_apart")]) == 0
    for uid in studies:
        name = f"{uid}.json"
        assert (tmp_path / "out_flat" / name).read_bytes() == (tmp_path / "out_apart" / name).read_bytes()


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


def test_predict_analyses_the_chosen_series_and_lists_the_rest(checkpoint: Path, tmp_path: Path) -> None:
    from headct.phantom.variety import write_series_variety

    roles = write_series_variety(tmp_path / "in", seed=2, size=64, roles=("thin", "bone", "localizer", "thick"))
    assert main(["predict", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    result = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert {s["series"] for s in result["slices"]} == {roles["thin"]}
    assert [a["series"] for a in result["series"]["analysed"]] == [roles["thin"]]
    assert {r["series"]: r["reason"] for r in result["series"]["rejected"]} == {
        roles["bone"]: "bone_kernel", roles["localizer"]: "localizer", roles["thick"]: "thick"}
    assert result["gaps"] == []
    assert not any("bone/sharp" in w for w in result["warnings"])

    assert main(["predict", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(tmp_path / "all"),
                 "--series", "all"]) == 0
    result = json.loads(next((tmp_path / "all").glob("*.json")).read_text())
    assert {s["series"] for s in result["slices"]} == set(roles.values())
    assert result["series"]["rejected"] == []
    assert any("bone/sharp reconstruction kernel" in w and roles["bone"] in w for w in result["warnings"])


def test_predict_series_rules_from_yaml(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headct.phantom.variety import write_series_variety

    roles = write_series_variety(tmp_path / "in", seed=2, size=64, roles=("thin", "thick"))
    rules = tmp_path / "rules.yaml"
    rules.write_text("thickness_mm: [5, 12]\n")
    assert main(["predict", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(tmp_path / "out"),
                 "--series-rules", str(rules)]) == 0
    result = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert [a["series"] for a in result["series"]["analysed"]] == [roles["thick"]]
    rules.write_text("min_slice: 3\n")
    assert main(["predict", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(tmp_path / "bad"),
                 "--series-rules", str(rules)]) == 1  # the CLI's one line, as for every bad input
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown series rule(s) min_slice" in line
    assert not (tmp_path / "bad").exists()


def test_predict_corrects_a_gantry_tilt_and_says_so(checkpoint: Path, tmp_path: Path) -> None:
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--studies", "1", "--size", "32", "--slices", "12",
                 "--tilt", "12"]) == 0
    assert main(["predict", str(tmp_path / "ph" / "dicom"), "--model", str(checkpoint),
                 "--out", str(tmp_path / "out")]) == 0
    result = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    analysed = result["series"]["analysed"][0]
    assert analysed["tilt_corrected"] is True and analysed["gantry_tilt_deg"] == 12.0
    assert any(w.startswith("gantry tilt 12.0°") for w in result["warnings"])
    assert len(result["slices"]) == 12


def _retag_study_uid(folder: Path, study_uid: str) -> None:
    """Rewrite every file's StudyInstanceUID (pydicom warns on an invalid UI value; the file is still written)."""
    import warnings

    import pydicom

    for file in folder.glob("*.dcm"):
        ds = pydicom.dcmread(file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.StudyInstanceUID = study_uid
        ds.save_as(file)


@pytest.mark.parametrize("hostile", ["../../ESCAPED", "/tmp/headct-absolute-ESCAPED", "1." * 150 + "1"])
def test_hostile_study_uids_stay_inside_out(checkpoint: Path, tmp_path: Path, write_ct_series: WriteSeries,
                                            hostile: str) -> None:
    from headct.io.privacy import short_hash
    from headct.predict import output_name

    work = tmp_path / "a" / "b"
    write_ct_series(work / "in" / "study", slices=2)
    _retag_study_uid(work / "in" / "study", hostile)
    out = work / "out"
    before = {p for p in tmp_path.rglob("*")}
    assert main(["predict", str(work / "in"), "--model", str(checkpoint), "--out", str(out), "--overlays"]) == 0
    name = short_hash(hostile)
    assert output_name(hostile) == name and len(name) == 16
    assert json.loads((out / f"{name}.json").read_text())["study"] == hostile  # the contract keeps the UID
    assert (out / "overlays" / name).is_dir()  # every slice is positive for intraparenchymal
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == out or out in p.parents for p in new)
    assert not Path("/tmp/headct-absolute-ESCAPED").exists() and not Path("/tmp/headct-absolute-ESCAPED.json").exists()
    assert not list(tmp_path.rglob("ESCAPED*"))


def test_output_names() -> None:
    from headct.predict import output_name

    assert output_name("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    for bad in ("..", ".", "1..2", "1.2.", "", "1" * 65, "a/b", "1.2/3"):
        name = output_name(bad)
        assert name != bad and len(name) == 16 and set(name) <= set("0123456789abcdef")


def test_predict_streams_its_table_and_resumes(checkpoint: Path, tmp_path: Path, write_ct_series: WriteSeries,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "in"
    uids = [write_ct_series(root / name, slices=2, seed=i)[0] for i, name in enumerate("abc")]
    out = tmp_path / "out"
    argv = ["predict", str(root), "--model", str(checkpoint), "--out", str(out)]
    assert main(argv) == 0
    assert f"3 studies → {out.resolve()}/" in capsys.readouterr().out
    first = (out / "predictions.csv").read_text()
    # A run killed before the second study's JSON (and with a stray half row) is put right by the rerun.
    (out / f"{uids[1]}.json").unlink()
    (out / "predictions.csv").write_text(first + "slice,half-writ")
    stamp = {u: (out / f"{u}.json").stat().st_mtime_ns for u in (uids[0], uids[2])}
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "1 study → " in said and "2 already there (resumed)" in said
    assert {u: (out / f"{u}.json").stat().st_mtime_ns for u in (uids[0], uids[2])} == stamp  # not redone
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert sorted(r["study"] for r in rows if r["level"] == "study") == sorted(uids)
    assert len(rows) == 3 * 3 and "half-writ" not in (out / "predictions.csv").read_text()
    assert sorted(first.splitlines()) == sorted((out / "predictions.csv").read_text().splitlines())
    # --no-resume redoes every study
    assert main([*argv, "--no-resume"]) == 0
    assert "3 studies → " in capsys.readouterr().out
    assert all((out / f"{u}.json").stat().st_mtime_ns > stamp[u] for u in stamp)


def test_skipped_files_are_one_warning_per_study(checkpoint: Path, tmp_path: Path, write_ct_series: WriteSeries) -> None:
    folder = tmp_path / "in"
    write_ct_series(folder, slices=2)
    for i in range(5):
        (folder / f"junk{i}.dcm").write_bytes(b"not dicom")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", str(checkpoint), "--out", str(out)]) == 0
    (result,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    # each skipped file is named once in the log (tests/test_predict_badfiles.py), never in a study
    assert [w for w in result["warnings"] if "skipped" in w or "junk" in w] == []
    assert "junk" not in json.dumps(result)


def test_nothing_predicted_says_so(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.dcm").write_bytes(b"not dicom")
    assert main(["predict", str(folder), "--model", str(checkpoint), "--out", str(tmp_path / "out")]) == 1
    assert "no study predicted (1 input(s) skipped" in capsys.readouterr().out


def test_a_missing_input_is_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-study"
    assert main(["predict", str(missing), "--model", str(checkpoint), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"headct predict: {missing}: no such file or folder"]
    assert not (tmp_path / "out").exists()


def test_the_fast_cpu_runtimes_give_eager_fp32_probabilities_on_a_phantom_series(tmp_path: Path) -> None:
    """The frozen TorchScript graph and onnxruntime (the CPU defaults) against eager fp32 torch: within 1e-4."""
    from headct.checkpoint import load_checkpoint
    from headct.inference import prepare_for_inference
    from headct.phantom.dataset import PhantomConfig, write_phantom
    from headct.predict import read_studies
    from headct.tasks import RSNA_LABELS

    write_phantom(PhantomConfig(out=tmp_path / "phantom", studies=1, size=64, slices=8, seed=3, difficulty=0.0))
    (study,) = read_studies(next((tmp_path / "phantom" / "dicom").iterdir()))
    torch.manual_seed(0)
    model = build_model("effnet-2d", len(RSNA_LABELS))
    with torch.no_grad():  # trained-like BatchNorm statistics, so the folded graph is really compared
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    checkpoint = save_checkpoint(model, tmp_path / "ckpt", size=48, task="rsna", labels=list(RSNA_LABELS),
                                 label_kind="multilabel", temperature=1.3)
    eager_model, config = load_checkpoint(checkpoint)
    eager = Predictor(prepare_for_inference(eager_model, "cpu", amp=None, freeze=False), config)
    frozen = Predictor.from_checkpoint(checkpoint, device="cpu")
    onnx = Predictor.from_checkpoint(checkpoint, runtime="onnx", threads=1)
    (volume,) = study.volumes
    reference, _ = eager.volume_probabilities(volume)
    assert reference.shape == (8, len(RSNA_LABELS)) and reference.std() > 1e-3  # outputs that vary
    for predictor in (frozen, onnx):
        probabilities, _ = predictor.volume_probabilities(volume)
        np.testing.assert_allclose(probabilities, reference, atol=1e-4, rtol=0)
    assert frozen.model.freeze and onnx.batch_size == 8
