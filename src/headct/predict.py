"""Predictor: a checkpoint and a study in, the prediction JSON out.

``Predictor.predict(path_or_volume)`` gives one dict per study, DESIGN.md's
prediction contract: ``study`` (StudyInstanceUID, or a hash when there is
none), ``model`` {name, version, labels, thresholds}, ``slices`` [{index, uid,
probabilities, positive}] in scan order, ``study_probabilities``,
``study_positive`` and ``warnings``. Each slice also names its ``series``.

Volumes are resampled to the checkpoint's input size with the cache's own
function (``headct.data.resample.resample_slices``), run through the shared
forward path (``headct.inference.series_logits``), scaled by the checkpoint's
temperature and decided with its frozen thresholds. Probabilities, study
aggregation and decisions come from ``headct.decide`` (a ``DecisionRule``), as in
``headct evaluate``, so a study scores the same in an evaluation and in deployment.

The runtime is torch or onnxruntime (``runtime="onnx"``: the ``model.onnx``
beside the checkpoint's config, exported into the checkpoint on first use).
Inference is serialised by a lock, so one Predictor serves many threads.

``headct predict PATH --model CKPT --out OUT`` streams every study under PATH
(a DICOM file, series or study folder, a folder of many studies, a PNG or a
NIfTI file) to ``OUT/<name>.json`` and appends its rows to ``OUT/predictions.csv``
as it finishes; a study that cannot be read is reported in one line and skipped.
``<name>`` is the StudyInstanceUID when it is a valid DICOM UID, else a hash of
it (:func:`output_name`), so no header value can steer a write outside OUT. A
rerun skips studies whose JSON is already there (``--no-resume`` redoes them).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from headct import atomic
from headct.checkpoint import (
    SYNTHETIC_WARNING,
    CheckpointConfig,
    load_checkpoint,
    parse_config_json,
    read_checkpoint_config,
)
from headct.data.resample import resample_slices
from headct.data.stroke import split_group
from headct.decide import DEFAULT_THRESHOLD, DecisionRule
from headct.distributed import (
    DistInfo,
    barrier,
    close_distributed,
    gather_objects,
    init_distributed,
    merge_in_order,
    rank_share,
)
from headct.errors import InputError
from headct.explain import overlay, series_maps, to_original, write_png
from headct.export import OnnxModel, onnx_for_checkpoint
from headct.inference import prepare_for_inference, series_logits
from headct.io import read_dicom, read_image, read_nifti
from headct.io.dicom import dicom_studies, read_dicom_files
from headct.io.discovery import entry_fault, find_dicom_files, list_entries
from headct.io.png import IMAGE_SUFFIXES
from headct.io.privacy import short_hash
from headct.io.series import SelectionRules, load_rules, select_series
from headct.io.volume import Volume
from headct.windows import to_uint8

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NEGATIVE_CLASSES = ("non-stroke",)
"""Multi-class labels that mean "nothing found": never drawn as overlays."""
DECIMALS = 6
_DICOM_UID = re.compile(r"(?=.{1,64}$)[0-9]+(?:\.[0-9]+)*")  # PS3.5 9.1: digits and dots, at most 64
_HEX_KEY = re.compile(r"[0-9a-f]{16}")  # short_hash of a path or series: already a safe name


@dataclass
class StudyInput:
    """One study read from disk: its series (scan order each) and what reading it noted."""

    key: str
    volumes: list[Volume]
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    series: dict[str, Any] | None = None  # {analysed: [...], rejected: [...]} from headct.io.series
    gaps: list[dict[str, Any]] = field(default_factory=list)


TORCH_BATCH = 32
ONNX_BATCH = 8


class Predictor:
    """A loaded checkpoint, ready to predict studies (thread-safe)."""

    def __init__(self, model: nn.Module, config: CheckpointConfig, *, runtime: str = "torch",
                 device: str | torch.device = "cpu", batch_size: int = 32,
                 checkpoint_dir: str | Path | None = None, cam_model: nn.Module | None = None) -> None:
        self.model = model
        self.config = config
        self.runtime = runtime
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._lock = threading.Lock()
        self._cam_model = cam_model  # the plain torch model for Grad-CAM; loaded on first use when None

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, *, runtime: str = "torch",
                        device: str | torch.device | None = None, batch_size: int | None = None,
                        threads: int | None = None) -> Predictor:
        """Load a checkpoint directory for the torch or the onnx runtime (CPU for onnx).

        ``batch_size`` (slices per forward pass) defaults to 32 for torch and 8 for
        onnxruntime, whose CPU kernels run faster on batches that stay in the
        caches (``benchmarks/predict_cpu.py``).
        """
        batch_size = batch_size or (ONNX_BATCH if runtime == "onnx" else TORCH_BATCH)
        if runtime == "torch":
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model, config = load_checkpoint(checkpoint_dir, map_location=device)
            # fp32 as evaluated; channels_last, and on the CPU a frozen TorchScript graph (about half eager's time)
            fast = prepare_for_inference(model, device, amp=None, channels_last=True)
            return cls(fast, config, runtime="torch", device=device, batch_size=batch_size,
                       checkpoint_dir=checkpoint_dir, cam_model=model)
        if runtime == "onnx":
            path = Path(checkpoint_dir)
            if path.suffix == ".onnx":  # an exported file with its config beside it (`headct export`)
                beside = path.with_suffix(".config.json")
                if not beside.is_file():
                    raise InputError(path, f"no {beside.name} beside it (`headct export` writes one)")
                config = parse_config_json(beside.read_bytes(), str(beside))
                return cls(OnnxModel(path, config, threads=threads), config, runtime="onnx", batch_size=batch_size)
            config = read_checkpoint_config(path)
            model = OnnxModel(onnx_for_checkpoint(path), config, threads=threads)
            return cls(model, config, runtime="onnx", device="cpu", batch_size=batch_size, checkpoint_dir=path)
        raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")

    # --- what the model is ---------------------------------------------------

    @property
    def labels(self) -> list[str]:
        if not self.config.labels:
            raise InputError(self.checkpoint_dir, "the checkpoint config names no labels")
        return list(self.config.labels)

    @property
    def label_kind(self) -> str:
        return str(self.config.label_kind)

    @property
    def thresholds(self) -> dict[str, float]:
        frozen = self.config.thresholds or {}
        return {label: float(frozen.get(label, DEFAULT_THRESHOLD)) for label in self.labels}

    @property
    def temperature(self) -> float:
        return self.config.applied_temperature

    @functools.cached_property
    def rule(self) -> DecisionRule:
        """The checkpoint's labels, label kind, temperature and thresholds (``headct.decide``)."""
        return DecisionRule(tuple(self.labels), self.label_kind, self.temperature, self.thresholds)

    @property
    def input_size(self) -> int:
        size = self.config.input.size
        if not size:
            raise InputError(self.checkpoint_dir, "the checkpoint config has no input size")
        return int(size)

    def model_card(self) -> dict[str, Any]:
        """The ``model`` block of every prediction: name, version, labels, thresholds, provenance, intended use."""
        return {
            "name": self.config.model.name,
            "version": self.config.headct_version,
            "labels": self.labels,
            "thresholds": self.thresholds,
            "provenance": dataclasses.asdict(self.config.provenance),
            "intended_use": self.config.intended_use,
        }

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers: the model card plus its input and calibration."""
        info = self.config.input
        return {
            **self.model_card(),
            "task": self.config.task,
            "label_kind": self.label_kind,
            "temperature": self.temperature,
            "input_kind": info.kind,
            "windows": info.windows,
            "size": info.size,
            "context": info.context,
            "image_channels": info.image_channels,  # 8-bit models: images per slice, made by input_windows
            "input_windows": self.config.input_windows,
            "level": self.config.model.level,
            "runtime": self.runtime,
        }

    # --- predicting ----------------------------------------------------------

    def predict(self, source: str | os.PathLike | Volume | Sequence[Volume], *,
                series_rules: SelectionRules | None = None) -> dict[str, Any]:
        """The prediction JSON (as a dict) for one study: a path, a Volume, or one study's Volumes.

        Only the series that ``series_rules`` choose are analysed (see :mod:`headct.io.series`).
        """
        if isinstance(source, Volume):
            studies = choose_series([_study_of([source], "")], series_rules)
        elif isinstance(source, Sequence) and not isinstance(source, str) and all(isinstance(v, Volume) for v in source):
            studies = choose_series(group_studies(list(source), ""), series_rules)
        else:
            studies = read_studies(Path(source), series_rules)
        if len(studies) != 1:
            raise InputError(source, f"holds {len(studies)} studies; Predictor.predict takes one "
                                     "(use Predictor.predict_many or `headct predict`)")
        if isinstance(studies[0], InputError):
            raise studies[0]
        return self.predict_study(studies[0])

    def predict_many(self, path: str | os.PathLike, *,
                     series_rules: SelectionRules | None = None) -> Iterator[dict[str, Any] | InputError]:
        """Every study under ``path`` in turn; one that cannot be read comes back as its InputError."""
        for item in iter_studies(Path(path), series_rules):
            yield item if isinstance(item, InputError) else self._guarded(item)

    def predict_study(self, study: StudyInput) -> dict[str, Any]:
        """The prediction JSON for one study already read."""
        slices: list[dict[str, Any]] = []
        slice_probs, series_probs = [], []
        for volume in study.volumes:
            probs, series = self.volume_probabilities(volume, study.source)
            slice_probs.append(probs)
            if series is not None:
                series_probs.append(series)
            uids = volume.slice_uids or [f"{i}" for i in range(volume.num_slices)]
            for index, (uid, p) in enumerate(zip(uids, probs, strict=True)):
                slices.append({
                    "index": index,
                    "uid": uid,
                    "series": volume.series_uid,
                    "probabilities": self._named(p),
                    "positive": self._positive(p[None])[0],
                })
        pooled = np.concatenate(series_probs if series_probs else slice_probs)
        study_p = self._aggregate(pooled)
        warnings = list(study.warnings) + [w for v in study.volumes for w in v.warnings]
        if len(study.volumes) > 1:
            warnings.append(f"study has {len(study.volumes)} series; slices are listed series by series")
        if self.config.synthetic:
            warnings.append(SYNTHETIC_WARNING)
        return {
            "study": study.key,
            "model": self.model_card(),
            "slices": slices,
            "study_probabilities": self._named(study_p),
            "study_positive": self._positive(study_p[None])[0],
            "warnings": warnings,
            "series": study.series,
            "gaps": study.gaps,
        }

    def volume_probabilities(self, volume: Volume, source: str = "") -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities of one series: per slice ``[S, n]``, and ``[n]`` for series models."""
        pixels = self.model_input(volume, source)
        with self._lock:
            out = series_logits(self.model, pixels, batch_size=self.batch_size, device=self.device,
                                tta_flip=self.config.tta_flip)
        probs = self.rule.probabilities(out.slice_logits)
        series = self.rule.probabilities(out.series_logits[None]) if out.series_logits is not None else None
        return probs, series

    def model_input(self, volume: Volume, source: str = "") -> np.ndarray:
        """The volume resampled to the model's input size, after checking its kind fits the model."""
        expected = self.config.input.kind
        windows = self.config.input_windows or []
        if volume.kind == "hu" and expected == "uint8" and windows:
            # an 8-bit model trained on pre-windowed images: window the HU as those images were made,
            # one image per recorded window in the model's channel order ([S, C, H, W] for several)
            images = [to_uint8(volume.pixels, w if isinstance(w, str) else tuple(w)) for w in windows]
            return resample_slices(images[0] if len(images) == 1 else np.stack(images, axis=1), self.input_size)
        images_per_slice = self.config.input.image_channels
        if volume.kind == "uint8" and images_per_slice > 1:
            raise InputError(source or None, f"this series has one 8-bit image per slice, but the model reads "
                                             f"{images_per_slice} per slice (windows {windows or 'not recorded'}); "
                                             "give it the CT study in Hounsfield units (DICOM or NIfTI) to window")
        if volume.kind != expected:
            what = {"hu": "Hounsfield units (DICOM or NIfTI CT)", "uint8": "8-bit windowed images (PNG)"}
            unmatched = " and records no input window to apply to HU" if volume.kind == "hu" else ""
            raise InputError(source or None, f"this is {what.get(volume.kind, volume.kind)}, but the model reads "
                                             f"{what.get(expected, expected)}{unmatched}; "
                                             "use a model trained on that input")
        return resample_slices(volume.pixels, self.input_size)

    def overlay_images(self, study: StudyInput, result: dict[str, Any]) -> Iterator[tuple[Volume, int, str, np.ndarray]]:
        """Grad-CAM overlays (RGB) of every positive slice and label: ``(volume, position, label, rgb)``.

        Each overlay is at the slice's own resolution; the PNG writer and the DICOM
        secondary captures (``headct.dicom_out``) both draw from here.
        """
        model = self._torch_model()
        by_series: dict[str | None, dict[str, list[int]]] = {}
        for entry in result["slices"]:
            for label in entry["positive"]:
                if label not in NEGATIVE_CLASSES:
                    by_series.setdefault(entry["series"], {}).setdefault(label, []).append(entry["index"])
        for volume in study.volumes:
            wanted = by_series.get(volume.series_uid, {})
            if not wanted:
                continue
            pixels = self.model_input(volume, study.source)
            for label, positions in wanted.items():
                with self._lock:
                    cams = series_maps(model, pixels, positions, self.labels.index(label), None, self.batch_size)
                for position, cam in zip(positions, cams, strict=True):
                    original = to_original(cam, volume.pixels.shape[1:])
                    yield volume, position, label, overlay(volume.pixels[position], original, volume.kind)

    def write_overlays(self, study: StudyInput, result: dict[str, Any], folder: Path) -> list[Path]:
        """Grad-CAM overlays (PNG) of every positive slice and label, at the slice's own resolution."""
        numbers = {id(volume): number for number, volume in enumerate(study.volumes)}
        written: list[Path] = []
        for volume, position, label, rgb in self.overlay_images(study, result):
            prefix = f"s{numbers[id(volume)]}_" if len(study.volumes) > 1 else ""
            path = folder / f"{prefix}{position:03d}_{label}.png"
            write_png(path, rgb)
            written.append(path)
        return written

    def load_explainer(self) -> None:
        """Load the torch model Grad-CAM needs and run it once, so the first real map waits for neither.

        (An onnx Predictor loads it lazily; torch's first backward pass costs seconds of setup.)
        """
        blank = Volume(np.full((3, self.input_size, self.input_size), -1000, np.int16), kind=self.config.input.kind)
        if blank.kind == "uint8" and self.config.input.image_channels == 1:  # several images: windowed from HU
            blank = Volume(np.zeros(blank.pixels.shape, np.uint8), kind="uint8")
        self.class_maps(blank, self.labels[0], [1])

    def class_maps(self, volume: Volume, label: str, positions: Sequence[int] | None = None,
                   source: str = "") -> np.ndarray:
        """Grad-CAM of ``label`` on slices of one series (default all): float32 ``[n, H, W]`` in 0..1 at its resolution.

        The same maps as ``write_overlays`` (``headct.explain``), for the viewer's overlay volume.
        """
        model = self._torch_model()
        pixels = self.model_input(volume, source)
        wanted = list(range(volume.num_slices)) if positions is None else list(positions)
        with self._lock:
            cams = series_maps(model, pixels, wanted, self.labels.index(label), None, self.batch_size)
        return np.stack([to_original(cam, volume.pixels.shape[1:]) for cam in cams]).astype(np.float32)

    # --- helpers ----------------------------------------------------------------

    def _guarded(self, study: StudyInput) -> dict[str, Any] | InputError:
        try:
            return self.predict_study(study)
        except InputError as err:
            return err

    def _named(self, p: np.ndarray) -> dict[str, float]:
        return {label: round(float(v), DECIMALS) for label, v in zip(self.labels, p, strict=True)}

    def _positive(self, prob: np.ndarray) -> list[list[str]]:
        return self.rule.positive(prob)

    def _aggregate(self, prob: np.ndarray) -> np.ndarray:
        return self.rule.aggregate(prob)

    def _torch_model(self) -> nn.Module:
        """The torch model (Grad-CAM needs gradients; an onnx Predictor loads it on first use)."""
        if self._cam_model is None and self.runtime == "torch":
            self._cam_model = getattr(self.model, "model", self.model)  # unwrap prepare_for_inference
        if self._cam_model is None:
            if self.checkpoint_dir is None:
                raise ValueError("overlays need the torch model; this predictor has no checkpoint directory")
            self._cam_model, _ = load_checkpoint(self.checkpoint_dir)
        return self._cam_model


