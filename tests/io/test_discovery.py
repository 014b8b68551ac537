"""headct.io.discovery: which entries of a tree are DICOM candidates, which are refused, which ignored."""

from __future__ import annotations

import os
import time

import pytest

from headct.errors import InputError
from headct.io.discovery import entry_fault, file_fingerprint, find_dicom_files, list_entries


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_candidates_are_sorted_regular_files_and_siblings_are_ignored_by_kind(tmp_path) -> None:
    slices = [_touch(tmp_path / "s2" / "b.dcm"), _touch(tmp_path / "s1" / "IM0001"), _touch(tmp_path / "a.dcm")]
    for name in ("labels.csv", "phantom.json", "DICOMDIR", "masks/1.2.3.npz", "masks/4.npz", "x.npz",
                 "png/a_001.png", "png/a_002.png", "png/b.JPG", "vol.nii.gz", ".hidden.dcm", ".git/HEAD"):
        _touch(tmp_path / name)
    found = find_dicom_files(tmp_path)
    assert found.files == sorted(slices)
    assert found.refused == []
    assert dict(found.ignored) == {"CSV": 1, "JSON": 1, "DICOMDIR": 1, "masks/": 2, "NPZ": 1, "PNG": 2, "JPG": 1,
                                   "NIfTI": 1}
    assert found.describe() == ("2 files in masks/, 2 PNG files, 1 CSV file, 1 DICOMDIR file, 1 JPG file, "
                                "1 JSON file, 1 NIfTI file, 1 NPZ file")


def test_a_named_pipe_is_refused_without_being_opened(tmp_path) -> None:
    good = _touch(tmp_path / "good.dcm")
    os.mkfifo(tmp_path / "pipe.dcm")
    started = time.monotonic()
    found = find_dicom_files(tmp_path)
    assert found.files == [good]
    (err,) = found.refused
    assert str(err) == f"{tmp_path / 'pipe.dcm'}: named pipe, not a regular file; skipped without opening it"
    assert entry_fault(tmp_path / "pipe.dcm") == err.fault
    assert time.monotonic() - started < 60  # a blocking open would never return


def test_link_loops_are_reported_as_loops_and_the_walk_ends(tmp_path) -> None:
    good = _touch(tmp_path / "series" / "1.dcm")
    (tmp_path / "series" / "self.dcm").symlink_to("self.dcm")
    (tmp_path / "series" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "gone.dcm").symlink_to("nowhere.dcm")
    found = find_dicom_files(tmp_path)
    assert found.files == [good]
    faults = {os.path.relpath(err.path, tmp_path): err.fault for err in found.refused}
    assert faults == {
        "gone.dcm": "broken symbolic link; skipped",
        "series/self.dcm": "symbolic link loop; skipped",
        "series/up": "symbolic link loop (a folder link back into the tree)",
    }


def test_a_linked_folder_outside_the_tree_is_followed_once(tmp_path) -> None:
    outside = _touch(tmp_path / "elsewhere" / "1.dcm")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "linked").symlink_to(outside.parent, target_is_directory=True)
    assert find_dicom_files(tmp_path / "tree").files == [tmp_path / "tree" / "linked" / "1.dcm"]


def test_root_file_missing_or_special(tmp_path) -> None:
    one = _touch(tmp_path / "one.dcm")
    assert find_dicom_files(one).files == [one]
    with pytest.raises(InputError, match="no such file or folder"):
        find_dicom_files(tmp_path / "missing")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="^.*pipe: named pipe"):
        find_dicom_files(tmp_path / "pipe")


def test_list_entries_keeps_every_regular_file_and_refuses_the_rest(tmp_path) -> None:
    png = _touch(tmp_path / "a.png")
    csv = _touch(tmp_path / "labels.csv")
    _touch(tmp_path / "DICOMDIR")
    (tmp_path / "study").mkdir()
    os.mkfifo(tmp_path / "pipe.dcm")
    files, folders, refused = list_entries(tmp_path)
    assert files == [png, csv] and folders == [tmp_path / "study"]
    assert [os.path.basename(err.path) for err in refused] == ["pipe.dcm"]


def test_fingerprint_changes_with_content_even_with_the_same_size_and_mtime(tmp_path) -> None:
    path = _touch(tmp_path / "a.dcm", b"\x00" * 5000)
    before = file_fingerprint(path)
    stamp = os.stat(path).st_mtime_ns
    path.write_bytes(b"\x00" * 4999 + b"\x01")
    os.utime(path, ns=(stamp, stamp))
    after = file_fingerprint(path)
    assert before.split(":")[:2] == after.split(":")[:2]  # same size and mtime
    assert before != after
    assert file_fingerprint(path) == after
    assert file_fingerprint(path, path.read_bytes()) == after  # from bytes the caller read: the same
    assert file_fingerprint(path, b"\x00" * 5000) == before.split(":")[0] + ":" + str(stamp) + ":" + before.split(":")[2]
