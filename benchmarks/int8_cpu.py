"""Is an int8 onnxruntime model worth it on the CPU? Static quantisation of a trained checkpoint, judged.

Issue 17 allows an int8 model only if its test AUROC stays within 0.005 of
fp32. This takes a trained checkpoint and its cache (the demo's:
``headct demo --out DEMO`` leaves ``DEMO/run/best`` and ``DEMO/cache``),
exports fp32 ONNX (``headct.export.onnx_for_checkpoint``), quantises it with
onnxruntime's static quantisation (QDQ, int8 per-channel weights, uint8
activations: VNNI's U8S8 form; Conv/Gemm/MatMul only, so the windowing at the
input stays fp32), calibrated on ``--calibration`` training slices, then
predicts the test split with both (``headct.inference.predict_split``). Speed
is timed where it matters, at the 256-px input of ``benchmarks/predict_cpu.py``:
the same weights exported at 256 px, quantised the same way (calibration slices
resampled to 256), 40 slices in batches of 8. The int8 model is kept only if it
loses at most 0.005 micro-AUROC and is faster. JSON: the AUROCs, their
difference, the speed-up and the verdict.

    python benchmarks/int8_cpu.py --checkpoint DEMO/run/best --data DEMO/cache \
        [--calibration 128] [--json benchmarks/results/int8_cpu.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from headct.bench import cpu_machine, write_json
from headct.checkpoint import load_checkpoint, read_checkpoint_config
from headct.data.cache import Cache
from headct.data.resample import resample_slices
from headct.decide import probabilities
from headct.export import OnnxModel, export_onnx, onnx_for_checkpoint
from headct.inference import predict_split
from headct.metrics import classification_metrics
from headct.tasks import get_task

MAX_AUROC_LOSS = 0.005
THREADS = 2
TIME_SIZE = 256
QUANTISATION = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, op_types_to_quantize=["Conv", "Gemm", "MatMul"])


class SliceBatches(CalibrationDataReader):
    """Training slices of the cache, a few at a time, as the exported graph's ``x``."""

    def __init__(self, cache: Cache, count: int, batch: int = 8, seed: int = 0, size: int | None = None) -> None:
        rows = np.random.default_rng(seed).permutation(cache.rows("train"))[:count]
        slices = np.stack([cache.slice(int(r)) for r in rows])
        slices = resample_slices(slices, size).astype(np.float32)[:, None] if size else slices.astype(np.float32)[:, None]
        self.batches = iter(np.array_split(slices, max(1, len(slices) // batch)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"x": np.ascontiguousarray(batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--calibration", type=int, default=128, help="training slices to calibrate on")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "int8_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    cache = Cache(args.data)
    config = read_checkpoint_config(args.checkpoint)
    task = get_task(config.task, cache.labels)
    fp32_path = onnx_for_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="headct-int8-") as tmp:
        int8_path = Path(tmp) / "model.int8.onnx"
        start = time.perf_counter()
        quantize_static(str(fp32_path), str(int8_path), SliceBatches(cache, args.calibration), **QUANTISATION)
        quantise_s = time.perf_counter() - start
        models = {"fp32": OnnxModel(fp32_path, config, threads=THREADS),
                  "int8": OnnxModel(int8_path, config, threads=THREADS)}
        results = {name: accuracy(model, cache, task) for name, model in models.items()}
        model, _ = load_checkpoint(args.checkpoint)
        large_fp32, large_int8 = Path(tmp) / "large.onnx", Path(tmp) / "large.int8.onnx"
        export_onnx(model, large_fp32, size=TIME_SIZE)
        quantize_static(str(large_fp32), str(large_int8), SliceBatches(cache, args.calibration, size=TIME_SIZE),
                        **QUANTISATION)
        study = resample_slices(np.stack([cache.slice(int(r)) for r in cache.rows("test")[:40]]), TIME_SIZE)
        for name, path in (("fp32", large_fp32), ("int8", large_int8)):
            results[name]["forward_40_slices_s"] = forward_time(OnnxModel(path, config, threads=THREADS), study,
                                                                args.runs)
    loss = results["fp32"]["micro_auroc"] - results["int8"]["micro_auroc"]
    report = {
        "benchmark": "int8_cpu",
        "what": "onnxruntime static int8 (QDQ, per-channel, U8S8) vs fp32 on the test split of a trained checkpoint",
        "checkpoint_model": config.model.name,
        "calibration_slices": args.calibration,
        "quantise_s": quantise_s,
        "results": results,
        "micro_auroc_loss": loss,
        "speedup": results["fp32"]["forward_40_slices_s"] / results["int8"]["forward_40_slices_s"],
        "max_auroc_loss": MAX_AUROC_LOSS,
        "kept": bool(loss <= MAX_AUROC_LOSS and results["int8"]["forward_40_slices_s"] < results["fp32"]["forward_40_slices_s"]),
        "machine": cpu_machine(),
    }
    write_json(report, args.json)
    for name, r in results.items():
        print(f"{name}: micro AUROC {r['micro_auroc']:.4f}, any {r['any_auroc']:.4f}, "
              f"40 slices at {TIME_SIZE} px in {r['forward_40_slices_s']:.3f} s")
    print(f"AUROC loss {loss:.4f} (limit {MAX_AUROC_LOSS}), speed-up x{report['speedup']:.2f}: "
          f"{'kept' if report['kept'] else 'not kept'}; written {args.json}")


def accuracy(model: OnnxModel, cache: Cache, task) -> dict:
    """Test-split AUROCs at slice level."""
    pred = predict_split(model, cache, task, "test", batch_size=8, progress=False)
    metrics = classification_metrics(pred.targets, probabilities(pred.logits, task.kind), labels=task.labels,
                                     kind=task.kind)
    return {"micro_auroc": metrics["micro_auroc"], "any_auroc": metrics["per_class"].get("any", {}).get("auroc")}


def forward_time(model: OnnxModel, study: np.ndarray, runs: int) -> float:
    """Median seconds of one forward pass over the study's slices in batches of 8 (after one warm-up)."""
    x = torch.from_numpy(study.astype(np.float32))[:, None]
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        for batch in x.split(8):
            model(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


if __name__ == "__main__":
    main()
