"""Checkpoints: one directory, ``model.safetensors`` + ``config.json``, no pickle.

``config.json`` says what the weights are (model name and full arguments,
input kind, windows, size, context, normalisation), what the outputs mean
(task, labels, label kind, thresholds, temperature), how they were trained,
what data they come from (``provenance``), what they are for
(``intended_use``) and with which package versions (layout in
docs/internals.md). It is read into a typed :class:`CheckpointConfig`,
validated once, field by field, when it is read (the way MONAI checks a
bundle's ``metadata.json`` against its schema): every consumer reads fields,
and a bad field is refused with one line naming it (``CheckpointError``).
Configs written by older headct versions are migrated in one place
(:func:`_migrate`).

Loading rebuilds the model by name and arguments, checks the weights file
against the SHA-256 recorded at save (a flipped bit no longer loads) and loads
the weights strictly, so a checkpoint either gives back exactly the saved
model or is refused.

Writes are atomic: a checkpoint is written into a temporary sibling directory
and renamed into place; an existing checkpoint is replaced only once the new
one is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import timm
import torch
from torch import nn

import headct
from headct import atomic
from headct.errors import CheckpointError
from headct.models import ModelSpec, build_model, list_models
from headct.windows import resolve_windows

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""1: headct 0.1.0 (no provenance, intended use or weights hash); 2: the typed config."""
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LABEL_KINDS = ("multilabel", "multiclass")
INPUT_KINDS = ("hu", "uint8")
LEVELS = ("slice", "series")
TARGET_LAYOUTS = ("nchw", "nhwc")
TARGET_GRIDS = ("centred", "padded")
SIZE_RANGE = (8, 2048)          # input side in pixels: a typo must not ask for terabytes
CONTEXT_RANGE = (0, 32)         # neighbours on each side
IMAGE_CHANNELS_RANGE = (1, 16)  # 8-bit images per slice (one per window, e.g. brain and bone)
NUM_CLASSES_RANGE = (0, 10_000)  # 0: a headless encoder
SYNTHETIC_WARNING = "trained on synthetic phantom data — not for clinical use"
INTENDED_USE_SYNTHETIC = "Research only. Trained on synthetic phantom data — not for clinical use."
INTENDED_USE_RESEARCH = "Research only. Not a medical device; not validated for clinical use."
INTENDED_USE_UNKNOWN = "Research only; not for clinical use. Where the training data came from is not recorded."
# Fields that describe the weights themselves: update_checkpoint_config refuses to change them.
FIXED_FIELDS = frozenset({"format_version", "headct_version", "model", "num_classes", "input", "versions",
                          "weights_sha256"})


