"""Errors that carry the file and the fault, so a batch can report and go on."""

from __future__ import annotations

from pathlib import Path


class HeadCTError(Exception):
    """Base class for headct's own errors."""


class InputError(HeadCTError):
    """One input (file, series, CSV row) cannot be used.

    ``str(err)`` is one line: ``<path>: <fault>``. The path is the one the
    user gave; the fault never contains header values that identify a patient.
    """

    def __init__(self, path: str | Path | None, fault: str) -> None:
        self.path = str(path) if path is not None else None
        self.fault = fault
        super().__init__(f"{self.path}: {fault}" if self.path else fault)


class CheckpointError(HeadCTError):
    """A checkpoint directory is missing, corrupt or incompatible."""


class ConfigError(HeadCTError, ValueError):
    """A setting (flag, YAML field, model name) that cannot work; ``hint`` says what would.

    A ``ValueError`` too, so callers that caught the bare ``ValueError`` this
    replaces still do.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class MissingExtraError(HeadCTError, ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"this needs the optional package {module!r}, which is not installed")
        self.module, self.extra = module, extra
        self.hint = f'pip install -e ".[{extra}]"  (or: pip install "headct[{extra}]")'


EXTRAS: dict[str, str] = {
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
    "highdicom": "dicom", "pynetdicom": "dicom", "dicomweb_client": "dicom",
}
"""Top-level module → the pyproject extra that installs it."""


def missing_extra(err: ImportError) -> MissingExtraError | None:
    """The MissingExtraError for an ImportError of an optional package; None for any other import."""
    module = (getattr(err, "name", None) or "").split(".")[0]
    return MissingExtraError(module, EXTRAS[module]) if module in EXTRAS else None


def require_extra(extra: str, *modules: str) -> None:
    """Raise MissingExtraError unless each of ``modules`` (from ``extra``) is installed; imports none of them."""
    from importlib.util import find_spec

    for module in modules:
        if find_spec(module) is None:
            raise MissingExtraError(module, extra)
