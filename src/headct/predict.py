"""Predictor: a checkpoint and a study in, the prediction JSON out.

``Predictor.predict(path_or_volume)`` gives one dict per study, DESIGN.md's
prediction contract: ``study`` (StudyInstanceUID, or a hash when there is
none), ``model`` {name, version, labels, thresholds}, ``slices`` [{index, uid,
probabilities, positive}] in scan order, ``study_probabilities``,
``study_positive`` and ``warnings``. Each slice also names its ``series``.

Volumes are resampled to the checkpoint's input size with the cache's own
function (``headct.data.resample.resample_slices``), run through the shared
forward path (``headct.inference.series_logits``), scaled by the checkpoint's
temperature and decided with its frozen thresholds. Study probabilities and
decisions follow ``headct evaluate`` (``aggregate_probabilities``, ``decisions``),
so a study scores the same in an evaluation and in deployment.

The runtime is torch or onnxruntime (``runtime="onnx"``: the ``model.onnx``
beside the checkpoint's config, exported into the checkpoint on first use).
Inference is serialised by a lock, so one Predictor serves many threads.

``headct predict PATH --model CKPT --out OUT`` streams every study under PATH
(a DICOM file, series or study folder, a folder of many studies, a PNG or a
NIfTI file) to ``OUT/<study>.json`` and ``OUT/predictions.csv``; a study that
cannot be read is reported in one line and skipped.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from headct import __version__, atomic
from headct.errors import InputError
from headct.inference import probabilities, series_logits
from headct.io.privacy import short_hash
from headct.io.volume import Volume

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NEGATIVE_CLASSES = ("non-stroke",)
"""Multi-class labels that mean "nothing found": never drawn as overlays."""
DECIMALS = 6


@dataclass
class StudyInput:
    """One study read from disk: its series (scan order each) and what reading it noted."""

    key: str
    volumes: list[Volume]
    warnings: list[str] = field(default_factory=list)
    source: str = ""


class Predictor:
    """A loaded checkpoint, ready to predict studies (thread-safe)."""

    def __init__(self, model: nn.Module, config: dict[str, Any], *, runtime: str = "torch",
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
                        device: str | torch.device | None = None, batch_size: int = 32,
                        threads: int | None = None) -> Predictor:
        """Load a checkpoint directory for the torch or the onnx runtime (CPU for onnx)."""
        from headct.checkpoint import load_checkpoint, read_checkpoint_config

        if runtime == "torch":
            from headct.inference import prepare_for_inference

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model, config = load_checkpoint(checkpoint_dir, map_location=device)
            # fp32 as evaluated; channels_last halves CPU latency of the depthwise convs
            fast = prepare_for_inference(model, device, amp=None, channels_last=True)
            return cls(fast, config, runtime="torch", device=device, batch_size=batch_size,
                       checkpoint_dir=checkpoint_dir, cam_model=model)
        if runtime == "onnx":
            from headct.export import OnnxModel, onnx_for_checkpoint

            path = Path(checkpoint_dir)
            if path.suffix == ".onnx":  # an exported file with its config beside it (`headct export`)
                beside = path.with_suffix(".config.json")
                if not beside.is_file():
                    raise InputError(path, f"no {beside.name} beside it (`headct export` writes one)")
                config = json.loads(beside.read_text())
                return cls(OnnxModel(path, config, threads=threads), config, runtime="onnx", batch_size=batch_size)
            config = read_checkpoint_config(path)
            model = OnnxModel(onnx_for_checkpoint(path), config, threads=threads)
            return cls(model, config, runtime="onnx", device="cpu", batch_size=batch_size, checkpoint_dir=path)
        raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")

    # --- what the model is ---------------------------------------------------

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    @property
    def label_kind(self) -> str:
        return str(self.config.get("label_kind") or "multilabel")

    @property
    def thresholds(self) -> dict[str, float]:
        frozen = self.config.get("thresholds") or {}
        return {label: float(frozen.get(label, 0.5)) for label in self.labels}

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperature") or 1.0)

    @property
    def input_size(self) -> int:
        size = self.config["input"].get("size")
        if not size:
            raise InputError(self.checkpoint_dir, "the checkpoint config has no input size")
        return int(size)

    def model_card(self) -> dict[str, Any]:
        """The ``model`` block of every prediction: name, version, labels, thresholds."""
        return {
            "name": self.config["model"]["name"],
            "version": str(self.config.get("headct_version") or __version__),
            "labels": self.labels,
            "thresholds": self.thresholds,
        }

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers: the model card plus its input and calibration."""
        info = self.config["input"]
        return {
            **self.model_card(),
            "task": self.config.get("task"),
            "label_kind": self.label_kind,
            "temperature": self.temperature,
            "input_kind": info.get("kind"),
            "windows": info.get("windows"),
            "size": info.get("size"),
            "context": info.get("context"),
            "level": self.config["model"].get("level", "slice"),
            "runtime": self.runtime,
        }

    # --- predicting ----------------------------------------------------------

    def predict(self, source: str | os.PathLike | Volume | Sequence[Volume]) -> dict[str, Any]:
        """The prediction JSON (as a dict) for one study: a path, a Volume, or one study's Volumes."""
        if isinstance(source, Volume):
            return self.predict_study(_study_of([source], ""))
        if isinstance(source, Sequence) and not isinstance(source, str) and all(isinstance(v, Volume) for v in source):
            studies = group_studies(list(source), "")
        else:
            studies = read_studies(Path(source))
        if len(studies) != 1:
            raise InputError(source, f"holds {len(studies)} studies; Predictor.predict takes one "
                                     "(use Predictor.predict_many or `headct predict`)")
        return self.predict_study(studies[0])

    def predict_many(self, path: str | os.PathLike) -> Iterator[dict[str, Any] | InputError]:
        """Every study under ``path`` in turn; one that cannot be read comes back as its InputError."""
        for item in iter_studies(Path(path)):
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
        return {
            "study": study.key,
            "model": self.model_card(),
            "slices": slices,
            "study_probabilities": self._named(study_p),
            "study_positive": self._positive(study_p[None])[0],
            "warnings": warnings,
        }

    def volume_probabilities(self, volume: Volume, source: str = "") -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities of one series: per slice ``[S, n]``, and ``[n]`` for series models."""
        pixels = self.model_input(volume, source)
        with self._lock:
            out = series_logits(self.model, pixels, batch_size=self.batch_size, device=self.device,
                                tta_flip=bool(self.config.get("tta_flip")))
        probs = probabilities(out.slice_logits, self.label_kind, self.temperature).numpy()
        series = (probabilities(out.series_logits[None], self.label_kind, self.temperature).numpy()
                  if out.series_logits is not None else None)
        return probs, series

    def model_input(self, volume: Volume, source: str = "") -> np.ndarray:
        """The volume resampled to the model's input size, after checking its kind fits the model."""
        from headct.data.resample import resample_slices

        expected = self.config["input"].get("kind", "hu")
        windows = self.config.get("input_windows") or []
        if volume.kind == "hu" and expected == "uint8" and len(windows) == 1:
            # an 8-bit model trained on pre-windowed images: window the HU as those images were made
            from headct.windows import to_uint8

            window = windows[0] if isinstance(windows[0], str) else tuple(windows[0])
            return resample_slices(to_uint8(volume.pixels, window), self.input_size)
        if volume.kind != expected:
            what = {"hu": "Hounsfield units (DICOM or NIfTI CT)", "uint8": "8-bit windowed images (PNG)"}
            unmatched = " and records no single input window to apply to HU" if volume.kind == "hu" else ""
            raise InputError(source or None, f"this is {what.get(volume.kind, volume.kind)}, but the model reads "
                                             f"{what.get(expected, expected)}{unmatched}; "
                                             "use a model trained on that input")
        return resample_slices(volume.pixels, self.input_size)

    def write_overlays(self, study: StudyInput, result: dict[str, Any], folder: Path) -> list[Path]:
        """Grad-CAM overlays (PNG) of every positive slice and label, at the slice's own resolution."""
        from headct.explain import _maps_for, overlay, to_original, write_png

        model = self._torch_model()
        written: list[Path] = []
        by_series = {}
        for entry in result["slices"]:
            for label in entry["positive"]:
                if label not in NEGATIVE_CLASSES:
                    by_series.setdefault(entry["series"], {}).setdefault(label, []).append(entry["index"])
        for number, volume in enumerate(study.volumes):
            wanted = by_series.get(volume.series_uid, {})
            if not wanted:
                continue
            pixels = self.model_input(volume, study.source)
            prefix = f"s{number}_" if len(study.volumes) > 1 else ""
            for label, positions in wanted.items():
                with self._lock:
                    cams = _maps_for(model, pixels, positions, self.labels.index(label), None, self.batch_size)
                for position, cam in zip(positions, cams, strict=True):
                    original = to_original(cam, volume.pixels.shape[1:])
                    path = folder / f"{prefix}{position:03d}_{label}.png"
                    write_png(path, overlay(volume.pixels[position], original, volume.kind))
                    written.append(path)
        return written

    # --- helpers ----------------------------------------------------------------

    def _guarded(self, study: StudyInput) -> dict[str, Any] | InputError:
        try:
            return self.predict_study(study)
        except InputError as err:
            return err

    def _named(self, p: np.ndarray) -> dict[str, float]:
        return {label: round(float(v), DECIMALS) for label, v in zip(self.labels, p, strict=True)}

    def _positive(self, prob: np.ndarray) -> list[list[str]]:
        from headct.evaluate import decisions

        chosen = decisions(prob, _TaskView(self.labels, self.label_kind), self.thresholds)
        return [[label for label, d in zip(self.labels, row, strict=True) if d] for row in chosen]

    def _aggregate(self, prob: np.ndarray) -> np.ndarray:
        from headct.evaluate import aggregate_probabilities

        return aggregate_probabilities(prob, _TaskView(self.labels, self.label_kind))

    def _torch_model(self) -> nn.Module:
        """The torch model (Grad-CAM needs gradients; an onnx Predictor loads it on first use)."""
        if self._cam_model is None and self.runtime == "torch":
            self._cam_model = getattr(self.model, "model", self.model)  # unwrap prepare_for_inference
        if self._cam_model is None:
            from headct.checkpoint import load_checkpoint

            if self.checkpoint_dir is None:
                raise ValueError("overlays need the torch model; this predictor has no checkpoint directory")
            self._cam_model, _ = load_checkpoint(self.checkpoint_dir)
        return self._cam_model


