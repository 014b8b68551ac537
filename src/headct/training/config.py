"""The training configuration: one dataclass, filled from defaults, then YAML, then flags.

``headct train`` declares one ``--flag`` per field (``batch_size`` → ``--batch-size``);
:func:`resolve_config` applies the precedence defaults < YAML < flags and checks
types, so a typo in a YAML key or a value of the wrong type fails before any
work starts. The resolved config is written to ``RUN/config.yaml``.

This module imports no torch, so ``headct --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a ``--flag`` of ``headct train``."""

    # what to train, on what, where
    data: str | None = None
    model: str | None = None
    task: str | None = None
    out: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    pretrained: str | None = None        # backbone weights: "imagenet" (timm's default tag) or a local file
    fold: int | None = None              # cross-validation: hold out this fold of the cache (headct.data.folds)
    input_windows: str | None = None     # 8-bit caches: the window that made the images (e.g. brain, 40/80);
                                         # recorded so predict can window DICOM the same way. None: brain

    # optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3                     # issue 13's held-back real CT (effnet-2d, 128 px, 15 epochs): any-AUROC
                                         # 0.771 slice / 0.73 patient at 2e-3 without early stop vs 0.667 / 0.30
                                         # at the old 3e-4 with patience 5 (one split, 16 test patients)
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5           # linear warm-up, then cosine to min_lr_ratio * lr (per step)
    min_lr_ratio: float = 0.01
    grad_accum: int = 1
    clip_grad: float | None = 1.0
    amp: str = "auto"                    # auto | bf16 | fp16 | off
    class_balance: bool = False          # rare labels weigh more: BCE pos_weight = negatives/positives per label,
                                         # CE class weights = inverse frequency; from the training split, capped
    label_smoothing: float | None = None  # None: 0.1 for multiclass tasks (as StrokeNeXt), 0 otherwise
    seed: int = 0
    ema_decay: float | None = None       # EMA of the weights (timm ModelEmaV3, with warm-up); validated and
                                         # saved weights are the average. None: off

    # augmentation (on the training device, on raw HU / grey, before the model's windowing)
    augment: bool = True
    flip_p: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    shift: float = 0.05
    window_shift: float = 10.0           # HU (grey levels for uint8 inputs)
    window_scale: float = 0.05

    # test-time augmentation, recorded in the checkpoint: evaluate, predict and serve apply it
    tta_flip: bool = False               # mean of the logits of each series and its left-right mirror

    # series-level models (study-seq)
    max_slices: int | None = None
    slice_loss_weight: float = 1.0
    series_loss_weight: float = 1.0
    encoder_checkpoint: str | None = None  # two-stage: frozen 2-D encoder from this checkpoint

    # early stopping and checkpoints
    monitor: str = "macro_auroc"         # a key of metrics.classification_metrics, or "val_loss"
    patience: int = 0                    # 0: train every epoch, keep the best (see lr: early stops on a small,
                                         # noisy validation split cut real runs short)

    # limits, devices, logging
    max_steps_per_epoch: int | None = None
    max_val_batches: int | None = None
    device: str | None = None            # default: cuda when available, else cpu
    workers: int | None = None           # DataLoader workers; None: 0 on the CPU, up to 8 with a GPU
    progress: bool = True
    tensorboard: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


REQUIRED = ("data", "model", "task", "out")


def config_fields() -> list[dataclasses.Field]:
    """The fields of :class:`TrainConfig`, in declaration order (for the CLI)."""
    return list(dataclasses.fields(TrainConfig))


def resolve_config(
    yaml_path: str | os.PathLike | None = None,
    flags: Mapping[str, Any] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults (or ``base``) < values from ``yaml_path`` < ``flags`` (only those given).

    Flag values may be strings (as typed on the command line); they are parsed
    by the field's type. Unknown keys raise ``ValueError`` naming the key.
    """
    values = (base or TrainConfig()).to_dict()
    if yaml_path is not None:
        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path}: a training config is a mapping of field: value")
        values.update(_coerce_all({_key(k): v for k, v in loaded.items()}, str(yaml_path)))
    if flags:
        values.update(_coerce_all({_key(k): v for k, v in flags.items() if v is not None}, "flags"))
    config = TrainConfig(**values)
    _check(config)
    return config


def check_complete(config: TrainConfig) -> None:
    """Raise ``ValueError`` unless data, model, task and out are all set."""
    missing = [name for name in REQUIRED if getattr(config, name) in (None, "")]
    if missing:
        raise ValueError("missing " + ", ".join(f"--{m}" for m in missing))


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a ``config.yaml`` written by :func:`save_config`."""
    return resolve_config(path)


def parse_value(name: str, text: Any) -> Any:
    """Parse one value for field ``name`` (a string from the command line, or YAML data)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if name not in fields:
        raise ValueError(f"unknown training option {name!r}")
    return _coerce(fields[name], text, "flags")


# --- helpers -------------------------------------------------------------------

def _key(name: str) -> str:
    return str(name).lstrip("-").replace("-", "_")


def _coerce_all(values: dict[str, Any], source: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown training option(s) {', '.join(unknown)}")
    return {name: _coerce(fields[name], value, source) for name, value in values.items()}


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    kind = hints[f.name]
    optional = False
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = len(args) < len(typing.get_args(kind))
        kind = args[0]
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in ("none", "null", "~", ""):
            return None
        if kind is str:
            return text
        value = json.loads(text) if kind is dict and text.startswith("{") else yaml.safe_load(text)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: {f.name} cannot be empty")
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {f.name} must be {kind.__name__}, got {value!r}") from None


def _check(config: TrainConfig) -> None:
    if config.amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {config.amp!r}")
    for name in ("epochs", "batch_size", "grad_accum"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.lr <= 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")
    if config.input_windows is not None:
        from headct.windows import parse_windows  # numpy only: headct --help stays fast

        parse_windows(config.input_windows)
    if config.ema_decay is not None and not 0.0 < config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1) or none, got {config.ema_decay}")
    if config.fold is not None and config.fold < 0:
        raise ValueError(f"fold must be >= 0, got {config.fold}")
    if config.patience < 0:
        raise ValueError(f"patience must be >= 0, got {config.patience}")