@dataclass(frozen=True)
class ModelConfig:
    """Which registered model, with which arguments, and how Grad-CAM reads it."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    level: str = "slice"
    target_layers: list[str] = field(default_factory=list)
    target_layout: str = "nchw"
    target_grid: str = "centred"


@dataclass(frozen=True)
class InputConfig:
    """What the model reads: raw kind, windows, side, neighbours, normalisation."""

    kind: str = "hu"
    image_channels: int = 1  # uint8: 8-bit images per slice (one per entry of input_windows)
    windows: list[Any] | None = None
    size: int | None = None
    context: int = 0
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Provenance:
    """Where the training data came from; None where unknown (checkpoints older than the field)."""

    source_format: str | None = None
    synthetic: bool | None = None
    n_studies: int | None = None
    n_slices: int | None = None
    split_how: str | None = None
    calibration: str | None = None


@dataclass(frozen=True)
class CheckpointConfig:
    """``config.json``, typed and validated (see the module docstring)."""

    model: ModelConfig
    num_classes: int
    input: InputConfig
    task: str | None = None
    labels: list[str] | None = None
    label_kind: str | None = None
    thresholds: dict[str, float] | None = None
    temperature: float | None = 1.0  # None: not fitted yet (evaluate fits it on validation)
    training: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
    intended_use: str = INTENDED_USE_UNKNOWN
    weights_sha256: str | None = None
    tta_flip: bool = False  # evaluate and predict average each series' logits with its mirror image's
    input_windows: list[Any] | None = None  # 8-bit models: the HU window of each image (predict windows DICOM so)
    versions: dict[str, str] = field(default_factory=dict)
    headct_version: str = headct.__version__
    format_version: int = FORMAT_VERSION

    @property
    def applied_temperature(self) -> float:
        """The temperature predictions use: the fitted one, or 1 (none) before it is fitted."""
        return 1.0 if self.temperature is None else self.temperature

    @property
    def synthetic(self) -> bool:
        """True when the weights were trained on the phantom's synthetic data."""
        return bool(self.provenance.synthetic)

    def spec(self) -> ModelSpec:
        """The ModelSpec this config describes (enough to feed the model, not to build it)."""
        return ModelSpec(
            name=self.model.name, kwargs=self.model.kwargs, num_classes=self.num_classes,
            input_kind=self.input.kind, image_channels=self.input.image_channels, windows=self.input.windows,
            context=self.input.context,
            level=self.model.level, mean=list(self.input.mean), std=list(self.input.std),
            target_layers=list(self.model.target_layers), target_layout=self.model.target_layout,
            target_grid=self.model.target_grid,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as ``config.json``."""
        return dataclasses.asdict(self)

    def replace(self, **fields: Any) -> CheckpointConfig:
        """A copy with ``fields`` changed, validated again."""
        return config_from_dict({**self.to_dict(), **fields}, "config")


# --- saving and loading ---------------------------------------------------------------

def save_checkpoint(model: nn.Module, directory: str | Path, **config_fields: Any) -> Path:
    """Write ``model`` (its weights and its spec) plus ``config_fields`` as a checkpoint directory.

    Fields: ``size``, ``task``, ``labels``, ``label_kind``, ``thresholds``,
    ``temperature``, ``training``, ``provenance`` (a :class:`Provenance` or its
    dict), ``intended_use`` (default: from ``provenance.synthetic``). An
    existing checkpoint at ``directory`` is replaced; any other non-empty
    directory is refused rather than overwritten.
    """
    directory = Path(directory)
    _refuse_foreign_directory(directory)
    raw = _config_for(model, config_fields)
    config_from_dict(raw, str(directory))  # refuse a bad field before writing anything
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
    try:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        safetensors.torch.save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        raw["weights_sha256"] = weights_digest(staging)
        config = config_from_dict(raw, str(directory))
        (staging / CONFIG_FILE).write_text(_dumps(config.to_dict()))
        _fsync_dir_files(staging)
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s (%s)", directory, config.model.name)
    return directory


def load_checkpoint(directory: str | Path,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointConfig]:
    """Rebuild the saved model (eval mode, on ``map_location``) and return it with its config."""
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    name = config.model.name
    if name not in list_models():
        raise CheckpointError(f"{directory}: unknown model {name!r} (this headct knows {', '.join(list_models())})")
    try:
        model = build_model(name, config.num_classes, **config.model.kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: cannot rebuild {name!r}: {_first_line(err)}") from err
    state = _read_weights(directory / WEIGHTS_FILE, config.weights_sha256)
    _check_keys(directory, model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shapes that do not match the rebuilt model
        raise CheckpointError(f"{directory}: weights do not fit {name!r}: {_first_line(err)}") from err
    return model.to(map_location).eval(), config


def read_checkpoint_config(directory: str | Path) -> CheckpointConfig:
    """``config.json`` of a checkpoint, migrated to the current format and validated."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint ({CONFIG_FILE} missing)")
    return parse_config_json(path.read_bytes(), str(path))


