"""Atomic writes: content, permissions, no temp file left on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from headct.atomic import TEMP_MARK, opened, write_bytes, write_text, writing


def test_writes_content_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    write_text(target, "{\"x\": 1}\r\n")
    assert target.read_bytes() == b"{\"x\": 1}\r\n"
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_permissions_follow_the_umask_not_mkstemp(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_writing_gives_a_marked_temporary_path_and_renames_it(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    with writing(target) as tmp:
        assert tmp.parent == tmp_path and TEMP_MARK in tmp.name and not target.exists()
        tmp.write_bytes(b"weights")
    assert target.read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_writing_that_fails_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    with pytest.raises(RuntimeError), writing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_opened_streams_into_a_marked_temporary_file_then_renames_it(tmp_path: Path) -> None:
    target = tmp_path / "new" / "slice.dcm"
    old = os.umask(0o027)
    try:
        with opened(target) as handle:
            names = [p.name for p in target.parent.iterdir()]
            assert len(names) == 1 and names[0].startswith(".slice.dcm" + TEMP_MARK) and not target.exists()
            handle.writelines([b"head", memoryview(b"pixels")])
    finally:
        os.umask(old)
    assert target.read_bytes() == b"headpixels"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["slice.dcm"]


def test_opened_that_fails_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "keep.dcm"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), opened(target) as handle:
        handle.write(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.dcm"]
