"""The fault text of an exception raised on untrusted input: one line, no file path in it.

Readers wrap what pydicom, PIL or nibabel raise into ``InputError(path, fault)``;
``str(err)`` must stay one line and name the file once (by the path the user
gave), while library messages span lines (pydicom's decoder report) or repeat
the absolute path (OSError, PIL).
"""

from __future__ import annotations

import os

MAX_FAULT_CHARS = 300


def one_line(exc: BaseException, path: str | os.PathLike | None = None) -> str:
    """``"Type: message"`` on one line, at most MAX_FAULT_CHARS, with ``path`` replaced by "the file".

    An OSError with a strerror gives only that (its message repeats the file name).
    """
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = " ".join(str(exc).split())
    if path is not None and str(path):
        text = text.replace(f"'{path}'", "the file").replace(str(path), "the file")
    module = type(exc).__module__
    kind = type(exc).__name__ if module == "builtins" else f"{module}.{type(exc).__name__}"
    text = f"{kind}: {text}" if text else kind
    return text if len(text) <= MAX_FAULT_CHARS else text[: MAX_FAULT_CHARS - 3] + "..."