def parse_config_json(data: bytes | str, where: str) -> CheckpointConfig:
    """A checkpoint config from its JSON text (``where`` names it in errors)."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{where}: corrupt JSON ({err})") from err
    return config_from_dict(raw, where)


def update_checkpoint_config(directory: str | Path, **fields: Any) -> CheckpointConfig:
    """Set config fields (thresholds, temperature, training, provenance, ...) in place, atomically.

    Fields that describe the weights (model, num_classes, input, versions, hash) are refused.
    """
    directory = Path(directory)
    fixed = sorted(FIXED_FIELDS.intersection(fields))
    if fixed:
        raise CheckpointError(f"{directory}: {', '.join(fixed)} describe the weights and cannot be updated")
    config = read_checkpoint_config(directory).replace(**_plain(fields))
    atomic.write_text(directory / CONFIG_FILE, _dumps(config.to_dict()))
    return config


def encoder_arguments(encoder_checkpoint: str | Path) -> dict[str, Any]:
    """``study-seq`` arguments that start its slice encoder from a trained slice-level checkpoint."""
    model, config = load_checkpoint(encoder_checkpoint)
    if config.model.level != "slice":
        raise CheckpointError(f"{encoder_checkpoint}: an encoder checkpoint must hold a slice-level model, "
                              f"not {config.model.name!r}")
    return {"encoder": config.model.name, "encoder_kwargs": config.model.kwargs, "encoder_state": model.state_dict()}


def weights_digest(checkpoint_dir: str | Path) -> str | None:
    """SHA-256 of the checkpoint's ``model.safetensors`` (None when there is none)."""
    weights = Path(checkpoint_dir) / WEIGHTS_FILE
    if not weights.is_file():
        return None
    sha = hashlib.sha256()
    with weights.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()


def intended_use_for(provenance: Provenance) -> str:
    """The default intended-use text for weights with this provenance."""
    if provenance.synthetic:
        return INTENDED_USE_SYNTHETIC
    if provenance.synthetic is None:
        return INTENDED_USE_UNKNOWN
    return INTENDED_USE_RESEARCH


# --- validation (one place) -----------------------------------------------------------

def config_from_dict(raw: Any, where: str) -> CheckpointConfig:
    """Migrate and validate a config object; a bad field → CheckpointError naming it."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    raw = _migrate(dict(raw), where)
    check = _Checker(where)
    known = {f.name for f in dataclasses.fields(CheckpointConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{where}: unknown field {unknown[0]!r}")
    model = _model_config(check, raw.get("model"))
    num_classes = check.integer("num_classes", raw.get("num_classes"), *NUM_CLASSES_RANGE)
    labels = raw.get("labels")
    if labels is not None:
        labels = check.strings("labels", labels)
        if len(labels) != num_classes:
            raise CheckpointError(f"{where}: labels has {len(labels)} names for {num_classes} outputs")
    provenance = _provenance(check, raw.get("provenance"))
    temperature = raw.get("temperature", 1.0)
    input_config = _input_config(check, raw.get("input"))
    input_windows = _input_windows(check, raw.get("input_windows"))
    if input_windows is not None and len(input_windows) != input_config.image_channels:
        raise CheckpointError(f"{where}: input_windows names {len(input_windows)} windows for "
                              f"{input_config.image_channels} 8-bit images per slice")
    return CheckpointConfig(
        model=model,
        num_classes=num_classes,
        input=input_config,
        task=check.optional_text("task", raw.get("task")),
        labels=labels,
        label_kind=check.choice("label_kind", raw.get("label_kind") or ("multilabel" if labels else None),
                                LABEL_KINDS, optional=True),
        thresholds=_thresholds(check, raw.get("thresholds"), labels),
        temperature=None if temperature is None else check.positive("temperature", temperature),
        training=check.mapping("training", raw.get("training") or {}),
        provenance=provenance,
        intended_use=check.text("intended_use", raw.get("intended_use") or intended_use_for(provenance)),
        weights_sha256=check.digest("weights_sha256", raw.get("weights_sha256")),
        tta_flip=check.flag("tta_flip", raw.get("tta_flip", False)),
        input_windows=input_windows,
        versions={str(k): str(v) for k, v in check.mapping("versions", raw.get("versions") or {}).items()},
        headct_version=check.text("headct_version", raw.get("headct_version") or "unknown"),
        format_version=FORMAT_VERSION,
    )


def _migrate(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Bring an older config up to FORMAT_VERSION (the one place that knows old layouts)."""
    version = raw.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{where}: missing or invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format_version {version} is newer than this headct reads ({FORMAT_VERSION}); upgrade headct"
        )
    if version == 1:  # headct 0.1.0: no provenance, intended use or weights hash; extra keys allowed
        known = {f.name for f in dataclasses.fields(CheckpointConfig)}
        extra = {k: raw.pop(k) for k in sorted(set(raw) - known)}
        if extra:
            raw["training"] = {**(raw.get("training") or {}), **extra}
        raw["provenance"] = None
        raw["intended_use"] = INTENDED_USE_UNKNOWN
        raw["weights_sha256"] = None
    raw["format_version"] = FORMAT_VERSION
    return raw


