"""Cache-build throughput: slices per second per core of ``headct prepare``.

Writes N synthetic 512x512 int16 uncompressed CT DICOMs (series of 40, one
flat folder as in RSNA) to a temporary folder, then builds the cache with one
worker, ``--size 256``, pinned to one core with one torch thread: header scan,
read to HU, sort, area-average resample (OpenCV), shard writes, index and split. The best
of ``--repeats`` fresh builds is kept; one more build runs under cProfile to say
where the time goes. Target: >= 800 slices/s/core.

``slices_per_s_per_core`` is wall-clock with the process pinned to one core;
on a machine that other work shares, that core is not ours alone, so
``slices_per_cpu_second`` (slices / process CPU time, ``time.process_time``)
and the load average are recorded beside it; on a shared machine the CPU-time
rate is the per-core figure (``meets_target_in_cpu_time``).

    python benchmarks/ingest.py [--slices 400] [--repeats 3] [--json benchmarks/results/ingest.json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from synthetic_ct import pin_to_one_core, write_random_ct

from headct.bench import cpu_name, write_json
from headct.data.prepare import PrepareConfig, prepare

TARGET = 800.0
SERIES_LENGTH = 40
PROFILED = {  # function name in the profile → phase
    "stage_chunk": "read pass: read_slice + resample + stage (total)",
    "read_slice": "  read_slice (DICOM to HU, headct.io)",
    "resample_slices": "  resample to size (OpenCV area average)",
    "build_series": "series pass: sort + write shard (total)",
    "assemble_series": "  assemble_series (sort along the normal, stack)",
    "write_shard": "  write shard + sidecar",
    "_index_columns": "index rows",
    "_assign_split": "split",
    "write_index": "write index.csv",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/ingest.json")
    args = parser.parse_args()
    pin_to_one_core()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "dicom"
        write_random_ct(source, args.slices, SERIES_LENGTH)
        for path in source.iterdir():  # warm the page cache: measure the build, not the disk
            path.read_bytes()
        load_before = os.getloadavg()[0]
        runs = [_timed_build(source, Path(tmp) / f"cache{r}", args.size) for r in range(args.repeats)]
        load_after = os.getloadavg()[0]
        best = max(runs, key=lambda r: r["slices_per_s"])
        best_cpu = min(r["cpu_ms_per_slice"] for r in runs)
        profile = _profiled_build(source, Path(tmp) / "cache-profiled", args.size, args.slices)

    result = {
        "slices": args.slices,
        "input_shape": [512, 512],
        "size": args.size,
        "series": -(-args.slices // SERIES_LENGTH),
        "workers": 1,
        "torch_threads": 1,
        "repeats": args.repeats,
        "slices_per_s_per_core": best["slices_per_s"],
        "slices_per_cpu_second": round(1000.0 / best_cpu, 1),
        "cpu_ms_per_slice": best_cpu,
        "wall_seconds": best["wall_s"],
        "all_runs_slices_per_s": [r["slices_per_s"] for r in runs],
        "all_runs_cpu_ms_per_slice": [r["cpu_ms_per_slice"] for r in runs],
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "target_slices_per_s_per_core": TARGET,
        "meets_target": best["slices_per_s"] >= TARGET,
        "meets_target_in_cpu_time": 1000.0 / best_cpu >= TARGET,
        "profile_ms_per_slice": profile,
        "cpu": cpu_name(),
        "cores_visible": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "pydicom": pydicom.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.json)
    write_json(result, out)
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


def _timed_build(source: Path, out: Path, size: int) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    result = prepare(PrepareConfig(input=str(source), format="dicom", out=str(out), size=size, workers=1))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"slices_per_s": round(result.slices / wall, 1), "cpu_ms_per_slice": round(1000 * cpu / result.slices, 3),
            "wall_s": round(wall, 3)}


def _profiled_build(source: Path, out: Path, size: int, slices: int) -> dict[str, float]:
    """Cumulative CPU ms per slice of each phase, from one build under cProfile (which adds overhead
    to Python-heavy code such as DICOM parsing, so the phases sum to more than an unprofiled build)."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    prepare(PrepareConfig(input=str(source), format="dicom", out=str(out), size=size, workers=1))
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    phases = {label: 0.0 for label in PROFILED.values()}
    total = 0.0
    for (file, _, name), (_, _, _, cumulative, _) in stats.items():
        if name in PROFILED and "headct" in file:
            phases[PROFILED[name]] += cumulative
        if name == "prepare" and file.endswith("prepare.py"):
            total = cumulative
    result = {label: round(1000 * seconds / slices, 3) for label, seconds in phases.items()}
    result["whole build (profiled)"] = round(1000 * total / slices, 3)
    return result


if __name__ == "__main__":
    main()
