"""Issue 12, done when: 10 good slices plus any one bad entry → `prepare` finishes, the good slices are
cached exactly as without it, the bad entry is reported once, and nothing is written outside --out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from headct.data.cache import Cache
from headct.data.prepare import PrepareConfig, prepare
from headct.data.resample import resample_slices

GOOD = 10
SIZE = 32
READABLE = {"instance_inf", "instance_nan"}  # read with a warning: a study of their own


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every entry under root except ``skip`` (lstat only: a named pipe is never opened)."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
        for name in files + dirs:
            info = os.lstat(Path(folder, name))
            entries[os.path.relpath(Path(folder, name), root)] = (info.st_size, info.st_mtime_ns)
    return entries


def test_prepare_finishes_with_the_good_slices_intact(tmp_path, monkeypatch, ct_writer, hu_slice, bad_kind,
                                                      bad_dicom) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    hu = np.stack([hu_slice(40 + 7 * k) for k in range(GOOD)])
    for k in range(GOOD):  # file names against scan order
        ct_writer(root / f"IM{GOOD - 1 - k:04d}.dcm", hu[k], sop=f"2.25.7.{k}", series="2.25.7", study="2.25.7.0",
                  patient="Q7", z=2.5 * k)
    bad_dicom(root, bad_kind, root / "IM0000.dcm")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path, out)

    result = prepare(PrepareConfig(input=str(root), format="dicom", out=str(out), size=SIZE))

    assert _snapshot(tmp_path, out) == before  # nothing written (or touched) outside --out
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
