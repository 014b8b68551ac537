"""Checkpoints: one directory, ``model.safetensors`` + ``config.json``, no pickle.

``config.json`` says what the weights are (model name and full arguments,
input kind, windows, size, context, normalisation), what the outputs mean
(task, labels, label kind, thresholds, temperature), how they were trained
and with which package versions (layout in docs/internals.md). Loading
rebuilds the model by name and arguments and loads the weights strictly, so a
checkpoint either gives back exactly the saved model or is refused with one
clear line (``CheckpointError``).

Writes are atomic: a checkpoint is written into a temporary sibling directory
and renamed into place; an existing checkpoint is replaced only once the new
one is complete.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import timm
import torch
from torch import nn

import headct
from headct.errors import CheckpointError
from headct.models import build_model, list_models

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Fields that describe the weights themselves: update_checkpoint_config refuses to change them.
FIXED_FIELDS = frozenset({"format_version", "headct_version", "model", "num_classes", "input", "versions"})
INPUT_FIELDS = ("size",)  # config fields that go under "input"


def save_checkpoint(model: nn.Module, directory: str | Path, **config_fields: Any) -> Path:
    """Write ``model`` (its weights and its spec) plus ``config_fields`` as a checkpoint directory.

    Typical fields: ``size``, ``task``, ``labels``, ``label_kind``, ``thresholds``,
    ``temperature``, ``training``; any other JSON value is kept at the top level.
    An existing checkpoint at ``directory`` is replaced; any other non-empty
    directory is refused rather than overwritten.
    """
    directory = Path(directory)
    _refuse_foreign_directory(directory)
    config = _config_for(model, config_fields)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
    try:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        safetensors.torch.save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(_dumps(config))
        _fsync_dir_files(staging)
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s (%s)", directory, config["model"]["name"])
    return directory


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the saved model (eval mode, on ``map_location``) and return it with its config."""
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    model_info = config.get("model")
    if not isinstance(model_info, dict) or "name" not in model_info or "num_classes" not in config:
        raise CheckpointError(f"{directory}: {CONFIG_FILE} lacks the model name or num_classes")
    name = model_info["name"]
    if name not in list_models():
        raise CheckpointError(f"{directory}: unknown model {name!r} (this headct knows {', '.join(list_models())})")
    try:
        model = build_model(name, int(config["num_classes"]), **model_info.get("kwargs", {}))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: cannot rebuild {name!r}: {err}") from err
    state = _read_weights(directory / WEIGHTS_FILE)
    _check_keys(directory, model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shapes that do not match the rebuilt model
        raise CheckpointError(f"{directory}: weights do not fit {name!r}: {_first_line(err)}") from err
    return model.to(map_location).eval(), config


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint, checked for readability and format version."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint ({CONFIG_FILE} missing)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: missing or invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} is newer than this headct reads ({FORMAT_VERSION}); upgrade headct"
        )
    return config


def update_checkpoint_config(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Set top-level config fields (thresholds, temperature, ...) in place, atomically; returns the config.

    Fields that describe the weights (model, num_classes, input, versions) are refused.
    """
    directory = Path(directory)
    fixed = sorted(FIXED_FIELDS.intersection(fields))
    if fixed:
        raise CheckpointError(f"{directory}: {', '.join(fixed)} describe the weights and cannot be updated")
    config = read_checkpoint_config(directory)
    config.update(fields)
    path = directory / CONFIG_FILE
    temporary = path.with_name(f".{CONFIG_FILE}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "w") as handle:
            handle.write(_dumps(config))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return config


def _config_for(model: nn.Module, fields: dict[str, Any]) -> dict[str, Any]:
    spec = getattr(model, "spec", None)
    if spec is None or not spec.name:
        raise CheckpointError("only models built by headct.models.build_model can be saved (no model.spec)")
    fields = dict(fields)
    fixed = sorted(FIXED_FIELDS.intersection(fields))
    if fixed:
        raise CheckpointError(f"{', '.join(fixed)} come from the model and cannot be given")
    input_info = {
        "kind": spec.input_kind,
        "windows": spec.windows,
        "size": fields.pop("size", None),
        "context": spec.context,
        "mean": spec.mean,
        "std": spec.std,
    }
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "headct_version": headct.__version__,
        "model": {
            "name": spec.name,
            "kwargs": spec.kwargs,
            "level": spec.level,
            "target_layers": spec.target_layers,
            "target_layout": spec.target_layout,
        },
        "num_classes": spec.num_classes,
        "input": input_info,
        "task": None,
        "labels": None,
        "label_kind": None,
        "thresholds": None,
        "temperature": 1.0,
        "training": {},
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


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file missing")
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
