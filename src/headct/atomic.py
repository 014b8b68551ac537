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

TEMP_MARK = ".tmp-"
"""In the name of every temporary file written here: ``.<name>.tmp-<random>``."""


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends cleanly.

    For writers that take a path or their own handle (``torch.save``, ``np.save``,
    ONNX export, PIL); on an error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating the parent folder."""
    with writing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (no newline translation)."""
    write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    # The umask can only be read by setting it; put it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask
