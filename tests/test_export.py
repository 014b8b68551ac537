"""ONNX export: onnxruntime agrees with torch fp32, dynamic batch/slices, checkpoint export, onnx runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from headct.checkpoint import save_checkpoint, weights_digest
from headct.cli import main
from headct.export import ONNX_FILE, export_onnx, onnx_for_checkpoint, read_metadata
from headct.io.volume import Volume
from headct.models import build_model
from headct.predict import Predictor

SIZE = 32
LABELS = ["non-stroke", "hemorrhagic", "ischemic"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("mobilenetv2", len(LABELS))
    _randomise_batchnorm(model)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(model, path, size=SIZE, task="3class", labels=LABELS, label_kind="multiclass",
                    temperature=1.7)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path) -> Path:
    """`headct export` into the checkpoint, where `predict --runtime onnx` looks (one export per run)."""
    assert main(["export", str(checkpoint), "--onnx", str(checkpoint / ONNX_FILE)]) == 0
    return checkpoint / ONNX_FILE


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Untrained BN statistics are 0/1; random ones make the comparison see them."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)


def _hu(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.float32)


def test_onnxruntime_matches_torch_fp32_at_any_batch(checkpoint: Path, exported: Path) -> None:
    from headct.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    for batch in (1, 3):
        x = _hu(batch, 1, SIZE, SIZE, seed=batch)  # raw HU: the windowing is inside the graph
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (got,) = session.run(["logits"], {"x": x})
        assert got.shape == (batch, len(LABELS))
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        assert np.abs(expected).max() > 1e-3  # a real comparison, not of zeros


def test_export_records_how_and_from_what(checkpoint: Path, exported: Path) -> None:
    assert exported == checkpoint / ONNX_FILE
    meta = read_metadata(exported)
    assert meta["headct_exporter"] in ("dynamo", "torchscript")
    assert meta["headct_weights_sha256"] == weights_digest(checkpoint)
    assert json.loads(meta["headct_spec"])["name"] == "mobilenetv2"
    assert meta["headct_size"] == str(SIZE)


def test_stale_export_is_redone(checkpoint: Path, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr("headct.export.export_checkpoint", lambda ckpt, path: calls.append(Path(path)))
    assert onnx_for_checkpoint(checkpoint) == exported and calls == []  # up to date: reused
    missing = tmp_path / "fresh"
    missing.mkdir()
    (missing / "config.json").write_bytes((checkpoint / "config.json").read_bytes())
    onnx_for_checkpoint(missing)
    assert calls == [missing / ONNX_FILE]  # none yet: exported on the fly into the checkpoint
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", ONNX_FILE):
        (copy / name).write_bytes((checkpoint / name).read_bytes())
    (copy / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes() + b" ")
    onnx_for_checkpoint(copy)
    assert calls[-1] == copy / ONNX_FILE  # weights changed: exported again


def test_series_model_exports_with_dynamic_slices(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("study-seq", 2, encoder="mobilenetv2", hidden=8, layers=1).eval()
    result = export_onnx(model, tmp_path / "seq.onnx", size=SIZE)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for batch, slices in ((1, 4), (2, 7)):
        x = _hu(batch, slices, SIZE, SIZE, seed=slices)
        with torch.no_grad():
            slice_logits, series_logits = model.forward_series(torch.from_numpy(x), None)
        got_slices, got_series = session.run(["slice_logits", "series_logits"], {"x": x})
        np.testing.assert_allclose(got_slices, slice_logits.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_series, series_logits.numpy(), atol=1e-4, rtol=0)


def test_onnx_predictor_gives_the_torch_prediction(checkpoint: Path, exported: Path) -> None:
    pixels = _hu(5, 48, 40, seed=7).astype(np.int16)  # not square, not the model size
    volume = Volume(pixels, slice_uids=[f"1.2.{i}" for i in range(5)], study_uid="1.2.3", series_uid="1.2.3.4")
    by_torch = Predictor.from_checkpoint(checkpoint, device="cpu").predict(volume)
    by_onnx = Predictor.from_checkpoint(checkpoint, runtime="onnx").predict(volume)
    assert by_onnx["study"] == by_torch["study"] == "1.2.3"
    for a, b in zip(by_onnx["slices"], by_torch["slices"], strict=True):
        assert a["uid"] == b["uid"]
        for label in LABELS:
            assert a["probabilities"][label] == pytest.approx(b["probabilities"][label], abs=1e-4)
    assert by_onnx["study_positive"] == by_torch["study_positive"]


def test_export_command_writes_model_and_config(checkpoint: Path, exported: Path) -> None:
    assert read_metadata(exported)["headct_weights_sha256"] == weights_digest(checkpoint)
    config = json.loads((checkpoint / "model.config.json").read_text())
    assert config["labels"] == LABELS and config["input"]["size"] == SIZE
    assert not [p for p in checkpoint.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("level", ["slice", "series"])
def test_models_of_two_8bit_images_per_slice_export(tmp_path: Path, level: str) -> None:
    torch.manual_seed(2)
    if level == "slice":
        model = build_model("mobilenetv2", 2, input_kind="uint8", image_channels=2).eval()
        shapes = [(1, 2, SIZE, SIZE), (3, 2, SIZE, SIZE)]  # [B, K*C, H, W]: brain, bone
    else:
        model = build_model("study-seq", 2, encoder="mobilenetv2", hidden=8, layers=1,
                            encoder_kwargs={"input_kind": "uint8", "image_channels": 2}).eval()
        shapes = [(1, 4, 2, SIZE, SIZE), (2, 6, 2, SIZE, SIZE)]  # [B, S, C, H, W]
    _randomise_batchnorm(model)
    result = export_onnx(model, tmp_path / "m.onnx", size=SIZE)
    assert json.loads(read_metadata(result.path)["headct_spec"])["image_channels"] == 2
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for seed, shape in enumerate(shapes):
        x = np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)
        with torch.no_grad():
            expected = (model(torch.from_numpy(x)) if level == "slice"
                        else model.forward_series(torch.from_numpy(x), None)[1]).numpy()
        got = session.run(None, {"x": x})[0 if level == "slice" else 1]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        assert np.abs(expected).max() > 1e-3
