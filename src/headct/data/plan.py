"""What a cache build will read: series jobs with their files and labels.

Each input format (rsna, dicom, png-folders, csv, nifti) turns its input into
a :class:`Plan`: the label names, the pixel kind, files already rejected, and
one :class:`SeriesJob` per future shard. The cache builder then reads the jobs
in parallel, one series per worker call, without caring about the format.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headct.io.discovery import file_fingerprint
from headct.io.privacy import short_hash

_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass
class SliceSource:
    """One input file (or, for NIfTI, one volume) of a series.

    ``name`` is how reports name it (the path relative to the input, never a
    patient identifier); ``labels`` is the label vector (1/0/-1) or None when
    no label row exists for it.
    """

    path: str
    name: str
    reader: str  # "dicom" | "image" | "images" (one slice as C images) | "nifti" | "staged" (see dicom_series)
    labels: tuple[int, ...] | None = None
    uid: str | None = None
    header: dict[str, Any] | None = None  # staged DICOM: UIDs, geometry, chunk and row
    channels: list[tuple[str, str]] | None = None
    """"images": (column, file) per channel, in channel order (``path`` is the first file; ``name`` names
    the CSV row, so a fault names the row and the column)."""


@dataclass
class SeriesJob:
    """One future shard: the files of one series and where its labels and masks are.

    ``frame_labels`` is for multi-slice files (NIfTI): label vectors by slice
    position, since the slice count is known only once the volume is read.
    ``assemble`` sorts staged DICOM slices along the slice normal
    (``assemble_series``); otherwise the source order is the scan order.
    """

    key: str
    study: str
    patient: str
    series: str
    sources: list[SliceSource]
    assemble: bool = False
    mask_file: str | None = None
    frame_labels: dict[int, tuple[int, ...]] | None = None
    content: list[str] | None = field(default=None, repr=False)
    """Content fingerprints of the sources and the mask file, computed by the first ``digest``."""

    def labels_for(self, source: int, frame: int | None) -> tuple[int, ...] | None:
        """Label vector of a kept slice (by source index and frame), or None when unlabeled."""
        if self.frame_labels is not None:
            return self.frame_labels.get(int(frame or 0))
        return self.sources[source].labels

    def digest(self, size: int) -> str:
        """Fingerprint of what this job reads and how: a shard is reused only if it matches.

        It covers each source's name, reader and content (staged DICOM carry the
        fingerprint taken when staging), and the mask file's content, so a file
        rewritten under the same name and size is read again.
        """
        if self.content is None:
            self.content = [_source_fingerprint(s) for s in self.sources]
            self.content.append(file_fingerprint(self.mask_file) if self.mask_file else "")
        described = [size, self.assemble, self.mask_file is not None,
                     [(s.name, s.reader, *([[c for c, _ in s.channels]] if s.channels else []))
                      for s in self.sources], self.content]
        return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


@dataclass
class Plan:
    """Everything a format found before reading pixels."""

    source_format: str
    kind: str  # "hu" | "uint8"
    label_names: list[str]
    jobs: list[SeriesJob]
    skipped: list[dict[str, str]] = field(default_factory=list)
    image_level: bool = False
    notes: dict[str, Any] = field(default_factory=dict)
    channels: list[str] | None = None  # several 8-bit images per slice: their names (CSV columns), in order


def _source_fingerprint(source: SliceSource) -> str:
    if source.header is not None and "fingerprint" in source.header:
        return str(source.header["fingerprint"])
    if source.channels:
        return "+".join(file_fingerprint(path) for _, path in source.channels)
    return file_fingerprint(source.path)


def series_key(name: str, taken: set[str]) -> str:
    """A file-name-safe, unique shard key: the name itself when safe, else a hash of it."""
    key = name if _SAFE_KEY.match(name) and not name.endswith((".json", ".npy")) else short_hash(name)
    if key in taken:
        key = f"{key[:80]}-{short_hash(name + str(len(taken)))}"
    taken.add(key)
    return key


def relative_name(path: Path, base: Path) -> str:
    """How messages name an input file: its path under the input folder (the file name when outside)."""
    try:
        rel = path.relative_to(base).as_posix()
    except ValueError:
        return path.name
    return path.name if rel in ("", ".") else rel


def report_examples(items: list[str], limit: int = 5) -> str:
    """``"a, b, c (+12 more)"`` for a log line that names a few of many."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