# --- reading studies ---------------------------------------------------------

@dataclass(frozen=True)
class DicomStudyFiles:
    """One study's DICOM files, out of a folder that holds several studies side by side: a source of its own."""

    folder: Path
    files: tuple[Path, ...]


Source = Path | DicomStudyFiles


def study_sources(path: Path, info: DistInfo | None = None) -> list[Source]:
    """What to read, one at a time: the file, a study folder, each entry of a folder of studies, or
    each study of a folder of DICOM files.

    A folder holding only sub-folders is a folder of studies (one source each); a
    folder of NIfTI files gives one source per file; a folder of PNG slices is one
    source. A folder with DICOM files (and sub-folders) is split into its
    studies by their headers (:func:`headct.io.dicom.dicom_studies`), so a flat
    folder of many studies (RSNA's) is read, predicted and dropped a study at a
    time, and under torchrun shared out study by study; ``info`` shares the
    header scan among the processes.
    """
    if not path.is_dir():
        fault = entry_fault(path)  # a named pipe is refused here, never opened
        if fault is not None:
            raise InputError(path, fault)
        return [path]
    files, folders, refused = list_entries(path)
    if folders and not files:
        for err in refused:  # entries read_dicom will not see (it reads each study folder)
            log.warning("%s", err)
        return folders
    if files and all(_is_nifti(p) for p in files):
        return files
    if files and all(_is_image(p) for p in files):
        return [path]
    return _dicom_study_sources(path, info)


