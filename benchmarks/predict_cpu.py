"""CPU latency of `Predictor.predict`: one 40-slice 512² DICOM study → prediction JSON, 2 threads.

The study is written by the phantom (``headct.phantom.write_phantom``, one
study, 512 px, 40 slices). The model is effnet-2d with untrained weights (the
timing does not depend on them) at input size 256 — a realistic cache size —
so every run reads 40 DICOM files, checks and chooses the series, resamples
512 → 256, runs 40 slices and builds the JSON.

Each runtime is timed as ``headct predict`` builds it by default, and beside
it the setting it replaced, so the JSON says what won:

- ``torch``: fp32, channels_last, the frozen TorchScript trace
  (``prepare_for_inference``'s CPU default); ``torch-eager``: the same without
  the trace (the previous default).
- ``onnx``: onnxruntime, all graph optimisations, worker threads that sleep
  between batches, batches of 8 (the default); ``onnx-spinning``: the same with
  onnxruntime's default spinning threads and batches of 32 (the previous default).

For each: the median of ``--runs`` timed runs after one warm-up (wall and
process CPU time), one run split into stages, the bare model in the same
runtime on the same batches (so ``overhead`` = predict / bare model), and the
FLOP floor: the model's FLOPs for the study divided by the matrix-multiply rate
measured in the same run (``headct.bench.matmul_gflops``), so ``floor_ratio`` =
predict / floor. Every variant's probabilities (unrounded) are compared with eager fp32
torch (``max_abs_diff_vs_eager``). Targets: onnx <= 1.0 s, torch <= 1.5 s.

    python benchmarks/predict_cpu.py [--runs 5] [--json benchmarks/results/predict_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import headct
from headct.bench import BenchConfig, cpu_machine, forward_gflops, matmul_gflops, write_json
from headct.checkpoint import load_checkpoint, save_checkpoint
from headct.data.resample import resample_slices
from headct.export import OnnxModel, onnx_for_checkpoint
from headct.inference import prepare_for_inference, series_logits
from headct.io.volume import Volume
from headct.models import build_model
from headct.phantom.dataset import PhantomConfig, write_phantom
from headct.predict import Predictor, _read_source, choose_series
from headct.tasks import RSNA_LABELS

TARGETS_S = {"onnx": 1.0, "torch": 1.5}
SIZE = 256
SLICES = 40
THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "predict_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    machine_before = cpu_machine()
    with tempfile.TemporaryDirectory(prefix="headct-bench-") as tmp:
        work = Path(tmp)
        write_phantom(PhantomConfig(out=work / "phantom", studies=1, size=512, slices=SLICES, seed=0))
        study = next((work / "phantom" / "dicom").iterdir())
        checkpoint = save_checkpoint(build_model("effnet-2d", len(RSNA_LABELS)), work / "ckpt", size=SIZE,
                                     task="rsna", labels=list(RSNA_LABELS), label_kind="multilabel")
        predictors = variants(checkpoint)
        (chosen,) = choose_series(_read_source(study))
        reference, _ = predictors["torch-eager"].volume_probabilities(chosen.volumes[0])
        results = {name: time_predictor(p, study, args.runs, reference) for name, p in predictors.items()}
    probe = matmul_gflops()
    model_gflop = forward_gflops(build_model("effnet-2d", len(RSNA_LABELS)), BenchConfig(img_size=SIZE)) * SLICES
    floor_s = model_gflop / probe
    for r in results.values():
        r["floor_ratio"] = r["median_s"] / floor_s
        r["model_floor_ratio"] = r["bare_model_median_s"] / floor_s
    report = {
        "benchmark": "predict_cpu",
        "what": f"DICOM folder ({SLICES} slices, 512x512) -> prediction JSON via Predictor.predict",
        "model": "effnet-2d (untrained weights)",
        "input_size": SIZE,
        "threads": THREADS,
        "runs": args.runs,
        "targets_s": TARGETS_S,
        "median_s": {name: r["median_s"] for name, r in results.items()},
        "meets_target": {name: results[name]["median_s"] <= target for name, target in TARGETS_S.items()},
        "model_gflop_per_study": model_gflop,
        "matmul_probe_gflops": probe,
        "floor_s": floor_s,
        "detail": results,
        "machine": {"before": machine_before, "after": cpu_machine(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "headct": headct.__version__},
    }
    write_json(report, args.json)
    print(f"{machine_before['cpu']}, {THREADS} threads; load average before "
          f"{machine_before['load_average'][0]:.1f}, after {report['machine']['after']['load_average'][0]:.1f}; "
          f"matmul {probe:.0f} GFLOP/s, model {model_gflop:.1f} GFLOP/study, floor {floor_s:.3f} s")
    for name, r in results.items():
        target = TARGETS_S.get(name)
        verdict = "" if target is None else f"; target {target} s: {'met' if r['median_s'] <= target else 'MISSED'}"
        print(f"{name:14s} median {r['median_s']:.3f} s, CPU {r['median_cpu_s']:.3f} s, bare model "
              f"{r['bare_model_median_s']:.3f} s (overhead x{r['overhead']:.2f}, floor x{r['floor_ratio']:.1f}); "
              f"stages {', '.join(f'{k} {v:.3f}' for k, v in r['stages_s'].items())}; "
              f"max |dp| vs eager {r['max_abs_diff_vs_eager']:.1e}{verdict}")
    print(f"written {args.json}")


def variants(checkpoint: Path) -> dict[str, Predictor]:
    """The default Predictor of each runtime, and the setting each default replaced."""
    model, config = load_checkpoint(checkpoint)
    onnx_path = onnx_for_checkpoint(checkpoint)
    return {
        "torch": Predictor.from_checkpoint(checkpoint, device="cpu"),
        "torch-eager": Predictor(prepare_for_inference(model, "cpu", amp=None, freeze=False), config,
                                 runtime="torch", batch_size=32),
        "onnx": Predictor.from_checkpoint(checkpoint, runtime="onnx", threads=THREADS),
        "onnx-spinning": Predictor(OnnxModel(onnx_path, config, threads=THREADS, spinning=True), config,
                                   runtime="onnx", batch_size=32),
    }


def time_predictor(predictor: Predictor, study: Path, runs: int, reference: np.ndarray) -> dict:
    """Warm up once, then time ``runs`` full predictions (JSON text included), and the bare model."""
    result = predictor.predict(study)
    json.dumps(result)
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        result = predictor.predict(study)
        json.dumps(result)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    stages, pixels, volume = stage_times(predictor, study)
    probabilities, _ = predictor.volume_probabilities(volume)  # unrounded, unlike the JSON
    bare = []
    for _ in range(runs):
        start = time.perf_counter()
        series_logits(predictor.model, pixels, batch_size=predictor.batch_size, device=predictor.device)
        bare.append(time.perf_counter() - start)
    median = statistics.median(walls)
    return {"median_s": median, "runs_s": walls, "median_cpu_s": statistics.median(cpus),
            "runtime": predictor.runtime, "batch_size": predictor.batch_size, "stages_s": stages,
            "bare_model_median_s": statistics.median(bare), "overhead": median / statistics.median(bare),
            "max_abs_diff_vs_eager": float(np.abs(probabilities - reference).max())}


def stage_times(predictor: Predictor, study: Path) -> tuple[dict, np.ndarray, Volume]:
    """One run split into reading, choosing the series, resampling and the model; the model's input; the series."""
    start = time.perf_counter()
    studies = _read_source(study)
    read = time.perf_counter()
    (chosen,) = choose_series(studies)
    selected = time.perf_counter()
    pixels = resample_slices(chosen.volumes[0].pixels, predictor.input_size)
    resampled = time.perf_counter()
    series_logits(predictor.model, pixels, batch_size=predictor.batch_size, device=predictor.device)
    forward = time.perf_counter()
    return ({"read_dicom": read - start, "choose_series": selected - read, "resample": resampled - selected,
             "model": forward - resampled}, pixels, chosen.volumes[0])


if __name__ == "__main__":
    main()
