"""Phantom speed: slices per second for HU + masks at 512², and for writing them as DICOM.

Run: ``python benchmarks/phantom_speed.py [--studies 6] [--size 512]``; writes
``benchmarks/results/phantom_speed.json``. One process, one thread (numpy here
is single-threaded elementwise work); the first study warms up and is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from headct.phantom import HEMORRHAGE_TYPES, RESCALES, default_slices, generate_study
from headct.phantom.writers import SeriesInfo, write_dicom_series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="time the whole set this often; report the best and median")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "phantom_speed.json"))
    args = parser.parse_args()
    slices = default_slices(args.size)
    lesion_sets = [(), ("epidural", "intraventricular"), ("subdural",), ("subarachnoid", "intraparenchymal"),
                   ("ischemic",), tuple(HEMORRHAGE_TYPES)]

    generate_study(0, size=args.size, slices=slices)  # warm-up
    totals, cpus = [], []
    for _ in range(args.repeats):  # the build machine is shared: other jobs slow single passes down
        generated = []
        cpu_start, start = time.process_time(), time.perf_counter()
        for i in range(args.studies):
            generated.append(generate_study(i + 1, size=args.size, slices=slices, lesions=lesion_sets[i % len(lesion_sets)]))
        totals.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    total, cpu = min(totals), min(cpus)

    write_seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, study in enumerate(generated):
            info = SeriesInfo("PHANTOM-0001", f"1.2.3.{i}", f"1.2.3.{i}.1", f"1.2.3.{i}.2",
                              [f"1.2.3.{i}.3.{k}" for k in range(study.num_slices)], study.pixel_spacing,
                              study.slice_thickness, list(study.z), RESCALES[i % len(RESCALES)])
            start = time.perf_counter()
            write_dicom_series(Path(tmp) / str(i), study.hu, info)
            write_seconds.append(time.perf_counter() - start)
    n = args.studies * slices
    result = {
        "benchmark": "phantom_speed",
        "size": args.size,
        "slices_per_study": slices,
        "studies": args.studies,
        "generate_slices_per_s": round(n / total, 1),  # best repeat
        "generate_ms_per_slice": round(1000 * total / n, 2),
        "generate_slices_per_s_median_repeat": round(n / float(np.median(totals)), 1),
        "generate_cpu_ms_per_slice": round(1000 * cpu / n, 2),
        "repeats": args.repeats,
        "dicom_write_slices_per_s": round(n / sum(write_seconds), 1),
        "dicom_write_ms_per_slice": round(1000 * sum(write_seconds) / n, 2),
        "what": "generate = HU float32 + lesion masks + tissue labels per slice (noise, blur, lesions included); "
                "dicom_write = encode + pydicom write of those slices to a temp folder; wall-clock unless named cpu "
                "(the build machine is shared, so wall time includes waiting for a core)",
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
                    "python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