def _dicom_study_sources(path: Path, info: DistInfo | None) -> list[Source]:
    found = find_dicom_files(path)  # logs what it refuses, once
    if not found.files:
        return [path]  # read_dicom says why
    if info is not None and info.enabled:  # each process scans a share of the headers
        parts = gather_objects(dicom_studies(found.files[info.rank::info.world_size]), info)
    else:
        parts = [dicom_studies(found.files)]
    studies: dict[str | None, list[Path]] = {}
    for part in parts:
        for uid, members in part.items():
            studies.setdefault(uid, []).extend(members)
    known = sorted(uid for uid in studies if uid is not None)
    groups = [studies[uid] for uid in known] or [[]]
    groups[0] = [*studies.get(None, []), *groups[0]]  # files of no known study: read (and reported) once
    return [DicomStudyFiles(path, tuple(sorted(group))) for group in groups]


def read_studies(source: Path, series_rules: SelectionRules | None = None, *,
                 errors: list[InputError] | None = None) -> list[StudyInput | InputError]:
    """The studies in one source (file or folder), read, grouped by StudyInstanceUID, series chosen.

    PNG/JPG slices in one folder are grouped as the cache groups them
    (``<group>_<digits>.png`` is slice ``<digits>`` of study ``<group>``).
    Studies without a StudyInstanceUID are keyed by a hash of where they came from.
    A study none of whose series may be analysed comes back as its InputError.
    """
    return choose_series(_read_source(source, errors), series_rules)


