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
