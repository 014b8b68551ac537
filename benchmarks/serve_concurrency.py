"""`headct serve` under concurrent uploads: p50/p95 latency with a worker pool vs one inference at a time.

One phantom study (40 slices, ``--size`` px, DICOM) is posted by ``--requests``
clients at once (each its own connection, all started together) to
``headct serve --runtime onnx`` run as the CLI runs it, first with
``--workers 1`` (one inference at a time: the service before issue 12 item 7),
then with ``--workers N`` (N predictors, each with CPU cores / N onnx threads).
The checkpoint is an untrained effnet-2d at ``--input`` px (latency does not
depend on the weights); it is exported to ONNX before timing and each server
answers one warm-up request first. Latency is per request, from its first byte
sent to its answer read. Reported, never asserted.

    python benchmarks/serve_concurrency.py [--requests 50] [--size 512] [--input 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLICES = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--size", type=int, default=512, help="study image size (px)")
    parser.add_argument("--input", type=int, default=256, help="model input size (px)")
    parser.add_argument("--workers", type=int, default=2, help="pool size to compare with one worker")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "serve_concurrency.json"))
    args = parser.parse_args()

    from headct.bench import write_json
    from headct.checkpoint import save_checkpoint
    from headct.export import onnx_for_checkpoint
    from headct.models import build_model
    from headct.phantom.dataset import PhantomConfig, write_phantom
    from headct.tasks import RSNA_LABELS

    with tempfile.TemporaryDirectory(prefix="headct-bench-") as tmp:
        work = Path(tmp)
        write_phantom(PhantomConfig(out=work / "phantom", studies=1, size=args.size, slices=SLICES, seed=0))
        study = next((work / "phantom" / "dicom").iterdir())
        files = [("files", (f"{n}.dcm", p.read_bytes(), "application/dicom"))
                 for n, p in enumerate(sorted(p for p in study.rglob("*.dcm")))]
        assert len(files) == SLICES, f"the phantom wrote {len(files)} slices"
        checkpoint = save_checkpoint(build_model("effnet-2d", len(RSNA_LABELS)), work / "ckpt", size=args.input,
                                     task="rsna", labels=list(RSNA_LABELS), label_kind="multilabel")
        onnx_for_checkpoint(checkpoint)
        load_before = os.getloadavg()
        results = {f"workers_{w}": run_server(checkpoint, w, files, args.requests) for w in (1, args.workers)}
    report = {
        "benchmark": "serve_concurrency",
        "what": f"{args.requests} concurrent POST /v1/predict of one {SLICES}-slice {args.size}x{args.size} DICOM study",
        "model": f"effnet-2d (untrained weights), input {args.input}, onnx runtime",
        "results": results,
        "machine": {"cpu_count": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(), "python": platform.python_version(),
                    "note": "shared build machine: other jobs ran at the same time (see load averages)"},
    }
    out = Path(args.json)
    write_json(report, out)
    for name, r in results.items():
        print(f"{name}: p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s, all done in {r['wall_s']:.1f} s, "
              f"{r['ok']}/{r['requests']} answered 200")
    print(f"load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; written {out}")


def run_server(checkpoint: Path, workers: int, files: list, requests: int) -> dict:
    """Start `headct serve --workers N`, post ``requests`` uploads at once, stop it; latencies in seconds."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-c", "from headct.cli import main; raise SystemExit(main())", "serve", "--model",
         str(checkpoint), "--port", str(port), "--runtime", "onnx", "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "headct serve did not start"
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.post(f"{base}/v1/predict", files=files, timeout=600).status_code == 200  # warm-up
        latencies: list[float] = []
        statuses: list[int] = []
        start_together = threading.Barrier(requests)
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(timeout=1800) as http:
                start_together.wait()
                began = time.perf_counter()
                status = http.post(f"{base}/v1/predict", files=files).status_code
                with lock:
                    latencies.append(time.perf_counter() - began)
                    statuses.append(status)

        threads = [threading.Thread(target=client) for _ in range(requests)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"workers": workers, "requests": requests, "ok": statuses.count(200),
            "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95)),
            "mean_s": statistics.fmean(latencies), "wall_s": wall}


if __name__ == "__main__":
    main()