def _read_source(source: Source, errors: list[InputError] | None = None) -> list[StudyInput]:
    """The studies in one source, every series kept (before series selection)."""
    if isinstance(source, DicomStudyFiles):
        return group_studies(read_dicom_files(source.files, source.folder, errors=errors), str(source.folder))
    if _is_image(source):
        return [StudyInput(_path_key(source), [read_image(source)], [], str(source))]
    if _is_nifti(source):
        return [StudyInput(_path_key(source), [read_nifti(source)], [], str(source))]
    files = list_entries(source)[0] if source.is_dir() else []
    if files and all(_is_image(p) for p in files):
        return [StudyInput(_path_key(source, group), [read_image(members)], [], str(source))
                for group, members in _image_groups(files).items()]
    # Skipped files are logged once by read_dicom, not copied into every study's warnings (they have
    # no study, and their names must not reach the outputs).
    return group_studies(read_dicom(source, errors=errors), str(source))


def choose_series(studies: list[StudyInput], series_rules: SelectionRules | None = None) -> list[StudyInput | InputError]:
    """Each study with only the series to analyse (:func:`headct.io.series.select_series`), tilt-corrected.

    The study gains ``series`` (analysed and rejected series with reasons),
    ``gaps`` and the selection's warnings; a study with nothing to analyse
    becomes an InputError naming the study.
    """
    chosen: list[StudyInput | InputError] = []
    for study in studies:
        try:
            selection = select_series(study.volumes, series_rules)
        except InputError as err:
            chosen.append(InputError(f"study {study.key}", err.fault))
            continue
        chosen.append(StudyInput(study.key, selection.analysed, [*study.warnings, *selection.warnings],
                                 study.source, selection.report, selection.gaps))
    return chosen


