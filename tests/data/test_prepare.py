"""End-to-end cache builds for each format, checked by value; bad input; resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headct.cli import main
from headct.data.cache import Cache
from headct.data.prepare import PrepareConfig, prepare
from headct.data.tabular import TableColumns
from headct.errors import InputError
from headct.io.privacy import short_hash
from headct.tasks import RSNA_LABELS

SUBTYPES = RSNA_LABELS


def _rsna_input(root: Path, write_ct, hu_slice) -> dict:
    """4 patients (P0 has two studies), 4 slices per series written in reverse scan order, and faults."""
    rows = ["ID,Label"]
    expected = {}
    for study_no, patient in enumerate(["P0", "P0", "P1", "P2", "P3"]):
        study = f"1.2.826.0.{study_no}"
        for k in range(4):
            # study 0 uses the real RSNA convention: SOPInstanceUID is itself "ID_<hex>"
            sop = f"ID_{study_no:02d}{k:02d}abc" if study_no == 0 else f"{study}.1.{k}"
            hu = 100 + 10 * k + study_no
            write_ct(root / f"s{study_no}" / f"{3 - k}.dcm", hu_slice(hu), sop=sop, series=f"{study}.1",
                     study=study, patient=patient, z=5.0 * k)
            if (study_no, k) == (4, 3):
                continue  # an image without labels
            positive = study_no == 2 and k == 1
            image_id = sop if sop.startswith("ID_") else f"ID_{sop}"
            rows += [f"{image_id}_{sub},{int(positive and sub in ('subdural', 'any'))}" for sub in SUBTYPES]
            expected[sop] = (hu, positive)
    rows += [f"ID_1.2.3.missing_{sub},0" for sub in SUBTYPES]  # a label row without an image
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    # faults: not DICOM, truncated, no pixel data, not CT, odd size in a series
    (root / "bad").mkdir()
    (root / "bad" / "notes.dcm").write_text("not a dicom file")
    good = write_ct(root / "bad" / "full.dcm", hu_slice(0), sop="9.9.1", series="9.9", study="9.9.0",
                    patient="P9", z=0)
    data = good.read_bytes()
    (root / "bad" / "truncated.dcm").write_bytes(data[: len(data) - 3000])
    good.unlink()
    nopix = write_ct(root / "bad" / "nopixels.dcm", hu_slice(0), sop="9.9.2", series="9.8", study="9.9.0",
                     patient="P9", z=0)
    import pydicom

    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(nopix)
    write_ct(root / "bad" / "mr.dcm", hu_slice(0), sop="9.9.3", series="9.7", study="9.9.0", patient="P9",
             z=0, modality="MR")
    write_ct(root / "s1" / "odd.dcm", hu_slice(500, size=48), sop="1.2.826.0.1.1.99", series="1.2.826.0.1.1",
             study="1.2.826.0.1", patient="P0", z=50.0)
    # lesion masks for study 3: bit 16 (subdural) in the centre square of its slice k=2
    masks = np.zeros((4, 64, 64), np.uint8)
    masks[2, 16:48, 16:48] = 16
    (root / "masks").mkdir()
    np.savez(root / "masks" / "1.2.826.0.3.npz", uids=np.array([f"1.2.826.0.3.1.{k}" for k in range(4)]),
             masks=masks)
    return expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the RSNA 'ID_<hex>' UIDs, on writing
def test_rsna_cache_by_value(tmp_path, ct_writer, hu_slice):
    expected = _rsna_input(tmp_path / "in", ct_writer, hu_slice)
    result = prepare(PrepareConfig(input=str(tmp_path / "in"), format="rsna", out=str(tmp_path / "cache"), size=32))
    cache = Cache(tmp_path / "cache")
    index = cache.index
    assert len(cache) == 20 and result.studies == 5 and result.series == 5
    assert cache.labels == list(SUBTYPES) and cache.kind == "hu" and cache.size == 32
    for row in range(len(cache)):
        uid = index["uid"][row]
        hu, positive = expected.get(uid, (None, None))
        if hu is None:  # the unlabeled slice
            assert uid == "1.2.826.0.4.1.3"
            assert (cache.label_matrix[row] == -1).all()
            continue
        assert cache.slice(row)[16, 16] == hu  # constant square survives antialiased resampling exactly
        assert cache.slice(row)[0, 0] == -1000
        assert cache.label_matrix[row, SUBTYPES.index("subdural")] == int(positive)
        assert cache.label_matrix[row, SUBTYPES.index("any")] == int(positive)
        assert cache.label_matrix[row, SUBTYPES.index("epidural")] == 0
    # scan order within a series follows the position, not the file names
    rows0 = cache.series_rows(index["shard"][0])
    np.testing.assert_array_equal(index["slice_index"][rows0], [0, 1, 2, 3])
    np.testing.assert_array_equal([cache.slice(r)[16, 16] for r in rows0], [100, 110, 120, 130])
    # split consistent per patient, by patient
    sides = {}
    for patient, side in zip(index["patient"], index["split"], strict=True):
        assert sides.setdefault(patient, side) == side
    assert cache.meta["split"]["how"] == "patient" and len(sides) == 4
    assert "P0" not in index["patient"]  # hashed, never raw
    # masks: resampled nearest, same key as the shard
    assert cache.has_masks
    row = int(np.flatnonzero(index["uid"] == "1.2.826.0.3.1.2")[0])
    assert cache.mask(row)[16, 16] == 16 and cache.mask(row)[0, 0] == 0
    other = int(np.flatnonzero(index["uid"] == "1.2.826.0.3.1.1")[0])
    assert cache.mask(other).max() == 0
    assert cache.mask(0) is None  # study 0 has no mask file
    # every fault: one entry with its reason (the file as a hash of its name); the run went on
    summary = cache.meta["summary"]
    reasons = {item["file"]: item["reason"] for item in summary["skipped"]}
    assert reasons[short_hash("bad/notes.dcm")].startswith("not a DICOM file")
    assert "truncated" in reasons[short_hash("bad/truncated.dcm")]
    assert "pixel data" in reasons[short_hash("bad/nopixels.dcm")]
    assert "MR" in reasons[short_hash("bad/mr.dcm")]
    assert "48x48" in reasons[short_hash("s1/odd.dcm")]
    assert len(summary["skipped"]) == 5
    assert summary["unlabeled_slices"] == 1 and summary["labels_without_images"] == 1
    assert summary["studies"] == 5 and summary["slices"] == 20
    np.testing.assert_array_equal(np.load(tmp_path / "cache" / "shards" / f"{index['shard'][0]}.npy",
                                          mmap_mode="r").shape, (4, 32, 32))


def _png_input(root: Path) -> None:
    """Study s1 spans three class folders; 'lone.png' is a study of its own; faults beside them."""
    layout = {"non-stroke": [("s1_000", 10), ("s1_001", 20), ("s2_000", 60), ("lone", 70)],
              "hemorrhagic": [("s1_002", 30), ("s2_001", 80)],
              "ischemic": [("s1_003", 40)]}
    for folder, files in layout.items():
        (root / folder).mkdir(parents=True)
        for stem, grey in files:
            image = np.zeros((64, 64), np.uint8)
            image[16:48, 16:48] = grey
            Image.fromarray(image).save(root / folder / f"{stem}.png")
    (root / "hemorrhagic" / "s9_000.png").write_bytes(b"\x89PNG broken")
    (root / "other").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "other" / "x_000.png")


def test_png_folders_cache_by_value(tmp_path):
    _png_input(tmp_path / "in")
    prepare(PrepareConfig(input=str(tmp_path / "in"), format="png-folders", out=str(tmp_path / "c"), size=32))
    cache = Cache(tmp_path / "c")
    index = cache.index
    assert cache.kind == "uint8" and cache.labels == ["non-stroke", "hemorrhagic", "ischemic"]
    s1 = cache.series_rows(str(index["shard"][index["study"] == "s1"][0]))
    np.testing.assert_array_equal(index["uid"][s1], ["s1_000", "s1_001", "s1_002", "s1_003"])
    np.testing.assert_array_equal([cache.slice(r)[16, 16] for r in s1], [10, 20, 30, 40])
    np.testing.assert_array_equal(cache.label_matrix[s1], [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert cache.slice(int(s1[0])).dtype == np.uint8
    assert sorted(set(index["study"])) == ["lone", "s1", "s2"]
    assert cache.meta["split"]["how"] == "study"
    for study in set(index["study"]):
        assert len(set(index["split"][index["study"] == study])) == 1
    reasons = {item["file"]: item["reason"] for item in cache.meta["summary"]["skipped"]}
    assert reasons[short_hash("other/x_000.png")] == "folder not in the class map"
    assert reasons[short_hash("hemorrhagic/s9_000.png")].startswith(
        "not a readable PNG/JPG image (PIL.UnidentifiedImageError: cannot identify image file the file")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_parallel_build_matches_serial(tmp_path, ct_writer, hu_slice):
    _rsna_input(tmp_path / "in", ct_writer, hu_slice)
    for workers, out in ((1, "serial"), (2, "parallel")):
        prepare(PrepareConfig(input=str(tmp_path / "in"), format="rsna", out=str(tmp_path / out),
                              size=32, workers=workers))
    assert (tmp_path / "serial" / "index.csv").read_text() == (tmp_path / "parallel" / "index.csv").read_text()
    serial, parallel = Cache(tmp_path / "serial"), Cache(tmp_path / "parallel")
    for shard in set(serial.index["shard"]):
        np.testing.assert_array_equal(serial.series_slices(shard), parallel.series_slices(shard))
    assert serial.meta["summary"]["skipped"] == parallel.meta["summary"]["skipped"]


def test_csv_cache_by_value(tmp_path):
    root = tmp_path / "in"
    (root / "img").mkdir(parents=True)
    lines = ["image,Patient,slice,bleed,fracture"]
    for patient, count in (("anna", 3), ("ben", 2), ("cem", 1)):
        for s in range(count):
            grey = 50 + 10 * s
            image = np.full((40, 64), grey, np.uint8)  # not square: padded with black, aspect kept
            Image.fromarray(image).save(root / "img" / f"{patient}{s}.png")
            lines.append(f"img/{patient}{s}.png,{patient},{count - s},{int(s == 0)},{'yes' if patient == 'ben' else ''}")
    lines.append("img/gone.png,cem,9,1,0")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    prepare(PrepareConfig(input=str(root / "list.csv"), format="csv", out=str(tmp_path / "c"), size=32))
    cache = Cache(tmp_path / "c")
    index = cache.index
    assert cache.labels == ["bleed", "fracture"]
    assert cache.meta["split"]["how"] == "patient" and len(cache) == 6
    anna = cache.series_rows(str(index["shard"][index["uid"] == "anna0"][0]))
    np.testing.assert_array_equal(index["uid"][anna], ["anna2", "anna1", "anna0"])  # slice column order
    np.testing.assert_array_equal(cache.label_matrix[anna], [[0, -1], [0, -1], [1, -1]])
    row = int(anna[2])
    assert cache.slice(row)[16, 16] == 50 and cache.slice(row)[0, 16] == 0  # padding rows are black
    ben = index["uid"] == "ben0"
    assert cache.label_matrix[ben, 1][0] == 1
    assert {"anna", "ben", "cem"}.isdisjoint(set(index["patient"]) | set(index["study"]))
    reasons = {item["file"]: item["reason"] for item in cache.meta["summary"]["skipped"]}
    assert reasons == {short_hash("img/gone.png"): "label row for a missing image"}


def test_nifti_cache_by_value(tmp_path):
    import nibabel as nib

    root = tmp_path / "in"
    (root / "ct_scans").mkdir(parents=True)
    (root / "masks").mkdir()
    values = np.array([[100, 200, 300], [400, 500, 600]])
    for patient, affine_z in ((49, 5.0), (50, -5.0)):  # 050 is stored head first
        volume = np.full((64, 64, 3), -1000, np.int16)
        for k in range(3):
            volume[16:48, 16:48, k] = values[patient - 49, k]
        affine = np.diag([0.5, 0.5, affine_z, 1.0])
        nib.save(nib.Nifti1Image(volume, affine), root / "ct_scans" / f"0{patient}.nii")
        nib.save(nib.Nifti1Image(np.zeros((64, 64, 3), np.uint8), affine), root / "masks" / f"0{patient}.nii")
    rows = ["PatientNumber,SliceNumber,Intraventricular,Subdural,No_Hemorrhage"]
    for patient in (49, 50):
        for number in (1, 2, 3):
            rows.append(f"{patient},{number},0,{int(number == 3)},{int(number != 3)}")
    rows.append("51,1,1,0,0")
    (root / "hemorrhage_diagnosis_raw_ct.csv").write_text("\n".join(rows) + "\n")
    prepare(PrepareConfig(input=str(root), format="nifti", out=str(tmp_path / "c"), size=32))
    cache = Cache(tmp_path / "c")
    index = cache.index
    assert cache.labels == ["Intraventricular", "Subdural", "No_Hemorrhage"]
    assert sorted(set(index["study"])) == ["049", "050"] and len(cache) == 6
    for patient in ("049", "050"):
        rows_ = cache.series_rows(str(index["shard"][index["study"] == patient][0]))
        pixels = [int(cache.slice(r)[16, 16]) for r in rows_]
        subdural = cache.label_matrix[rows_, 1].tolist()
        # file slice 3 (SliceNumber 3) holds the subdural label; scan order is inferior first
        assert subdural[pixels.index(int(values[int(patient) - 49, 2]))] == 1
        assert sum(subdural) == 1
    assert [int(cache.slice(r)[16, 16]) for r in cache.series_rows(str(index["shard"][index["study"] == "050"][0]))] \
        == [600, 500, 400]
    assert cache.meta["split"]["how"] == "patient"
    assert cache.meta["summary"]["labels_without_images"] == 1


def test_cli_prints_where_and_fails_when_nothing_usable(tmp_path, capsys, caplog):
    _png_input(tmp_path / "in")
    assert main(["prepare", str(tmp_path / "in"), "--format", "png-folders", "--out", str(tmp_path / "c"),
                 "--size", "16", "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {tmp_path / 'c'}" in out and "split by study" in out
    assert set(Cache(tmp_path / "c").index["fold"][Cache(tmp_path / "c").index["split"] != "test"]) <= {0, 1}
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_text("nothing")
    assert main(["prepare", str(tmp_path / "junk"), "--format", "dicom", "--out", str(tmp_path / "j")]) == 2
    assert capsys.readouterr().out == ""  # no summary of an empty cache
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line == f"{tmp_path / 'junk'}: no usable slices with --format dicom (1 file skipped, listed above)"
    assert not (tmp_path / "j" / "meta.json").exists()


def test_an_empty_result_is_refused_with_what_was_found(tmp_path):
    _png_input(tmp_path / "in")
    with pytest.raises(InputError) as info:
        prepare(PrepareConfig(input=str(tmp_path / "in"), format="dicom", out=str(tmp_path / "c"), size=16))
    assert str(info.value) == (f"{tmp_path / 'in'}: no usable slices with --format dicom; "
                               "found 9 PNG files: try --format png-folders")
    assert not (tmp_path / "c" / "meta.json").exists() and not (tmp_path / "c" / "index.csv").exists()
    (tmp_path / "vols").mkdir()
    (tmp_path / "vols" / "a.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="found 1 NIfTI file: try --format nifti$"):
        prepare(PrepareConfig(input=str(tmp_path / "vols"), format="dicom", out=str(tmp_path / "d"), size=16))


_KILLABLE = textwrap.dedent("""
    import sys, time
    import headct.data.prepare as prepare
    original = prepare.build_series
    def slow(*args):
        record = original(*args)
        time.sleep(0.15)
        return record
    prepare.build_series = slow
    prepare.prepare(prepare.PrepareConfig(input=sys.argv[1], format="dicom", out=sys.argv[2], size=16))
