"""Atomic file writes: a temporary file in the same folder, then a rename.

The one implementation every module uses. An interrupted run never leaves a
half-written file that later loads. The file gets the permissions an ordinary
``open`` would (the umask), not the owner-only mode of ``tempfile.mkstemp``.
Temporary names contain :data:`TEMP_MARK`, so a builder can sweep the ones a
killed run left behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_MARK = ".tmp-"
"""In the name of every temporary file written here: ``.<name>.tmp-<random>``."""


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends cleanly.

    For writers that take a path or their own handle (``torch.save``, ``np.save``,
    ONNX export, PIL); on an error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def opened(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``; renamed over ``path`` when the block ends cleanly.

    For writers that stream into a handle (many files in a row: the phantom's
    slices): the temporary file is written through the descriptor that created
    it, not opened a second time by name. On an error it is removed and ``path``
    is untouched.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, _file_mode())  # before the writer, which may close the handle (a text wrapper does)
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating the parent folder."""
    with opened(path) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (no newline translation)."""
    write_bytes(path, text.encode("utf-8"))


def _temp_beside(path: Path) -> tuple[int, Path]:
    """(descriptor, path) of a new marked temporary file in ``path``'s folder, the folder made if missing."""
    prefix = f".{path.name}{TEMP_MARK}"
    try:  # the folder usually exists: no mkdir (two system calls and an exception) per file
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    return fd, Path(name)


def _file_mode() -> int:
    """What ``open`` would give a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # The umask can only be read by setting it; put it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask
