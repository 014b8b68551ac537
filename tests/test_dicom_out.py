"""DICOM results: the TID 1500 SR and the Grad-CAM secondary captures, read back and validated."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from headct import dicom_out
from headct.checkpoint import Provenance
from headct.cli import main
from headct.errors import InputError
from headct.predict import Predictor, read_studies


@pytest.fixture(scope="module")
def predicted(dicom_checkpoint: Path, bleed_study: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``headct predict --dicom-out`` on the bleed study: the JSON result and the DICOM files it wrote."""
    import json

    out = tmp_path_factory.mktemp("predicted")
    code = main(["predict", str(bleed_study), "--model", str(dicom_checkpoint), "--out", str(out / "json"),
                 "--dicom-out", str(out / "dicom")])
    assert code == 0
    (result_file,) = (out / "json").glob("1.*.json")
    files = sorted((out / "dicom").rglob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    return {"result": json.loads(result_file.read_text()), "files": files,
            "sr": [d for d in datasets if d.Modality == "SR"], "sc": [d for d in datasets if d.Modality != "SR"]}


RSNA_LABELS = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
DICOM_THRESHOLDS = {label: (0.0 if label in ("intraparenchymal", "any") else 1.0) for label in RSNA_LABELS}
"""As tests/conftest.py's dicom_checkpoint freezes them (test_thresholds_are_the_fixtures checks)."""


def test_thresholds_are_the_fixtures(dicom_checkpoint: Path) -> None:
    assert Predictor.from_checkpoint(dicom_checkpoint, device="cpu").thresholds == DICOM_THRESHOLDS


def source_uids(folder: Path) -> tuple[str, str, set[str], str]:
    """Study UID, series UID, SOP instance UIDs and PatientID of a phantom series folder."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in folder.glob("*.dcm")]
    return (headers[0].StudyInstanceUID, headers[0].SeriesInstanceUID, {h.SOPInstanceUID for h in headers},
            headers[0].PatientID)


def test_report_states_the_finding_probabilities_and_references(predicted: dict, bleed_study: Path) -> None:
    study_uid, series_uid, instances, patient_id = source_uids(bleed_study)
    (sr,) = predicted["sr"]
    result = predicted["result"]
    report = dicom_out.read_report(sr)
    assert report["study"] == study_uid == sr.StudyInstanceUID
    assert report["series"] == [series_uid]
    assert sr.SeriesInstanceUID != series_uid and sr.PatientID == patient_id  # patient module copied, new series
    assert set(report["findings"]) == set(RSNA_LABELS)
    for label in RSNA_LABELS:
        finding = report["findings"][label]
        assert finding["present"] == (label in ("intraparenchymal", "any"))
        assert finding["probability"] == pytest.approx(result["study_probabilities"][label])
        assert finding["threshold"] == DICOM_THRESHOLDS[label]
        assert set(finding["instances"]) == instances
    assert f"analysed series {series_uid}" in report["parameters"]
    assert "decision=probability >= threshold per label" in report["parameters"]
    assert "temperature=1" in report["parameters"]


def test_captures_show_positive_slices_in_a_new_series_of_the_study(predicted: dict, bleed_study: Path) -> None:
    study_uid, series_uid, instances, _ = source_uids(bleed_study)
    (sr,) = predicted["sr"]
    captures = predicted["sc"]
    # every slice is positive for 2 labels; at most MAX_OVERLAYS_PER_LABEL of each are drawn
    assert len(captures) == 2 * dicom_out.MAX_OVERLAYS_PER_LABEL
    assert {c.SeriesInstanceUID for c in captures} != {series_uid, sr.SeriesInstanceUID}
    assert len({c.SeriesInstanceUID for c in captures}) == 1
    for capture in captures:
        assert capture.StudyInstanceUID == study_uid
        assert capture.BurnedInAnnotation == "YES" and capture.PhotometricInterpretation == "RGB"
        assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID in instances
        assert "RESEARCH USE ONLY" in capture.ImageComments
        pixels = capture.pixel_array
        assert pixels.shape[1] >= 384 and pixels.shape[2] == 3
        band = pixels[-40:]
        assert ((band[..., 0] > 200) & (band[..., 2] < 50)).sum() > 50  # yellow legend text burned in
    labels = sorted(c.ImageComments.split(":")[0] for c in captures)
    assert labels == sorted(["any", "intraparenchymal"] * dicom_out.MAX_OVERLAYS_PER_LABEL)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(predicted: dict) -> None:
    for path in predicted["files"]:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        lines = (run.stdout + run.stderr).splitlines()
        assert not [line for line in lines if line.startswith("Error")], lines
        # the only warnings allowed: the private coding scheme of labels with no SNOMED code
        assert all("99HEADCT" in line for line in lines if line.startswith("Warning")), lines


def test_same_prediction_gives_the_same_uids_and_rejected_series_are_named(predicted: dict,
                                                                           dicom_checkpoint: Path,
                                                                           bleed_study: Path) -> None:
    result = dict(predicted["result"])
    result["series"] = {"analysed": [], "rejected": [{"series": "1.2.3", "reason": "bone_kernel", "detail": "BONE"}]}
    headers = dicom_out.source_headers(bleed_study, [s["uid"] for s in result["slices"]])
    config = Predictor.from_checkpoint(dicom_checkpoint, device="cpu").config
    first, second = (dicom_out.build_report(result, config, headers) for _ in range(2))
    assert first.SOPInstanceUID == second.SOPInstanceUID == predicted["sr"][0].SOPInstanceUID
    assert "rejected series 1.2.3: bone_kernel (BONE)" in dicom_out.read_report(first)["parameters"]


def test_no_dicom_source_is_one_clear_error(dicom_checkpoint: Path, bleed_study: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(dicom_checkpoint, device="cpu")
    (study,) = read_studies(bleed_study)
    result = predictor.predict_study(study)
    study.source = str(tmp_path)  # the files are gone
    with pytest.raises(InputError, match="DICOM output needs DICOM input"):
        dicom_out.study_datasets(predictor, study, result)


def test_legend_band_sits_below_the_image() -> None:
    rgb = np.full((64, 64, 3), 7, np.uint8)
    drawn = dicom_out.with_legend(rgb, ["any: p=0.90", dicom_out.RESEARCH_NOTICE])
    assert drawn.shape[1] == 384 and drawn.shape[0] > 384
    assert (drawn[:384] == 7).all()  # the image itself, scaled 6x, untouched
    assert drawn[384:].any()


def test_serve_answers_the_dicom_results_as_a_zip(dicom_checkpoint: Path, bleed_study: Path,
                                                  predicted: dict) -> None:
    import io
    import zipfile

    from fastapi.testclient import TestClient

    from headct.serve import create_app

    client = TestClient(create_app(Predictor.from_checkpoint(dicom_checkpoint, device="cpu")))
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(bleed_study.iterdir())]
    answer = client.post("/v1/predict/dicom", files=files)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        datasets = [pydicom.dcmread(io.BytesIO(archive.read(name))) for name in archive.namelist()]
    (sr,) = [d for d in datasets if d.Modality == "SR"]
    assert dicom_out.read_report(sr) == dicom_out.read_report(predicted["sr"][0])
    assert len(datasets) == len(predicted["files"])
    bad = client.post("/v1/predict/dicom", files=[("files", ("x.dcm", b"not dicom at all", "application/dicom"))])
    assert bad.status_code in (415, 422) and "upload" in bad.text


def test_stroke_classes_provenance_and_codes(predicted: dict, bleed_study: Path, dicom_checkpoint: Path) -> None:
    slices = [{**s, "probabilities": {"non-stroke": 0.2, "stroke": 0.8}, "positive": ["stroke"]}
              for s in predicted["result"]["slices"]]
    result = {"study": predicted["result"]["study"], "slices": slices,
              "model": {"name": "strokenext-t", "version": "9.9", "labels": ["non-stroke", "stroke"],
                        "thresholds": {"non-stroke": 0.5, "stroke": 0.5}},
              "study_probabilities": {"non-stroke": 0.25, "stroke": 0.75}, "study_positive": ["stroke"]}
    config = dataclasses.replace(Predictor.from_checkpoint(dicom_checkpoint, device="cpu").config,
                                 temperature=1.5, label_kind="multiclass",
                                 provenance=Provenance(source_format="png-folders", synthetic=False, n_studies=120))
    headers = dicom_out.source_headers(bleed_study, [s["uid"] for s in slices])
    sr = dicom_out.build_report(result, config, headers)
    report = dicom_out.read_report(sr)
    assert {k: (v["present"], v["probability"], v["threshold"]) for k, v in report["findings"].items()} == {
        "non-stroke": (False, 0.25, None), "stroke": (True, 0.75, None)}  # arg-max: no threshold decides
    assert "decision=arg-max over the classes" in report["parameters"]
    assert 'provenance={"n_studies": 120, "source_format": "png-folders", "synthetic": false}' in report["parameters"]
    assert "temperature=1.5" in report["parameters"]
    group = sr.ContentSequence[-1].ContentSequence[-1]  # the last measurement group: "stroke"
    codes_used = {(c.ConceptCodeSequence[0].CodeValue, c.ConceptCodeSequence[0].CodingSchemeDesignator)
                  for c in group.ContentSequence if c.ValueType == "CODE"}
    assert ("230690007", "SCT") in codes_used  # SNOMED CT "Cerebrovascular accident" as the finding type
    assert sr.SOPInstanceUID != predicted["sr"][0].SOPInstanceUID  # another model, another report


@pytest.mark.parametrize(("cosines", "expected"), [
    ([1, 0, 0, 0, 1, 0], ("L", "P")),        # axial, as scanners write it
    ([-1, 0, 0, 0, -1, 0], ("R", "A")),      # axial, flipped both ways
    ([0, 1, 0, 0, 0, -1], ("P", "F")),       # sagittal
    ([0.98, 0.17, 0, -0.17, 0.98, 0], ("L", "P")),  # a slightly rotated axial
])
def test_patient_orientation_follows_the_slice(cosines: list[float], expected: tuple[str, str]) -> None:
    ref = pydicom.Dataset()
    ref.ImageOrientationPatient = cosines
    assert dicom_out.patient_orientation(ref) == expected
    assert dicom_out.patient_orientation(pydicom.Dataset()) == ("L", "P")  # no orientation: the axial default
