"""A whole phantom dataset on disk: plan the studies, render them, write one layout.

Layouts:
- ``rsna``: ``dicom/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` plus ``labels.csv`` (RSNA ``ID,Label``);
- ``png-folders``: brain-window PNGs in ``non-stroke/``, ``hemorrhagic/``, ``ischemic/``
  (TEKNOFEST), named ``<study>_<slice:03d>.png``.
Both get ``masks/<study>.npz`` and ``phantom.json`` (arguments, lesions, counts).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from headct import __version__
from headct.atomic import write_text
from headct.io.privacy import short_hash
from headct.labels import HEMORRHAGE_TYPES, LESION_BITS, PHANTOM_MARKER
from headct.phantom.generator import PhantomStudy, StudyBuffers, default_slices, generate_study
from headct.phantom.writers import (
    RESCALES,
    RSNA_LABELS,
    SeriesInfo,
    brain_window_png,
    write_dicom_series,
    write_masks,
    write_png,
    write_rsna_labels,
)

log = logging.getLogger(__name__)

PHANTOM_VERSION = "3"
"""Bumped whenever the same seed would render different images (2: the scanner blur by cv2, edge pixels replicated;
3: the sulci's waves expanded per study, which moves ~1 in 10^7 voxels by float rounding)."""

LAYOUTS = ("rsna", "png-folders")
STROKE_CLASSES = ("non-stroke", "hemorrhagic", "ischemic")


@dataclass
class PhantomConfig:
    """What ``headct phantom`` writes."""

    out: Path
    studies: int = 20
    layout: str = "rsna"
    seed: int = 0
    difficulty: float = 1.0
    size: int = 512
    slices: int | None = None
    tilt: float = 0.0  # gantry tilt in degrees (rsna layout): same heads, tilted planes and headers
    workers: int = 1  # processes rendering studies; the files do not depend on it

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.studies < 1:
            raise ValueError(f"studies must be at least 1, got {self.studies}")
        if not 0.0 <= self.difficulty <= 5.0:
            raise ValueError(f"difficulty must be in [0, 5], got {self.difficulty}")
        if not -45.0 < self.tilt < 45.0:
            raise ValueError(f"tilt must be within (-45, 45) degrees, got {self.tilt}")
        if self.tilt and self.layout != "rsna":
            raise ValueError("tilt needs the rsna (DICOM) layout; PNG slices have no geometry to say it")


@dataclass
class StudyPlan:
    """Everything decided about one study before rendering it."""

    index: int
    patient: int
    lesions: tuple[str, ...]
    name: str  # short stable id (png names, masks for png-folders)
    study_uid: str
    series_uid: str
    frame_uid: str
    rescale: str
    descending_instances: bool
    table_offset: float
    extra: dict = field(default_factory=dict)

    @property
    def patient_id(self) -> str:
        return f"PHANTOM-{self.patient:04d}"

    def seed(self, config: PhantomConfig) -> list[int]:
        return [config.seed, 1, self.index]

    def patient_seed(self, config: PhantomConfig) -> list[int]:
        return [config.seed, 2, self.patient]


def plan_studies(config: PhantomConfig) -> list[StudyPlan]:
    """Patients, lesion types and identifiers for every study; study i never depends on N."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng([config.seed, 0])
    plans: list[StudyPlan] = []
    patient = 0
    for index in range(config.studies):
        follow_up = index > 0 and rng.random() < 0.25
        patient = patient if follow_up else patient + 1
        if config.layout == "rsna":
            count = int(rng.choice([0, 1, 2, 3], p=[0.3, 0.45, 0.18, 0.07]))
            chosen = rng.choice(len(HEMORRHAGE_TYPES), size=count, replace=False)
            lesions = tuple(HEMORRHAGE_TYPES[i] for i in sorted(chosen))
        elif rng.random() < 0.5:
            lesions = ("ischemic",)
        else:
            count = int(rng.choice([1, 2], p=[0.75, 0.25]))
            chosen = rng.choice(len(HEMORRHAGE_TYPES), size=count, replace=False)
            lesions = tuple(HEMORRHAGE_TYPES[i] for i in sorted(chosen))

        def uid(*parts: object, index: int = index) -> str:
            return generate_uid(entropy_srcs=["headct-phantom", str(config.seed), str(index), *map(str, parts)])

        study_uid = uid("study")
        plans.append(StudyPlan(
            index=index, patient=patient, lesions=lesions, name=f"ph{short_hash(study_uid)[:10]}",
            study_uid=study_uid, series_uid=uid("series"), frame_uid=uid("frame"),
            rescale=RESCALES[index % len(RESCALES)].name,
            descending_instances=bool(rng.random() < 0.3),
            table_offset=round(float(rng.uniform(-120, 40)), 1),
        ))
    return plans


def write_phantom(config: PhantomConfig) -> dict:
    """Render and write every study; returns the phantom.json content.

    With ``config.workers`` > 1 studies are rendered and written by a process
    pool; each study depends only on its own seeds and results are gathered in
    study order, so the files are the same bytes whatever the worker count.
    """
    started = time.perf_counter()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    slices = config.slices or default_slices(config.size)
    plans = plan_studies(config)
    csv_rows: list[tuple[str, dict[str, int]]] = []
    records = []
    slice_counts = dict.fromkeys([*LESION_BITS, "any", *STROKE_CLASSES], 0)
    total_slices = 0
    with _StudyPool(config.workers) as pool:
        written = pool.map(_write_study, [(config, plan, slices) for plan in plans])
        try:
            for study in tqdm(written, total=len(plans), desc="phantom", unit="study", disable=None):
                total_slices += study.slices
                for name, count in study.slice_counts.items():
                    slice_counts[name] += count
                csv_rows += study.csv_rows
                records.append(study.record)
        finally:
            _RENDER_BUFFERS.release()  # with one worker the studies were rendered here: free ~1.5 MB per slice

    if config.layout == "rsna":
        write_rsna_labels(out / "labels.csv", csv_rows)
    summary = {
        "generator": "headct.phantom",
        "phantom_version": PHANTOM_VERSION,
        "headct_version": __version__,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                      if k not in ("out", "workers")}  # neither changes what is written
        | {"slices": slices},
        "lesion_bits": LESION_BITS,
        "studies": records,
        "counts": {
            "studies": len(records),
            "patients": len({r["patient"] for r in records}),
            "slices": total_slices,
            "slices_with": {k: v for k, v in slice_counts.items() if config.layout == "png-folders" or k not in STROKE_CLASSES},
            "studies_with": {name: sum(1 for r in records if any(les["type"] == name for les in r["lesions"])) for name in LESION_BITS},
        },
    }
    write_text(out / PHANTOM_MARKER, json.dumps(summary, indent=1) + "\n")
    log.info("phantom: %d studies, %d slices in %.1f s", len(records), total_slices, time.perf_counter() - started)
    return summary


@dataclass
class _WrittenStudy:
    """What the dataset summary needs from one rendered and written study."""

    slices: int
    slice_counts: dict[str, int]
    csv_rows: list[tuple[str, dict[str, int]]]
    record: dict


_RENDER_BUFFERS = StudyBuffers()
"""This process's study arrays: each study is written out before the next is rendered into them
(pool workers keep theirs until they exit; :func:`write_phantom` releases its own at the end)."""


def _write_study(args: tuple[PhantomConfig, StudyPlan, int]) -> _WrittenStudy:
    """Render one study and write its files (a top-level function, so a process pool can run it)."""
    from pydicom.uid import generate_uid

    config, plan, slices = args
    out = config.out
    study = generate_study(plan.seed(config), patient_seed=plan.patient_seed(config), size=config.size,
                           slices=slices, difficulty=config.difficulty, lesions=plan.lesions, tilt=config.tilt,
                           buffers=_RENDER_BUFFERS)
    labels = study.slice_labels()
    n = study.num_slices
    counts = {name: int(labels[name].sum()) for name in [*LESION_BITS, "any"]}
    csv_rows: list[tuple[str, dict[str, int]]] = []
    if config.layout == "rsna":
        sop_uids = [generate_uid(entropy_srcs=["headct-phantom", str(config.seed), str(plan.index), "sop", str(k)])
                    for k in range(n)]
        rescale = next(r for r in RESCALES if r.name == plan.rescale)
        info = SeriesInfo(plan.patient_id, plan.study_uid, plan.series_uid, plan.frame_uid, sop_uids,
                          study.pixel_spacing, study.slice_thickness,
                          [plan.table_offset + float(z) for z in study.z], rescale,
                          plan.descending_instances, config.tilt)
        write_dicom_series(out / "dicom" / plan.study_uid, study.hu, info)
        csv_rows = [(sop_uids[k], {name: int(labels[name][k]) for name in RSNA_LABELS}) for k in range(n)]
        key, uids = plan.study_uid, sop_uids
    else:
        classes = _stroke_classes(labels)
        uids = []
        for k in range(n):
            stem = f"{plan.name}_{k:03d}"
            write_png(out / classes[k] / f"{stem}.png", brain_window_png(study.hu[k]))
            uids.append(stem)
            counts[classes[k]] = counts.get(classes[k], 0) + 1
        key = plan.name
    write_masks(out / "masks" / f"{key}.npz", uids, study.masks)
    return _WrittenStudy(n, counts, csv_rows, _study_record(plan, study, labels, key, config.layout))


class _StudyPool:
    """``map`` in order: inline for one worker, else a spawn-started process pool."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self.executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> _StudyPool:
        if self.workers > 1:
            self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        if self.executor is None:
            return map(fn, items)
        return self.executor.map(fn, items)


def _stroke_classes(labels: dict[str, np.ndarray]) -> list[str]:
    """TEKNOFEST class per slice: ischemic if the ischemic bit, hemorrhagic if any bleed, else non-stroke."""
    return ["ischemic" if labels["ischemic"][k] else "hemorrhagic" if labels["any"][k] else "non-stroke"
            for k in range(len(labels["any"]))]


def _study_record(plan: StudyPlan, study: PhantomStudy, labels: dict[str, np.ndarray], key: str, layout: str) -> dict:
    lesions = []
    present = study.slice_bits
    for lesion in study.lesions:
        on = np.flatnonzero(present & np.uint8(lesion.bit))
        first, last = int(on.min()), int(on.max())
        entry = lesion.describe()
        entry["slices"] = [first, last]
        # count only within the lesion's slices: a full-volume pass per lesion cost ~0.7 ms per slice at 512²
        entry["voxels"] = int(np.count_nonzero(study.masks[first:last + 1] & np.uint8(lesion.bit)))
        lesions.append(entry)
    return {
        "study": key,
        "study_uid": plan.study_uid if layout == "rsna" else None,
        "patient": plan.patient_id,
        "slices": study.num_slices,
        "pixel_spacing_mm": round(study.pixel_spacing, 4),
        "slice_thickness_mm": round(study.slice_thickness, 3),
        "rescale": plan.rescale if layout == "rsna" else None,
        "noise_sd": round(study.noise_sd, 2),
        "streaks": study.streaks,
        "lesions": lesions,
        "positive_slices": {name: int(v.sum()) for name, v in labels.items()},
    }
