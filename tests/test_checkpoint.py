"""Checkpoints: round trip, atomic replacement, and one clear line for every kind of broken directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from headct.checkpoint import (
    INTENDED_USE_SYNTHETIC,
    INTENDED_USE_UNKNOWN,
    Provenance,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
    update_checkpoint_config,
    weights_digest,
)
from headct.errors import CheckpointError
from headct.models import build_model


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("effnet-2d", 2, input_kind="uint8", windows=None).eval()
    path = save_checkpoint(
        model, tmp_path / "ckpt", size=64, task="presence", labels=["non-stroke", "stroke"],
        label_kind="multiclass", thresholds={"stroke": np.float32(0.25)}, training={"epochs": 1},
    )
    return model, path


def _record_weights_hash(path) -> None:
    config = json.loads((path / "config.json").read_text())
    config["weights_sha256"] = weights_digest(path)
    (path / "config.json").write_text(json.dumps(config))


def _single_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_config_records_model_input_outputs_and_versions(checkpoint) -> None:
    _, path = checkpoint
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 2 and config["num_classes"] == 2
    assert config["model"]["name"] == "effnet-2d" and config["model"]["kwargs"]["input_kind"] == "uint8"
    assert config["input"] == {"kind": "uint8", "image_channels": 1, "windows": None, "size": 64, "context": 0,
                               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert config["labels"] == ["non-stroke", "stroke"] and config["thresholds"] == {"stroke": 0.25}
    assert config["temperature"] == 1.0 and config["training"] == {"epochs": 1}
    assert set(config["versions"]) >= {"torch", "timm", "python"}


def test_load_gives_back_the_same_model(checkpoint) -> None:
    model, path = checkpoint
    loaded, config = load_checkpoint(path)
    assert not loaded.training and loaded.spec == model.spec
    x = torch.randint(0, 256, (2, 1, 64, 64)).float()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert config.task == "presence"


def test_saving_again_replaces_the_checkpoint_and_leaves_no_temporaries(checkpoint) -> None:
    _, path = checkpoint
    other = build_model("effnet-2d", 3)
    save_checkpoint(other, path, labels=["a", "b", "c"])
    _, config = load_checkpoint(path)
    assert config.num_classes == 3 and config.input.kind == "hu"
    assert [p.name for p in path.parent.iterdir()] == ["ckpt"]


def test_a_directory_that_is_not_a_checkpoint_is_never_overwritten(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint; refusing"):
        save_checkpoint(build_model("effnet-2d", 2), tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"


def test_a_non_json_field_leaves_nothing_behind(tmp_path) -> None:
    with pytest.raises(TypeError, match="not a JSON value"):
        save_checkpoint(build_model("effnet-2d", 2), tmp_path / "ckpt", training={"optimizer": object()})
    assert list(tmp_path.iterdir()) == []


def test_truncated_weights_are_refused(checkpoint) -> None:
    _, path = checkpoint
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "corrupt weights file" in _single_line(err)


def test_bad_json_is_refused(checkpoint) -> None:
    _, path = checkpoint
    (path / "config.json").write_text('{"format_version": 1, "model": ')
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "corrupt JSON" in _single_line(err)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["model"].update(name="effnet-9d"), "unknown model 'effnet-9d'"),
        (lambda c: c.update(format_version=99), "format_version 99 is newer"),
        (lambda c: c["model"]["kwargs"].update(colour="red"), "cannot rebuild 'effnet-2d'"),
        (lambda c: c.update(num_classes=7, labels=None, thresholds=None), "weights do not fit 'effnet-2d'"),
    ],
    ids=["unknown-model", "future-format", "unknown-argument", "wrong-shape"],
)
def test_incompatible_configs_are_refused(checkpoint, change, message) -> None:
    _, path = checkpoint
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert message in _single_line(err)


def test_missing_and_unexpected_weights_are_refused(checkpoint) -> None:
    _, path = checkpoint
    state = safetensors.torch.load_file(str(path / "model.safetensors"))
    state.pop("head.1.weight")
    state["extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(state, str(path / "model.safetensors"))
    _record_weights_hash(path)  # weights that match their record, but not the model
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    line = _single_line(err)
    assert "missing 1 keys (head.1.weight)" in line and "unexpected 1 keys (extra.weight)" in line


def test_missing_directory_is_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="config.json missing"):
        load_checkpoint(tmp_path / "nowhere")


def test_update_sets_thresholds_and_temperature_but_not_the_model(checkpoint) -> None:
    model, path = checkpoint
    update_checkpoint_config(path, thresholds={"stroke": 0.4}, temperature=1.7)
    config = read_checkpoint_config(path)
    assert config.thresholds == {"stroke": 0.4} and config.temperature == 1.7
    assert config.labels == ["non-stroke", "stroke"]
    with pytest.raises(CheckpointError, match="model describe the weights"):
        update_checkpoint_config(path, model={"name": "vgg16"})
    assert [p.name for p in sorted(path.iterdir())] == ["config.json", "model.safetensors"]
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.head[1].weight, model.head[1].weight)


# --- the typed config: validated once, at load ------------------------------------------

@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["input"].update(size=2**20), "input.size must be within 8..2048"),
        (lambda c: c["input"].update(size="64"), "input.size must be an integer"),
        (lambda c: c["input"].update(kind="rgb"), "input.kind must be one of hu, uint8"),
        (lambda c: c["input"].update(context=-1), "input.context must be within 0..32"),
        (lambda c: c["input"].update(std=[0.2, 0.0, 0.2]), "input.std must be > 0"),
        (lambda c: c.update(label_kind="binary"), "label_kind must be one of multilabel, multiclass"),
        (lambda c: c.update(temperature=0.0), "temperature must be > 0"),
        (lambda c: c.update(temperature=float("nan")), "temperature must be a finite number"),
        (lambda c: c.update(thresholds={"stroke": 1.5}), "thresholds.stroke must be within 0..1"),
        (lambda c: c.update(thresholds={"stroke": float("inf")}), "thresholds.stroke must be a finite number"),
        (lambda c: c.update(thresholds={"cat": 0.5}), "thresholds names 'cat', which is not a label"),
        (lambda c: c.update(labels=["one"]), "labels has 1 names for 2 outputs"),
        (lambda c: c.update(num_classes=-3), "num_classes must be within 0..10000"),
        (lambda c: c["model"].update(level="voxel"), "model.level must be one of slice, series"),
        (lambda c: c["provenance"].update(synthetic="yes"), "provenance.synthetic must be true, false or null"),
        (lambda c: c["provenance"].update(n_slices=-1), "provenance.n_slices must be within"),
        (lambda c: c.update(weights_sha256="abc"), "weights_sha256 must be 64 lowercase hex digits"),
        (lambda c: c.update(colour="red"), "unknown field 'colour'"),
        (lambda c: c["input"].update(image_channels=0), "input.image_channels must be within 1..16"),
        (lambda c: c.update(input_windows=["brain", "bone"]), "input_windows names 2 windows for 1 8-bit images"),
        (lambda c: c.update(input_windows=["brain", "lung"]), "unknown window 'lung'"),
    ],
)
def test_every_bad_field_is_refused_in_one_line_naming_it(checkpoint, change, field) -> None:
    _, path = checkpoint
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint_config(path)
    assert field in _single_line(err)


def test_a_flipped_bit_in_the_weights_is_refused(checkpoint) -> None:
    _, path = checkpoint
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor: the file still parses
    weights.write_bytes(bytes(data))
    assert safetensors.torch.load_file(str(weights))  # safetensors alone would load it
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "SHA-256 differs" in _single_line(err)


def test_provenance_and_intended_use_round_trip(tmp_path) -> None:
    provenance = Provenance(source_format="rsna", synthetic=True, n_studies=10, n_slices=80, split_how="study")
    path = save_checkpoint(build_model("effnet-2d", 2), tmp_path / "ckpt", size=32, labels=["a", "b"],
                           provenance=provenance)
    config = read_checkpoint_config(path)
    assert config.provenance == provenance and config.synthetic
    assert config.intended_use == INTENDED_USE_SYNTHETIC
    assert config.weights_sha256 == weights_digest(path)
    assert config.label_kind == "multilabel"  # labels without a kind: sigmoid outputs, as before


def test_a_checkpoint_written_by_0_1_0_still_loads_with_unknown_provenance(checkpoint) -> None:
    model, path = checkpoint
    config = json.loads((path / "config.json").read_text())
    for field in ("provenance", "intended_use", "weights_sha256"):
        del config[field]
    config.update(format_version=1, headct_version="0.1.0", data_note="kept")  # 0.1.0 kept extra keys
    config["model"].pop("target_grid")
    (path / "config.json").write_text(json.dumps(config))
    loaded, migrated = load_checkpoint(path)
    assert migrated.format_version == 2 and migrated.headct_version == "0.1.0"
    assert migrated.provenance == Provenance() and not migrated.synthetic
    assert migrated.intended_use == INTENDED_USE_UNKNOWN and migrated.weights_sha256 is None
    assert migrated.training["data_note"] == "kept"
    assert migrated.labels == ["non-stroke", "stroke"] and migrated.thresholds == {"stroke": 0.25}
    assert torch.equal(loaded.head[1].weight, model.head[1].weight)