def iter_studies(path: Path, series_rules: SelectionRules | None = None) -> Iterator[StudyInput | InputError]:
    """Every study under ``path``, source by source with a progress bar; unreadable sources as errors."""
    for _, study in studies_of(list(enumerate(study_sources(path))), series_rules):
        yield study


def studies_of(sources: Sequence[tuple[int, Source]], series_rules: SelectionRules | None = None
               ) -> Iterator[tuple[int, StudyInput | InputError]]:
    """The studies of ``(position, source)`` pairs, each with the position of its first source.

    Neighbouring sources holding the same study (a study folder with one
    sub-folder per series) are merged before series selection, so the rules
    see all the study's series; one study is held back at a time.
    """
    pending: tuple[int, StudyInput] | None = None
    # disable=None: a bar on a terminal (one study too), none when redirected to a file
    for position, source in tqdm(sources, desc="predicting", unit="source", disable=None):
        try:
            studies = _read_source(source)
        except InputError as err:
            yield position, err
            continue
        for study in studies:
            if pending is not None and pending[1].key == study.key:
                pending[1].volumes.extend(study.volumes)
                pending[1].warnings.extend(w for w in study.warnings if w not in pending[1].warnings)
                continue
            if pending is not None:
                yield from ((pending[0], s) for s in choose_series([pending[1]], series_rules))
            pending = (position, study)
    if pending is not None:
        yield from ((pending[0], s) for s in choose_series([pending[1]], series_rules))


