"""PNG class folders, the TEKNOFEST 2021 stroke layout (``--format png-folders``).

Layout expected::

    INPUT/non-stroke/*.png     one folder per class (8-bit PNG or JPG, grey or RGB)
    INPUT/hemorrhagic/*.png
    INPUT/ischemic/*.png
    INPUT/masks/<study>.npz    optional lesion masks (``uids`` = file stems, ``masks`` uint8 bit flags)

Folder names map to classes through a class map (``--class-map
'folder=class,...'``; the default knows the canonical names and the Turkish
TEKNOFEST ones, case-insensitive). Labels are one-hot over the classes.

Grouping (docs/internals.md, "PNG-folder grouping"): a file named
``<group>_<digits>.<ext>`` is slice ``<digits>`` of study ``<group>`` (one
study may span class folders, slice by slice); any other name is a study of
its own, and then the split is by image. Files carry no patient identity.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from headct.data.plan import Plan, SeriesJob, SliceSource, report_examples, series_key
from headct.errors import InputError
from headct.io.png import IMAGE_SUFFIXES  # what headct.io.read_image reads
from headct.tasks import STROKE_LABELS

log = logging.getLogger(__name__)

DEFAULT_CLASS_MAP: dict[str, str] = {
    "non-stroke": "non-stroke", "nonstroke": "non-stroke", "normal": "non-stroke",
    "inme yok": "non-stroke", "inmeyok": "non-stroke", "inme_yok": "non-stroke",
    "hemorrhagic": "hemorrhagic", "hemorrhage": "hemorrhagic", "kanama": "hemorrhagic",
    "ischemic": "ischemic", "ischemia": "ischemic", "iskemi": "ischemic",
}
_GROUPED = re.compile(r"^(?P<group>.+)_(?P<number>\d+)$")


def parse_class_map(text: str | None) -> dict[str, str]:
    """``'normal=non-stroke,bleed=hemorrhagic'`` → {folder (lower case): class}; None → the default map."""
    if text is None:
        return dict(DEFAULT_CLASS_MAP)
    mapping = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        folder, sep, label = pair.partition("=")
        if not sep or not folder.strip() or not label.strip():
            raise ValueError(f"--class-map entries are folder=class; got {pair!r}")
        mapping[folder.strip().lower()] = label.strip()
    if not mapping:
        raise ValueError("--class-map is empty")
    return mapping


def split_group(stem: str) -> tuple[str, int] | None:
    """``"s0007_012"`` → ("s0007", 12); a name without ``_<digits>`` → None."""
    match = _GROUPED.match(stem)
    return (match["group"], int(match["number"])) if match else None


def plan_png_folders(root: Path, class_map: dict[str, str]) -> Plan:
    """One job per study: its slices from every class folder, in slice-number order."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "png-folders input must be a folder of class folders")
    classes = _class_order(class_map)
    skipped: list[dict[str, str]] = []
    entries: list[tuple[Path, str]] = []  # (file, class)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name == "masks":
            continue
        label = class_map.get(folder.name.lower())
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if label is None:
            log.warning("%s: folder not in the class map (%s); its %d files are skipped",
                        folder, ", ".join(sorted(class_map)), len(files))
            skipped += [{"file": _rel(p, root), "reason": "folder not in the class map"} for p in files]
            continue
        for path in files:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                entries.append((path, label))
            else:
                skipped.append({"file": _rel(path, root), "reason": "not an image file"})
    if not entries and not skipped:
        raise InputError(root, f"no class folders found (expected {', '.join(classes)})")

    studies: dict[str, dict[int, tuple[Path, str]]] = {}
    singles: list[tuple[Path, str]] = []
    for path, label in entries:
        grouped = split_group(path.stem)
        if grouped is None:
            singles.append((path, label))
            continue
        group, number = grouped
        slices = studies.setdefault(group, {})
        if number in slices:
            skipped.append({"file": _rel(path, root),
                            "reason": f"duplicate slice {number} of study {group} (also {_rel(slices[number][0], root)})"})
            continue
        slices[number] = (path, label)

    repeated = {stem for stem, count in Counter(p.stem for p, _ in entries).items() if count > 1}
    jobs: list[SeriesJob] = []
    taken: set[str] = set()
    for group in sorted(studies):
        ordered = [studies[group][n] for n in sorted(studies[group])]
        jobs.append(_job(group, ordered, root, classes, taken, repeated))
    for path, label in singles:
        study = path.stem if path.stem not in repeated else _rel(path, root)
        jobs.append(_job(study, [(path, label)], root, classes, taken, repeated))
    if skipped:
        log.warning("%d files skipped while listing %s: %s", len(skipped), root,
                    report_examples([f"{s['file']} ({s['reason']})" for s in skipped]))
    return Plan(source_format="png-folders", kind="uint8", label_names=classes, jobs=jobs, skipped=skipped,
                image_level=not studies)


def _job(study: str, files: list[tuple[Path, str]], root: Path, classes: list[str], taken: set[str],
         repeated: set[str]) -> SeriesJob:
    sources = [
        SliceSource(path=str(path), name=_rel(path, root), reader="image",
                    labels=tuple(int(label == c) for c in classes),
                    uid=path.stem if path.stem not in repeated else _rel(path, root))
        for path, label in files
    ]
    mask = root / "masks" / f"{study}.npz"
    return SeriesJob(key=series_key(study, taken), study=study, patient="", series=study, sources=sources,
                     mask_file=str(mask) if mask.is_file() else None)


def _class_order(class_map: dict[str, str]) -> list[str]:
    """The canonical stroke classes first (when used), then any others in map order."""
    used = list(dict.fromkeys(class_map.values()))
    return [c for c in STROKE_LABELS if c in used] + [c for c in used if c not in STROKE_LABELS]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