def _input_windows(check: _Checker, raw: Any) -> list[Any] | None:
    """Preset names or [center, width] pairs, each a window ``headct.windows`` can apply."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise check.fail("input_windows", "must be a non-empty list of windows")
    windows = [w if isinstance(w, str) else tuple(check.numbers("input_windows", w)) for w in raw]
    try:
        resolve_windows(windows)
    except ValueError as err:
        raise check.fail("input_windows", str(err)) from None
    return [w if isinstance(w, str) else list(w) for w in windows]


def _model_config(check: _Checker, raw: Any) -> ModelConfig:
    raw = check.mapping("model", raw)
    return ModelConfig(
        name=check.text("model.name", raw.get("name")),
        kwargs=check.mapping("model.kwargs", raw.get("kwargs") or {}),
        level=check.choice("model.level", raw.get("level", "slice"), LEVELS),
        target_layers=check.strings("model.target_layers", raw.get("target_layers") or []),
        target_layout=check.choice("model.target_layout", raw.get("target_layout", "nchw"), TARGET_LAYOUTS),
        target_grid=check.choice("model.target_grid", raw.get("target_grid", "centred"), TARGET_GRIDS),
    )


def _input_config(check: _Checker, raw: Any) -> InputConfig:
    raw = check.mapping("input", raw)
    size = raw.get("size")
    windows = raw.get("windows")
    if windows is not None and not isinstance(windows, list):
        raise CheckpointError(f"{check.where}: input.windows must be a list or null, got {type(windows).__name__}")
    mean = check.numbers("input.mean", raw.get("mean") or [])
    std = check.numbers("input.std", raw.get("std") or [])
    if any(s <= 0 for s in std):
        raise CheckpointError(f"{check.where}: input.std must be > 0")
    return InputConfig(
        kind=check.choice("input.kind", raw.get("kind", "hu"), INPUT_KINDS),
        image_channels=check.integer("input.image_channels", raw.get("image_channels", 1), *IMAGE_CHANNELS_RANGE),
        windows=windows,
        size=None if size is None else check.integer("input.size", size, *SIZE_RANGE),
        context=check.integer("input.context", raw.get("context", 0), *CONTEXT_RANGE),
        mean=mean,
        std=std,
    )


def _provenance(check: _Checker, raw: Any) -> Provenance:
    if isinstance(raw, Provenance):
        raw = dataclasses.asdict(raw)
    raw = check.mapping("provenance", raw or {})
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(Provenance)})
    if unknown:
        raise CheckpointError(f"{check.where}: unknown field 'provenance.{unknown[0]}'")
    synthetic = raw.get("synthetic")
    if synthetic is not None and not isinstance(synthetic, bool):
        raise CheckpointError(f"{check.where}: provenance.synthetic must be true, false or null")
    counts = {name: None if raw.get(name) is None else check.integer(f"provenance.{name}", raw[name], 0, 10**12)
              for name in ("n_studies", "n_slices")}
    return Provenance(
        source_format=check.optional_text("provenance.source_format", raw.get("source_format")),
        synthetic=synthetic,
        split_how=check.optional_text("provenance.split_how", raw.get("split_how")),
        calibration=check.optional_text("provenance.calibration", raw.get("calibration")),
        **counts,
    )


def _thresholds(check: _Checker, raw: Any, labels: list[str] | None) -> dict[str, float] | None:
    if raw is None:
        return None
    raw = check.mapping("thresholds", raw)
    out = {}
    for label, value in raw.items():
        if labels is not None and label not in labels:
            raise CheckpointError(f"{check.where}: thresholds names {label!r}, which is not a label")
        value = check.number(f"thresholds.{label}", value)
        if not 0.0 <= value <= 1.0:
            raise CheckpointError(f"{check.where}: thresholds.{label} must be within 0..1, got {value}")
        out[str(label)] = value
    return out


@dataclass(frozen=True)
class _Checker:
    """Type and range checks that name the field and the config they are in."""

    where: str

    def fail(self, name: str, fault: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {name} {fault}")

    def flag(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value

    def mapping(self, name: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(name, f"must be an object, got {type(value).__name__}")
        return dict(value)

    def text(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(name, "must be a non-empty string")
        return value

    def optional_text(self, name: str, value: Any) -> str | None:
        return None if value is None else self.text(name, value)

    def strings(self, name: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(name, "must be a list of non-empty strings")
        return list(value)

    def choice(self, name: str, value: Any, allowed: tuple[str, ...], *, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if value not in allowed:
            raise self.fail(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def number(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(name, f"must be a finite number, got {value!r}")
        return float(value)

    def numbers(self, name: str, value: Any) -> list[float]:
        if not isinstance(value, list):
            raise self.fail(name, "must be a list of numbers")
        return [self.number(name, v) for v in value]

    def positive(self, name: str, value: Any) -> float:
        value = self.number(name, value)
        if value <= 0:
            raise self.fail(name, f"must be > 0, got {value}")
        return value

    def integer(self, name: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.fail(name, f"must be within {low}..{high}, got {value}")
        return value

    def digest(self, name: str, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
            raise self.fail(name, "must be 64 lowercase hex digits")
        return value


# --- helpers ------------------------------------------------------------------------------

def _config_for(model: nn.Module, fields: dict[str, Any]) -> dict[str, Any]:
    spec = getattr(model, "spec", None)
    if spec is None or not spec.name:
        raise CheckpointError("only models built by headct.models.build_model can be saved (no model.spec)")
    fields = _plain(fields)
    fixed = sorted(FIXED_FIELDS.intersection(fields))
    if fixed:
        raise CheckpointError(f"{', '.join(fixed)} come from the model and cannot be given")
    input_info = {"kind": spec.input_kind, "image_channels": spec.image_channels, "windows": spec.windows,
                  "size": fields.pop("size", None),
                  "context": spec.context, "mean": spec.mean, "std": spec.std}
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "headct_version": headct.__version__,
        "model": {"name": spec.name, "kwargs": spec.kwargs, "level": spec.level, "target_layers": spec.target_layers,
                  "target_layout": spec.target_layout, "target_grid": spec.target_grid},
        "num_classes": spec.num_classes,
        "input": input_info,
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    config.update(fields)
    return config


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as plain JSON values (numpy scalars, dataclasses); a non-JSON value → TypeError."""
    fields = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in fields.items()}
    return json.loads(json.dumps(fields, default=_json_default))


def _read_weights(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file missing")
    if expected_sha256 is not None and weights_digest(path.parent) != expected_sha256:
        raise CheckpointError(f"{path}: corrupt weights file (its SHA-256 differs from the one recorded at save)")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt weights file ({_first_line(err)})") from err


def _check_keys(directory: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({_few(missing)})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({_few(unexpected)})")
        raise CheckpointError(f"{directory}: weights do not match {model.spec.name!r}: {'; '.join(parts)}")


def _refuse_foreign_directory(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or (any(directory.iterdir()) and not (directory / CONFIG_FILE).is_file())):
        raise CheckpointError(f"{directory}: exists and is not a checkpoint; refusing to overwrite it")


def _replace_directory(staging: Path, directory: Path) -> None:
    """Move the complete ``staging`` directory to ``directory``; the old one goes only after."""
    if not directory.exists():
        os.replace(staging, directory)
        return
    retired = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex}")
    os.replace(directory, retired)
    try:
        os.replace(staging, directory)
    except BaseException:
        os.replace(retired, directory)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _fsync_dir_files(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _dumps(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, default=_json_default) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _few(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
