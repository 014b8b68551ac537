"""Latency of the DICOM node: last CT instance received → SR and captures stored in Orthanc.

A 40-slice 512² phantom study is sent by C-STORE (pynetdicom) to an
in-process ``headct.listen.Node`` (onnx runtime, 2 threads, effnet-2d with
untrained weights at input size 256, as benchmarks/predict_cpu.py); the node
sends its results by C-STORE to Debian's Orthanc, started on loopback as the
tests start it (tests/conftest.py's ``orthanc_running``). The figure is

    latency = (results stored in Orthanc) − (last instance acknowledged) − quiet period

i.e. the node's own work after the study became complete: reading the 40
spooled files, predicting, building the SR and the captures, sending them;
Orthanc acknowledges a C-STORE once it has stored the instance. Two
scenarios, by frozen thresholds: ``negative`` (no finding: the SR only) and
``positive`` (ICH and intraparenchymal found on every slice: the SR plus
``MAX_OVERLAYS_PER_LABEL`` Grad-CAM captures per label, Grad-CAM in torch).
The node's own stage times (read, predict, DICOM build, send) and the
process CPU seconds are recorded too: on a shared, overloaded machine the
CPU seconds say what the work costs. Each scenario is warmed up once, then timed ``--runs`` times; the median is
the figure, against a 5 s target. The load average is recorded (the machine
may be shared).

    python benchmarks/listen_latency.py [--runs 2] [--json benchmarks/results/listen_latency.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

import headct
from headct.bench import write_json
from headct.checkpoint import save_checkpoint
from headct.dicom_out import MAX_OVERLAYS_PER_LABEL
from headct.listen import Destination, Node
from headct.models import build_model
from headct.phantom.dataset import PhantomConfig, write_phantom
from headct.predict import Predictor
from headct.tasks import RSNA_LABELS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import orthanc_running  # noqa: E402 - the tests' Orthanc launcher, one implementation

TARGET_S = 5.0
SIZE = 256
THREADS = 2
QUIET_S = 2.0
SCENARIOS = {
    "negative": dict.fromkeys(RSNA_LABELS, 1.0),
    "positive": {label: (0.0 if label in ("intraparenchymal", "any") else 1.0) for label in RSNA_LABELS},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "listen_latency.json"))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="headct-bench-") as tmp:
        work = Path(tmp)
        write_phantom(PhantomConfig(out=work / "phantom", studies=1, size=512, slices=40, seed=0))
        files = sorted(next((work / "phantom" / "dicom").iterdir()).glob("*.dcm"))
        (work / "orthanc").mkdir()
        with orthanc_running(work / "orthanc") as orthanc:
            for name, thresholds in SCENARIOS.items():
                torch.manual_seed(0)
                checkpoint = save_checkpoint(build_model("effnet-2d", len(RSNA_LABELS)), work / f"ckpt-{name}",
                                             size=SIZE, task="rsna", labels=list(RSNA_LABELS),
                                             label_kind="multilabel", thresholds=thresholds)
                predictor = Predictor.from_checkpoint(checkpoint, runtime="onnx", threads=THREADS)
                node = Node(predictor, work / f"spool-{name}", ae_title="HEADCT", host="127.0.0.1", port=0,
                            quiet_seconds=QUIET_S,
                            send_to=Destination(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port)).start()
                try:
                    timings = [time_study(node, orthanc, files) for _ in range(args.runs + 1)][1:]  # warm-up dropped
                finally:
                    node.stop()
                results[name] = {
                    "latency_s": [round(t["latency_s"], 3) for t in timings],
                    "process_cpu_s": [round(t["cpu_s"], 3) for t in timings],
                    "stages_s": [{k: round(v, 3) for k, v in t["stages"].items()} for t in timings],
                    "median_latency_s": round(statistics.median(t["latency_s"] for t in timings), 3),
                    "objects_sent": timings[-1]["objects"],
                    "meets_target": statistics.median(t["latency_s"] for t in timings) <= TARGET_S,
                }
                print(f"{name}: latency {results[name]['latency_s']} s (median "
                      f"{results[name]['median_latency_s']} s, {results[name]['objects_sent']} objects)")
    report = {
        "benchmark": "listen_latency",
        "what": "last instance acknowledged -> SR and captures stored in Orthanc, minus the quiet period",
        "study": {"slices": 40, "size": 512, "source": "headct phantom"},
        "model": {"name": "effnet-2d", "input_size": SIZE, "weights": "untrained", "runtime": "onnx",
                  "threads": THREADS, "gradcam": "torch"},
        "quiet_seconds": QUIET_S,
        "max_overlays_per_label": MAX_OVERLAYS_PER_LABEL,
        "target_s": TARGET_S,
        "runs": args.runs,
        "results": results,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "headct": headct.__version__,
    }
    write_json(report, args.json)
    print(f"wrote {args.json}")


def time_study(node: Node, orthanc: object, files: list[Path]) -> dict[str, float]:
    """Send the study, wait for its delivery: the latency after the quiet period, the node's stage times and
    the CPU seconds the whole process used from the last instance to the delivery (all threads; a figure
    the machine's other load does not inflate)."""
    orthanc.clear()
    delivered_before = len(node.delivered)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="HEADCT")
    try:
        statuses = [int(assoc.send_c_store(path).Status) for path in files]
        last_received, cpu_at_last = time.monotonic(), time.process_time()
    finally:
        assoc.release()
    if any(statuses):
        raise RuntimeError(f"the node refused instances: {sorted(set(statuses))}")
    for _ in range(6000):  # up to 10 minutes
        if len(node.delivered) > delivered_before:
            cpu_s = time.process_time() - cpu_at_last
            break
        time.sleep(0.01)
    else:
        raise RuntimeError("no delivery within 10 minutes")
    delivery = node.delivered[-1]
    return {"latency_s": delivery["at"] - last_received - QUIET_S, "objects": len(delivery["sop_uids"]),
            "cpu_s": cpu_s, "stages": delivery["seconds"]}


if __name__ == "__main__":
    main()