""")


def test_resume_after_sigkill_gives_every_slice_once(tmp_path, ct_writer, hu_slice):
    root = tmp_path / "in"
    for s in range(12):
        for k in range(3):
            ct_writer(root / f"{s}_{k}.dcm", hu_slice(10 * s + k), sop=f"2.25.{s}.{k}", series=f"2.25.{s}",
                      study=f"2.25.{s}.0", patient=f"Q{s}", z=float(k))
    out = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(root), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / "shards").glob("*.json"))) < 4:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "shards").glob("*.json")))
    assert 4 <= done_before < 12, "the build was not stopped half way"
    assert not (out / "meta.json").exists()
    (out / "shards" / "junk.npy.tmp-1").write_bytes(b"half")  # what a kill mid-write leaves

    result = prepare(PrepareConfig(input=str(root), format="dicom", out=str(out), size=16))
    assert result.reused >= done_before - 1 and result.reused < 12
    cache = Cache(out)
    uids = cache.index["uid"].tolist()
    assert len(uids) == 36 and len(set(uids)) == 36
    for row in range(len(cache)):
        s, k = (int(v) for v in uids[row].split(".")[2:4])
        assert cache.slice(row)[8, 8] == 10 * s + k
    assert not list(out.rglob("*.tmp-*"))
    assert json.loads((out / "meta.json").read_text())["summary"]["slices"] == 36
    assert not list((out / "work").glob("*.npy"))  # staged pixels cleared once the shards hold them

    lost = cache.index["shard"][0]
    (out / "shards" / f"{lost}.json").unlink()  # a shard lost after the build: only it is read again
    again = prepare(PrepareConfig(input=str(root), format="dicom", out=str(out), size=16))
    assert again.reused == 11 and again.slices == 36
    assert Cache(out).slice(0)[8, 8] == cache.slice(0)[8, 8]


def test_rerun_reuses_everything(tmp_path):
    _png_input(tmp_path / "in")
    config = PrepareConfig(input=str(tmp_path / "in"), format="png-folders", out=str(tmp_path / "c"), size=16)
    first = prepare(config)
    second = prepare(config)
    # 3 series, and study s9 whose only file is unreadable: remembered with its reason, not re-read
    assert first.reused == 0 and second.reused == 4 and first.series == 3
    assert second.skipped == first.skipped
    config.size = 8  # a different size rebuilds every shard
    assert prepare(config).reused == 0 and Cache(tmp_path / "c").slice(0).shape == (8, 8)


def test_csv_columns_can_be_named(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(root / "a.png")
    (root / "t.csv").write_text("file_name,who,y,z\na.png,x,1,0\n")
    with pytest.raises(Exception, match="no path column"):
        prepare(PrepareConfig(input=str(root / "t.csv"), format="csv", out=str(tmp_path / "c")))
    prepare(PrepareConfig(input=str(root / "t.csv"), format="csv", out=str(tmp_path / "c"), size=8,
                          columns=TableColumns(path="file_name", patient="who", labels=["z"])))
    cache = Cache(tmp_path / "c")
    assert cache.labels == ["z"] and cache.label_matrix.tolist() == [[0]]


@pytest.mark.parametrize("layout", ["rsna", "png-folders"])
def test_phantom_output_ingests_with_masks_matching_labels(tmp_path, layout):
    from headct.phantom import LESION_BITS

    assert main(["phantom", "--out", str(tmp_path / "ph"), "--studies", "4", "--layout", layout, "--seed", "3",
                 "--size", "64", "--slices", "6"]) == 0
    assert main(["prepare", str(tmp_path / "ph"), "--format", layout, "--out", str(tmp_path / "c"),
                 "--size", "32"]) == 0
    cache = Cache(tmp_path / "c")
    assert len(cache) == 24 and cache.has_masks and not cache.meta["summary"]["skipped"]
    assert (cache.label_matrix >= 0).all()
    assert sum(int(cache.mask(r).any()) for r in range(len(cache)) if cache.mask(r) is not None) > 0
    lesion_label = {"rsna": {name: name for name in SUBTYPES if name != "any"},
                    "png-folders": {name: "hemorrhagic" for name in SUBTYPES if name != "any"} | {"ischemic": "ischemic"}}
    for row in range(len(cache)):
        mask = cache.mask(row)
        for lesion, bit in LESION_BITS.items():
            if mask is not None and (mask & bit).any() and lesion in lesion_label[layout]:
                assert cache.label_matrix[row, cache.labels.index(lesion_label[layout][lesion])] == 1


def test_a_rewritten_file_is_read_again_even_with_the_same_name_size_and_mtime(tmp_path, ct_writer, hu_slice):
    root, out = tmp_path / "in", tmp_path / "cache"
    for s in range(2):
        for k in range(2):
            ct_writer(root / f"s{s}" / f"{k}.dcm", hu_slice(100 * s + k), sop=f"2.25.{s}.{k}", series=f"2.25.{s}",
                      study=f"2.25.{s}.0", patient=f"Q{s}", z=float(k))
    config = PrepareConfig(input=str(root), format="dicom", out=str(out), size=16)
    prepare(config)
    changed = root / "s1" / "1.dcm"
    before = changed.stat()
    ct_writer(changed, hu_slice(777), sop="2.25.1.1", series="2.25.1", study="2.25.1.0", patient="Q1", z=1.0)
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or a coarse clock would leave it
    assert changed.stat().st_size == before.st_size and changed.stat().st_mtime_ns == before.st_mtime_ns

    again = prepare(config)
    assert again.reused == 1  # series s0 untouched; s1 read again
    cache = Cache(out)
    row = int(np.flatnonzero(cache.index["uid"] == "2.25.1.1")[0])
    assert cache.slice(row)[8, 8] == 777
    assert prepare(config).reused == 2


def test_no_input_names_reach_the_cache_files(tmp_path, ct_writer, hu_slice):
    import pydicom

    root, out = tmp_path / "SMITH_JOHN", tmp_path / "cache"
    for k in range(3):
        ct_writer(root / "Series_Brain" / f"IMG_SECRET_{k}.dcm", hu_slice(10 * k), sop=f"2.25.9.{k}",
                  series="2.25.9", study="2.25.9.0", patient="Q9", z=float(k))
        path = ct_writer(root / "NoUids_DOE" / f"IMG_SECRET_{k}.dcm", hu_slice(50 + k), sop=f"2.25.8.{k}",
                         series="x", study="x", patient=None, z=float(k))
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID, ds.StudyInstanceUID
        ds.save_as(path)
    (root / "NoUids_DOE" / "BROKEN_SECRET.dcm").write_bytes(b"not dicom")
    prepare(PrepareConfig(input=str(root), format="dicom", out=str(out), size=16))

    cache = Cache(out)
    assert len(cache) == 6
    no_uid = cache.index["study"][cache.index["uid"] == "2.25.8.0"][0]
    assert no_uid.startswith("no-series-uid-") and len(no_uid) == len("no-series-uid-") + 16
    assert cache.index["series"][cache.index["uid"] == "2.25.8.0"][0] == no_uid
    assert (out / "work").is_dir() and list((out / "work").glob("*.json"))
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".csv")]
    assert {p.parent.name for p in written} >= {"cache", "shards", "work"}
    for path in written:
        text = path.read_text()
        for name in ("SMITH", "Series_Brain", "NoUids", "DOE", "SECRET", str(tmp_path)):
            assert name not in text, f"{name} in {path.relative_to(out)}"
    (skipped,) = cache.meta["summary"]["skipped"]
    assert skipped == {"file": short_hash("NoUids_DOE/BROKEN_SECRET.dcm"),
                       "reason": "not a DICOM file (no DICM preamble or readable header)"}