def group_studies(volumes: list[Volume], source: str) -> list[StudyInput]:
    """Volumes grouped by study (StudyInstanceUID, or a hash of the source when there is none)."""
    groups: dict[str, list[Volume]] = {}
    for volume in volumes:
        groups.setdefault(_study_key(volume, source), []).append(volume)
    return [StudyInput(key, vols, [], source) for key, vols in groups.items()]


def _study_of(volumes: list[Volume], source: str) -> StudyInput:
    return group_studies(volumes, source)[0]


def _study_key(volume: Volume, source: str) -> str:
    if volume.study_uid:
        return volume.study_uid
    if volume.series_uid:
        return short_hash(volume.series_uid)
    if source:
        return short_hash(str(Path(source).resolve()))
    return hashlib.sha256(np.ascontiguousarray(volume.pixels).tobytes()).hexdigest()[:16]


def _image_groups(files: list[Path]) -> dict[str, list[Path]]:
    """Image files by study, each in slice-number order (the cache's PNG grouping)."""

    groups: dict[str, list[tuple[int, Path]]] = {}
    for file in files:
        parsed = split_group(file.stem)
        group, number = parsed if parsed else (file.stem, 0)
        groups.setdefault(group, []).append((number, file))
    return {group: [f for _, f in sorted(members)] for group, members in groups.items()}


def _path_key(path: Path, group: str = "") -> str:
    return short_hash(f"{path.resolve()}#{group}")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


# --- the command -------------------------------------------------------------

def predict_command(args: argparse.Namespace,
                    on_result: Callable[[Predictor, StudyInput, dict[str, Any]], None] | None = None) -> int:
    """``headct predict PATH --model CKPT --out OUT [--overlays] [--no-resume]``: stream, resume, summarise.

    Under torchrun each process predicts every world_size-th source (gloo: several
    may share a GPU); rank 0 then writes the table in the order one process would.
    ``on_result(predictor, study, result)`` runs after each study's JSON is written
    (the CLI's ``--dicom-out`` hands the result to :mod:`headct.dicom_out` there).
    """
    if not Path(args.path).exists():  # before the model loads and before anything is written
        raise InputError(args.path, "no such file or folder")
    rules = load_rules(getattr(args, "series_rules", None), analyse_all=getattr(args, "series", "auto") == "all")
    info = init_distributed(args.device if args.runtime == "torch" else "cpu", backend="gloo")
    predictor = Predictor.from_checkpoint(args.model, runtime=args.runtime, device=info.device)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    table = out / "predictions.csv"
    finished = finished_studies(out, predictor) if getattr(args, "resume", True) else {}
    barrier(info)  # every process lists what was there before any of them writes a study
    streaming = not info.enabled  # one process appends as it goes; several merge at the end
    if streaming:
        write_csv(table, list(finished.values()), predictor.labels)
    new: list[tuple[int, dict[str, Any]]] = []
    kept = skipped = 0
    for position, study in studies_of(rank_share(study_sources(Path(args.path), info), info), rules):
        if isinstance(study, InputError):
            skipped += 1
            log.error("skipped: %s", study)
            continue
        name = output_name(study.key)
        if name in finished:
            kept += 1
            log.info("study %s already predicted in this folder (--no-resume to redo it)", name)
            continue
        result = predictor._guarded(study)
        if isinstance(result, InputError):
            skipped += 1
            log.error("skipped: %s", result)
            continue
        if args.overlays:
            predictor.write_overlays(study, result, inside(out, Path("overlays") / name))
        write_json(inside(out, Path(f"{name}.json")), result)
        if on_result is not None:
            on_result(predictor, study, result)
        if streaming:
            append_csv(table, result, predictor.labels)
        new.append((position, result))
    results = merge_in_order(new, info)  # source order, as one process would have them
    kept, skipped = (int(sum(gather_objects(n, info))) for n in (kept, skipped))
    if info.is_main:
        if not streaming:
            write_csv(table, [*finished.values(), *results], predictor.labels)
        print(summary_line(len(results), kept, skipped, out))
    close_distributed(info)
    return 0 if results or kept or not skipped else 1


