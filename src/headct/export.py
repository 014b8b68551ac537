"""ONNX export of a whole model, windowing layer included, and an onnxruntime model for predict.

``export_onnx`` writes the model as the checkpoint holds it: input ``x`` is raw
values (HU, or 0..255 grey) as float ``[B, K, H, W]`` with a dynamic batch (and,
for series-level models, ``[B, S, H, W]`` with dynamic batch and slice count;
outputs ``slice_logits`` and ``series_logits``). The windows and the
normalisation are inside the graph, so a deployment needs nothing else.

torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is tried
first; when it fails the TorchScript exporter is used, and which one wrote the
file is recorded in the model's metadata (``headct_exporter``) and logged.
``OnnxModel`` puts an onnxruntime session behind the ``nn.Module`` face that
``headct.inference.series_logits`` expects, so predict runs one forward path
whatever the runtime.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headct import atomic
from headct.checkpoint import CheckpointConfig, load_checkpoint, weights_digest
from headct.models.registry import ModelSpec

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPSET = 18
EXAMPLE_SLICES = 3  # slices in the example series of a series-level model (the count is dynamic)


@dataclass
class ExportResult:
    """Where the model went and how."""

    path: Path
    exporter: str  # "dynamo" | "torchscript"
    inputs: list[str]
    outputs: list[str]


def export_onnx(model: nn.Module, path: str | Path, *, size: int, weights_sha256: str | None = None,
                exporter: str = "auto") -> ExportResult:
    """Export ``model`` (fp32, eval) to ``path``, atomically.

    ``size`` is the input side (the checkpoint's cache size). ``exporter`` is
    "auto" (dynamo, else TorchScript), "dynamo" or "torchscript".
    ``weights_sha256`` is stored in the metadata so a stale export is noticed.
    """
    path = Path(path)
    spec = model.spec
    wrapper, example, inputs, outputs, dims = _export_form(model.float().eval().cpu(), spec, size)
    with atomic.writing(path) as tmp:
        try:
            used = _run_exporter(wrapper, example, tmp, inputs, outputs, dims, exporter)
            _add_metadata(tmp, {
                "headct_spec": json.dumps(spec.to_dict()),
                "headct_exporter": used,
                "headct_size": str(size),
                "headct_weights_sha256": weights_sha256 or "",
            })
        finally:
            Path(f"{tmp}.data").unlink(missing_ok=True)  # the exporter's external data, if it wrote any
    log.info("exported %s to %s with the %s exporter", spec.name, path, used)
    return ExportResult(path, used, inputs, outputs)


def export_checkpoint(checkpoint_dir: str | Path, onnx_path: str | Path, exporter: str = "auto") -> ExportResult:
    """Load a checkpoint and export it; the checkpoint's input size fixes H and W."""
    model, config = load_checkpoint(checkpoint_dir)
    size = config.input.size
    if not size:
        raise ValueError(f"{checkpoint_dir}: config has no input size; cannot fix the ONNX input shape")
    return export_onnx(model, onnx_path, size=int(size), weights_sha256=weights_digest(checkpoint_dir),
                       exporter=exporter)


def onnx_for_checkpoint(checkpoint_dir: str | Path) -> Path:
    """``CKPT/model.onnx``, exported now when missing or older than the weights beside it."""
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / ONNX_FILE
    digest = weights_digest(checkpoint_dir)
    if path.is_file() and (digest is None or read_metadata(path).get("headct_weights_sha256") == digest):
        return path
    if path.is_file():
        log.info("%s does not match the checkpoint's weights; exporting again", path)
    else:
        log.info("no %s yet; exporting the checkpoint", path)
    export_checkpoint(checkpoint_dir, path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (graph not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}


class OnnxModel(nn.Module):
    """An onnxruntime CPU session behind the ``nn.Module`` face ``series_logits`` expects.

    It has ``spec`` (rebuilt from the checkpoint config), ``forward`` for
    slice-level models and ``forward_series`` for series-level ones; a
    zero-size parameter tells callers its device (CPU).
    """

    def __init__(self, path: str | Path, config: CheckpointConfig, *, threads: int | None = None,
                 spinning: bool = False) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # NCHWc layouts, fusions
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        # Idle worker threads sleep instead of spinning: a spinning pool holds its
        # cores between batches, which the DICOM reader of the next study and any
        # other process on a shared server need (benchmarks/predict_cpu.py measures both).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.spec = config.spec()
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], {"x": _numpy(x)})
        return torch.from_numpy(logits)

    def forward_series(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is not None and not bool(mask.all()):
            raise ValueError("the ONNX series model takes whole series (no padding mask)")
        slice_logits, series_logits = self.session.run(["slice_logits", "series_logits"], {"x": _numpy(x)})
        return torch.from_numpy(slice_logits), torch.from_numpy(series_logits)


def export_command(args: argparse.Namespace) -> int:
    """``headct export CKPT --onnx FILE``: the whole model (windowing included) as ONNX."""
    result = export_checkpoint(args.checkpoint, args.onnx)
    config_copy = Path(result.path).with_suffix(".config.json")
    source = Path(args.checkpoint) / "config.json"
    atomic.write_bytes(config_copy, source.read_bytes())
    print(f"exported with the {result.exporter} exporter (input x [batch, ...] raw values): "
          f"{result.path} (config beside it: {config_copy})")
    return 0


# --- helpers -------------------------------------------------------------------

class _SeriesOutputs(nn.Module):
    """A series-level model as a two-output graph: its own ``forward_whole_series``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_whole_series(x)


def _export_form(model: nn.Module, spec: ModelSpec, size: int) -> tuple[nn.Module, torch.Tensor, list[str], list[str], dict[str, dict[int, str]]]:
    if spec.level == "series":
        images = [spec.image_channels] if spec.image_channels > 1 else []  # [B, S, C, H, W] for C 8-bit images
        example = torch.full((2, EXAMPLE_SLICES, *images, size, size), 40.0)  # sizes of 1 would be specialised
        return _SeriesOutputs(model), example, ["x"], ["slice_logits", "series_logits"], {"x": {0: "batch", 1: "slices"}}
    example = torch.full((2, spec.planes, size, size), 40.0)
    return model, example, ["x"], ["logits"], {"x": {0: "batch"}}


def _run_exporter(model: nn.Module, example: torch.Tensor, path: Path, inputs: list[str], outputs: list[str],
                  dims: dict[str, dict[int, str]], exporter: str) -> str:
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be auto, dynamo or torchscript, got {exporter!r}")
    if exporter in ("auto", "dynamo"):
        try:
            shapes = {name: {axis: torch.export.Dim(label, min=1, max=4096) for axis, label in axes.items()}
                      for name, axes in dims.items()}
            with torch.no_grad():
                program = torch.onnx.export(model, (example,), dynamo=True, input_names=inputs,
                                            output_names=outputs, dynamic_shapes=shapes, opset_version=OPSET,
                                            verbose=False)
            program.save(str(path), external_data=False)
            return "dynamo"
        except Exception as err:  # noqa: BLE001 — any exporter failure falls back, and is logged
            if exporter == "dynamo":
                raise
            log.warning("dynamo ONNX export failed (%s: %s); using the TorchScript exporter",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=dims, opset_version=OPSET)
    return "torchscript"


def _add_metadata(path: Path, fields: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    existing = {prop.key: prop for prop in proto.metadata_props}
    for key, value in fields.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(path))


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().float().numpy())
