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
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from headct import atomic
from headct.errors import ConfigError

AMP_MODES = ("auto", "bf16", "fp16", "off")


def _option(default: Any, help_text: str) -> Any:
    """A field with its ``--flag`` help text (read by ``headct train --help``)."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a ``--flag`` of ``headct train``."""

    # what to train, on what, where
    data: str | None = _option(None, "cache folder made by 'headct prepare' (required)")
    model: str | None = _option(None, "model name, one of 'headct models' (required)")
    task: str | None = _option(None, "what to predict: rsna, presence, subtype, 3class, or label,label,... (required)")
    out: str | None = _option(None, "run folder; the best checkpoint goes to OUT/best (required)")
    model_kwargs: dict = field(default_factory=dict, metadata={
        "help": "extra model arguments as JSON, e.g. '{\"drop_rate\": 0.2}'"})
    pretrained: str | None = _option(None, "backbone weights: imagenet (timm's default pretrained tag, needs "
                                           "the network) or a local weights file; only its hash is recorded")
    fold: int | None = _option(None, "cross-validation: hold out this fold of the cache (headct prepare --folds)")
    input_windows: str | None = _option(None, "8-bit caches: the HU window that made the images (e.g. brain or "
                                              "40/80; one per image for several per slice, e.g. brain,bone), "
                                              "recorded so predict windows DICOM the same way (none: brain)")

    # optimisation
    epochs: int = _option(10, "passes over the training split")
    batch_size: int = _option(32, "slices (or series) per optimiser step, per device")
    lr: float = _option(2e-3, "peak learning rate of AdamW (issue 13's held-back real CT: 2e-3 without early "
                              "stop beat 3e-4 with patience 5)")
    weight_decay: float = _option(0.05, "AdamW weight decay")
    warmup_epochs: float = _option(0.5, "linear warm-up length in epochs, then a cosine decay per step")
    min_lr_ratio: float = _option(0.01, "the cosine decay ends at this fraction of --lr")
    grad_accum: int = _option(1, "batches whose gradients add up before each optimiser step")
    clip_grad: float | None = _option(1.0, "clip the gradient norm to this (none: no clipping)")
    amp: str = _option("auto", "mixed precision: auto (bf16 on a GPU that has it, else off), bf16, fp16 or off")
    channels_last: bool = _option(True, "convolution weights and slice batches in NHWC: oneDNN's fast layout on "
                                        "the CPU (EfficientNet-B0 steps about 1.3-1.6x faster) and Tensor Cores' on a GPU")
    label_smoothing: float | None = _option(None, "label smoothing (none: 0.1 for multi-class tasks, as "
                                                  "StrokeNeXt, 0 otherwise)")
    class_balance: bool = _option(False, "rare labels weigh more: BCE pos_weight negatives/positives per label, "
                                         "cross-entropy class weights by inverse frequency (capped at 10)")
    seed: int = _option(0, "seed for the weights, the batches and the augmentation")
    ema_decay: float | None = _option(None, "keep an EMA of the weights with this decay (timm ModelEmaV3 with "
                                            "warm-up); validated and saved weights are the average (none: off)")

    # augmentation (on the training device, on raw HU / grey, before the model's windowing)
    augment: bool = _option(True, "random flips, rotations, scaling, shifts and window jitter while training")
    flip_p: float = _option(0.5, "probability of a left-right flip")
    rotate_deg: float = _option(10.0, "largest rotation, in degrees either way")
    scale: float = _option(0.1, "largest zoom in or out, as a fraction")
    shift: float = _option(0.05, "largest shift, as a fraction of the image size")
    window_shift: float = _option(10.0, "largest shift of the intensities, in HU (grey levels for 8-bit input)")
    window_scale: float = _option(0.05, "largest scaling of the intensities, as a fraction")

    # test-time augmentation, recorded in the checkpoint: evaluate, predict and serve apply it
    tta_flip: bool = _option(False, "test-time augmentation: the mean of the logits of each series and of its "
                                    "left-right mirror image (recorded in the checkpoint)")

    # series-level models (study-seq)
    max_slices: int | None = _option(None, "series models: at most this many slices per series (none: all)")
    slice_loss_weight: float = _option(1.0, "series models: weight of the per-slice loss")
    series_loss_weight: float = _option(1.0, "series models: weight of the per-series loss")
    encoder_checkpoint: str | None = _option(None, "series models: start from (and freeze) the 2-D encoder "
                                                   "of this checkpoint")

    # early stopping and checkpoints
    monitor: str = _option("macro_auroc", "validation metric that picks the best epoch (a metrics.json key, "
                                          "study_macro_auroc for the study level, or val_loss)")
    patience: int = _option(0, "stop after this many epochs without improvement (0: train every epoch, keep "
                               "the best: early stops on a small, noisy validation split cut real runs short)")

    # limits, devices, logging
    max_steps_per_epoch: int | None = _option(None, "cap on optimiser steps per epoch, for quick runs (none: all)")
    max_val_batches: int | None = _option(None, "cap on validation batches per epoch (none: all)")
    device: str | None = _option(None, "cuda, cuda:1 or cpu (none: cuda when available)")
    workers: int | None = _option(None, "data loader workers (none: 0 on the CPU, up to 8 with a GPU)")
    progress: bool = _option(True, "show progress bars")
    tensorboard: bool = _option(True, "write TensorBoard logs to OUT/tb")

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
            raise ConfigError(f"{yaml_path}: a training config is a mapping of field: value")
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
        raise ConfigError("missing " + ", ".join(f"--{m}" for m in missing))


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a ``config.yaml`` written by :func:`save_config`."""
    return resolve_config(path)


# --- helpers -------------------------------------------------------------------

def _key(name: str) -> str:
    return str(name).lstrip("-").replace("-", "_")


def _coerce_all(values: dict[str, Any], source: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown training option(s) {', '.join(unknown)}")
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
        raise ConfigError(f"{source}: {f.name} cannot be empty")
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
        raise ConfigError(f"{source}: {f.name} must be {kind.__name__}, got {value!r}") from None


def _check(config: TrainConfig) -> None:
    if config.amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {AMP_MODES}, got {config.amp!r}")
    for name in ("epochs", "batch_size", "grad_accum"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {config.lr}")
    if config.input_windows is not None:
        from headct.windows import parse_windows  # numpy only: headct --help stays fast

        parse_windows(config.input_windows)
    if config.ema_decay is not None and not 0.0 < config.ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in (0, 1) or none, got {config.ema_decay}")
    if config.fold is not None and config.fold < 0:
        raise ConfigError(f"fold must be >= 0, got {config.fold}")
    if config.patience < 0:
        raise ConfigError(f"patience must be >= 0, got {config.patience}")
