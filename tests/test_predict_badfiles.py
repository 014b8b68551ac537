"""Issue 12, done when: 10 good slices plus any one bad entry → `headct predict` finishes, the good study's
prediction equals the prediction without the bad entry, no skipped file is named in the outputs, and
nothing is written outside --out."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from headct.checkpoint import save_checkpoint
from headct.cli import main
from headct.models import build_model
from headct.predict import Predictor

SIZE = 32
LABELS = ["intraparenchymal", "any"]
READABLE = {"instance_inf", "instance_nan"}  # read with a warning: a study of their own


@pytest.fixture(scope="module")
def setup(tmp_path_factory, write_ct_series) -> dict:
    """One checkpoint, loaded once; 10 good slices; their prediction without any bad entry beside them."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("predict-bad")
    save_checkpoint(build_model("mobilenetv2", len(LABELS)), root / "model", size=SIZE, task=",".join(LABELS),
                    labels=LABELS, label_kind="multilabel", thresholds={"intraparenchymal": 0.5, "any": 0.5},
                    temperature=1.0)
    predictor = Predictor.from_checkpoint(root / "model", device="cpu")
    study_uid, uids, _ = write_ct_series(root / "good", slices=10, size=SIZE)
    return {"model": root / "model", "predictor": predictor, "good": root / "good", "study": study_uid,
            "uids": uids, "clean": predictor.predict(root / "good")}


def test_predict_finishes_and_the_good_study_is_unchanged(tmp_path, monkeypatch, setup, bad_kind,
                                                          bad_dicom, snapshot_outside) -> None:
    study = tmp_path / "in" / "study"
    shutil.copytree(setup["good"], study)
    bad_dicom(study, bad_kind, study / "IM000.dcm")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: setup["predictor"]))
    before = snapshot_outside(tmp_path, out)

    assert main(["predict", str(tmp_path / "in"), "--model", str(setup["model"]), "--out", str(out)]) == 0

    assert snapshot_outside(tmp_path, out) == before
    result = json.loads((out / f"{setup['study']}.json").read_text())
    assert result == setup["clean"]  # same slices, numbers and warnings as without the bad entry
    assert [s["uid"] for s in result["slices"]] == setup["uids"]
    studies = sorted(p.name for p in out.glob("*.json"))
    assert len(studies) == (2 if bad_kind in READABLE else 1)
    for path in out.rglob("*"):
        if path.is_file():
            assert "bad.dcm" not in path.read_text() and str(tmp_path) not in path.read_text()


def test_a_skipped_file_is_logged_once_and_named_in_no_study(tmp_path, monkeypatch, setup, bad_dicom,
                                                             write_ct_series, caplog) -> None:
    folder = tmp_path / "flat"  # one folder holding two studies and one bad file
    shutil.copytree(setup["good"], folder)
    other_uid, _, _ = write_ct_series(folder / "other", slices=3, size=SIZE)
    bad_dicom(folder, "not_dicom", folder / "IM000.dcm")
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: setup["predictor"]))

    assert main(["predict", str(folder), "--model", str(setup["model"]), "--out", str(tmp_path / "out")]) == 0

    for uid in (setup["study"], other_uid):
        result = json.loads((tmp_path / "out" / f"{uid}.json").read_text())
        assert not any("bad.dcm" in w or "DICM" in w for w in result["warnings"])
    named = [r.getMessage() for r in caplog.records if "bad.dcm" in r.getMessage()]
    assert named == [f"{folder / 'bad.dcm'}: not a DICOM file (no DICM preamble or readable header)"]
