"""Issue 12, done when: 10 good slices plus any one bad entry → `prepare` finishes, the good slices are
cached exactly as without it, the bad entry is reported once, and nothing is written outside --out."""

from __future__ import annotations

import numpy as np

from headct.data.cache import Cache
from headct.data.prepare import PrepareConfig, prepare
from headct.data.resample import resample_slices

GOOD = 10
SIZE = 32
READABLE = {"instance_inf", "instance_nan"}  # read with a warning: a study of their own


def test_prepare_finishes_with_the_good_slices_intact(tmp_path, monkeypatch, ct_writer, hu_slice, bad_kind,
                                                      bad_dicom, snapshot_outside) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    hu = np.stack([hu_slice(40 + 7 * k) for k in range(GOOD)])
    for k in range(GOOD):  # file names against scan order
        ct_writer(root / f"IM{GOOD - 1 - k:04d}.dcm", hu[k], sop=f"2.25.7.{k}", series="2.25.7", study="2.25.7.0",
                  patient="Q7", z=2.5 * k)
    bad_dicom(root, bad_kind, root / "IM0000.dcm")
    monkeypatch.chdir(tmp_path)
    before = snapshot_outside(tmp_path, out)

    result = prepare(PrepareConfig(input=str(root), format="dicom", out=str(out), size=SIZE))

    assert snapshot_outside(tmp_path, out) == before  # nothing written (or touched) outside --out
    cache = Cache(out)
    rows = np.flatnonzero(cache.index["study"] == "2.25.7.0")
    assert cache.index["uid"][rows].tolist() == [f"2.25.7.{k}" for k in range(GOOD)]
    np.testing.assert_array_equal(np.stack([cache.slice(int(r)) for r in rows]), resample_slices(hu, SIZE))
    if bad_kind in READABLE:
        assert result.studies == 2 and result.skipped == [] and result.slices == GOOD + 1
        return
    assert result.studies == 1 and result.slices == GOOD
    reported = {item["file"] for item in result.skipped}
    assert reported == ({"bad.dcm", "loop"} if bad_kind == "symlink_loop" else {"bad.dcm"})
    assert all("\n" not in item["reason"] for item in result.skipped)