@dataclass(frozen=True)
class _TaskView:
    """The two fields of ``headct.tasks.Task`` that aggregation and decisions read."""

    labels: list[str]
    kind: str

    @property
    def num_outputs(self) -> int:
        return len(self.labels)


# --- reading studies ---------------------------------------------------------

def study_sources(path: Path) -> list[Path]:
    """What to read, one at a time: the file, a study folder, or each entry of a folder of studies.

    A folder holding only sub-folders is a folder of studies (one source each); a
    folder of NIfTI files gives one source per file; any other folder is one
    source (DICOM, which may still hold several studies, or PNG slices).
    """
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_file():
        return [path]
    files, folders = _entries(path)
    if folders and not files:
        return folders
    if files and all(_is_nifti(p) for p in files):
        return files
    return [path]


def read_studies(source: Path) -> list[StudyInput]:
    """The studies in one source (file or folder), read and grouped by StudyInstanceUID.

    PNG/JPG slices in one folder are grouped as the cache groups them
    (``<group>_<digits>.png`` is slice ``<digits>`` of study ``<group>``).
    Studies without a StudyInstanceUID are keyed by a hash of where they came from.
    """
    from headct.io import read_dicom, read_image, read_nifti

    if _is_image(source):
        return [StudyInput(_path_key(source), [read_image(source)], [], str(source))]
    if _is_nifti(source):
        return [StudyInput(_path_key(source), [read_nifti(source)], [], str(source))]
    files, _ = _entries(source) if source.is_dir() else ([], [])
    if files and all(_is_image(p) for p in files):
        return [StudyInput(_path_key(source, group), [read_image(members)], [], str(source))
                for group, members in _image_groups(files).items()]
    errors: list[InputError] = []
    volumes = read_dicom(source, errors=errors)
    studies = group_studies(volumes, str(source))
    skipped = [_relative(err, source) for err in errors]
    for study in studies:
        study.warnings.extend(skipped)  # a skipped file has no study; every study of the source names it
    return studies


