"""headct.io.faults.one_line: library messages as one line without the file's path."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from headct.io.faults import MAX_FAULT_CHARS, one_line


def test_multi_line_decoder_messages_become_one_line() -> None:
    exc = RuntimeError("Unable to decode as exceptions were raised by all available plugins:\n  pylibjpeg: bad\n")
    assert one_line(exc) == "RuntimeError: Unable to decode as exceptions were raised by all available plugins: pylibjpeg: bad"


def test_paths_are_not_repeated() -> None:
    assert one_line(FileNotFoundError(2, "No such file or directory", "/secret/a.dcm")) == (
        "FileNotFoundError: No such file or directory")
    exc = OSError(f"cannot identify image file {'/home/x/in/a.png'!r}")
    assert one_line(exc, "/home/x/in/a.png") == "OSError: cannot identify image file the file"


def test_library_exceptions_are_named_by_module() -> None:
    try:
        zlib.decompress(b"not zlib")
    except zlib.error as exc:
        assert one_line(exc).startswith("zlib.error: Error -3 while decompressing data")


@given(st.text())
def test_any_message_gives_one_bounded_line(message: str) -> None:
    text = one_line(ValueError(message))
    assert "\n" not in text and "\r" not in text and len(text) <= MAX_FAULT_CHARS
    assert text.startswith("ValueError")