def summary_line(predicted: int, kept: int, skipped: int, out: Path) -> str:
    """The command's last line: how many studies, and the real folder they are in."""
    if not predicted and not kept:
        return f"no study predicted ({skipped} input(s) skipped, see above); nothing written to {out}/"
    parts = [f"{predicted} {'study' if predicted == 1 else 'studies'} → {out}/"]
    if kept:
        parts.append(f"{kept} already there (resumed)")
    if skipped:
        parts.append(f"{skipped} skipped")
    return ", ".join(parts) + f"; table: {out / 'predictions.csv'}"


def output_name(study_key: str) -> str:
    """A file name for a study: its UID when that is a valid DICOM UID, else a 16-hex hash of it.

    Header values are untrusted: ``../`` or an absolute path must not steer a
    write, and a 300-character value must not exceed the file system's name limit.
    """
    if _DICOM_UID.fullmatch(study_key) or _HEX_KEY.fullmatch(study_key):
        return study_key
    return short_hash(study_key)


def inside(out: Path, relative: Path) -> Path:
    """``out / relative``, refused (InputError) unless it resolves inside ``out``."""
    path = (out / relative).resolve()
    if not path.is_relative_to(out.resolve()):
        raise InputError(None, "an output path would leave --out; refused")
    return path


def write_json(path: Path, result: dict[str, Any]) -> None:
    """One study's prediction as JSON, written atomically."""
    atomic.write_text(path, json.dumps(result, indent=2) + "\n")


def finished_studies(out: Path, predictor: Predictor) -> dict[str, dict[str, Any]]:
    """The studies already predicted in ``out`` by the same model card, by output name (sorted).

    The JSON files are the record: a kill between a JSON and its CSV rows
    leaves a table that the rebuild from these puts right.
    """
    results = {}
    for file in sorted(out.glob("*.json")):
        try:
            result = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(result, dict) and result.get("model") == predictor.model_card() and "slices" in result:
            results[file.stem] = result
    return results


def append_csv(path: Path, result: dict[str, Any], labels: Sequence[str]) -> None:
    """Append one study's rows (its slices, then the study) in one write, so a kill keeps whole blocks."""
    data = _csv_rows([result], labels).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path.name}")
        os.fsync(fd)
    finally:
        os.close(fd)


def write_csv(path: Path, results: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    """All studies in one CSV, atomically: per study its slice rows, then its study row (``level`` column)."""
    header = io.StringIO()
    csv.writer(header).writerow(["level", "study", "series", "index", "uid",
                                 *[f"p_{label}" for label in labels], "positive"])
    atomic.write_text(path, header.getvalue() + _csv_rows(results, labels))


def _csv_rows(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for result in results:
        for s in result["slices"]:
            writer.writerow(["slice", result["study"], s["series"] or "", s["index"], s["uid"],
                             *[s["probabilities"][label] for label in labels], "|".join(s["positive"])])
        writer.writerow(["study", result["study"], "", -1, result["study"],
                         *[result["study_probabilities"][label] for label in labels],
                         "|".join(result["study_positive"])])
    return buffer.getvalue()