def iter_studies(path: Path) -> Iterator[StudyInput | InputError]:
    """Every study under ``path``, source by source with a progress bar; unreadable sources as errors."""
    sources = study_sources(path)
    for source in tqdm(sources, desc="predicting", unit="source", disable=len(sources) < 2):
        try:
            yield from read_studies(source)
        except InputError as err:
            yield err


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


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.name.upper() != "DICOMDIR"]
    return files, [p for p in entries if p.is_dir()]


def _image_groups(files: list[Path]) -> dict[str, list[Path]]:
    """Image files by study, each in slice-number order (the cache's PNG grouping)."""
    from headct.data.stroke import split_group

    groups: dict[str, list[tuple[int, Path]]] = {}
    for file in files:
        parsed = split_group(file.stem)
        group, number = parsed if parsed else (file.stem, 0)
        groups.setdefault(group, []).append((number, file))
    return {group: [f for _, f in sorted(members)] for group, members in groups.items()}


def _path_key(path: Path, group: str = "") -> str:
    return short_hash(f"{path.resolve()}#{group}")


def _relative(err: InputError, root: Path) -> str:
    """An InputError's line with its path relative to the source (no server or home paths)."""
    path = Path(err.path) if err.path else None
    if path is not None:
        try:
            return f"{path.relative_to(root)}: {err.fault}"
        except ValueError:
            return f"{path.name}: {err.fault}"
    return err.fault


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


# --- the command -------------------------------------------------------------

def predict_command(args: argparse.Namespace) -> int:
    """``headct predict PATH --model CKPT --out OUT [--overlays] [--runtime torch|onnx]``."""
    predictor = Predictor.from_checkpoint(args.model, runtime=args.runtime, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, skipped = [], 0
    for study in iter_studies(Path(args.path)):
        result = study if isinstance(study, InputError) else predictor._guarded(study)
        if isinstance(result, InputError):
            skipped += 1
            log.error("skipped: %s", result)
            continue
        write_json(out / f"{result['study']}.json", result)
        if args.overlays:
            predictor.write_overlays(study, result, out / "overlays" / result["study"])
        results.append(result)
    write_csv(out / "predictions.csv", results, predictor.labels)
    print(f"{len(results)} studies predicted, {skipped} skipped: {out}/<study>.json and {out / 'predictions.csv'}")
    return 0 if results or not skipped else 1


def write_json(path: Path, result: dict[str, Any]) -> None:
    """One study's prediction as JSON, written atomically."""
    atomic.write_text(path, json.dumps(result, indent=2) + "\n")


def write_csv(path: Path, results: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    """All studies in one CSV: a row per slice, then a row per study (``level`` column)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["level", "study", "series", "index", "uid", *[f"p_{label}" for label in labels], "positive"])
    for result in results:
        for s in result["slices"]:
            writer.writerow(["slice", result["study"], s["series"] or "", s["index"], s["uid"],
                             *[s["probabilities"][label] for label in labels], "|".join(s["positive"])])
    for result in results:
        writer.writerow(["study", result["study"], "", -1, result["study"],
                         *[result["study_probabilities"][label] for label in labels],
                         "|".join(result["study_positive"])])
    atomic.write_text(path, buffer.getvalue())
