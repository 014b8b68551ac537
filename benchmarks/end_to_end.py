"""End to end, DICOM in → predictions out: slices per second of each stage and overall.

    python benchmarks/end_to_end.py --studies 100 --size 512 --input-size 256 --procs 12 --json OUT.json [--time-budget 90]

N phantom studies (RSNA layout, uncompressed DICOM; then the same files as
JPEG lossless) go through the public commands, as a site would run them:

- ``headct prepare`` with every core (DICOM → the memory-mapped cache);
- evaluation of the cache's test split (``headct.evaluate.evaluate`` without
  the HTML report and with 100 bootstrap resamples: inference and metrics);
- ``headct predict`` over the DICOM folder under ``torchrun --nproc_per_node
  PROCS`` (several processes read and decode DICOM while sharing the GPU; the
  fast path of ``headct.inference``). With ``--replicas K`` predict reads every
  study folder K times (hard links, so the phantom is generated once; the files
  then come from the page cache, as a second pass over a dataset would), which
  gives start-up something to amortise over.

Slices per second: prepare and predict over every slice, evaluate over the
test slices; "prepare + evaluate" adds the per-slice times of both. Each
command's rate includes its start-up (imports, CUDA, process group); the
"steady" rate counts only between the first and the last output file written
(study JSONs, cache shard sidecars), so start-up drops out; for predict over
replicas it is the difference to ``predict_startup``, the same command over
one study per process. The
issue-16 target is judged on predict over uncompressed DICOM (>= 5,000
slices/s on one H200). The model is an untrained effnet-2d checkpoint at the
cache size: speed does not depend on the weights. The JSON is rewritten after
every stage, so a run stopped at its time budget keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deadline import RESERVE_S, Clock, run_until  # noqa: E402

from headct.bench import environment, write_json  # noqa: E402

log = logging.getLogger("end_to_end")

LABELS = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
TARGET_SLICES_PER_S = 5_000.0
MODEL = "effnet-2d"


def build_parser() -> argparse.ArgumentParser:
    """The command line (gpu_run.py's tests parse the GPU run's arguments with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="phantom slice size (RSNA's is 512)")
    parser.add_argument("--input-size", type=int, default=256, help="cache and model input size")
    parser.add_argument("--slices", type=int, default=None, help="slices per study (default: the phantom's)")
    parser.add_argument("--replicas", type=int, default=1, help="predict over K hard-linked copies of the studies")
    parser.add_argument("--procs", type=int, default=None, help="predict processes (default: min(8, CPUs))")
    parser.add_argument("--workers", type=int, default=None, help="prepare workers (default: every CPU)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--jpeg-studies", type=int, default=None,
                        help="studies in the JPEG-lossless copy (default: all; 0: none); its encoder is pure Python")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds for the whole benchmark")
    parser.add_argument("--work", default=None, help="keep files here (default: a temporary folder)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "end_to_end.json"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    clock = Clock(args.time_budget, reserve_s=RESERVE_S)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cpus = os.cpu_count() or 1
    procs = args.procs or min(8, cpus)
    workers = args.workers or cpus
    result: dict[str, Any] = {
        "benchmark": "end_to_end",
        "settings": {"studies": args.studies, "size": args.size, "input_size": args.input_size,
                     "slices": args.slices, "device": device, "jpeg_studies": args.jpeg_studies,
                     "predict_replicas": args.replicas,
                     "predict_processes": procs, "prepare_workers": workers, "model": MODEL,
                     "time_budget_s": args.time_budget},
        "environment": environment(torch.device(device)),
        "variants": {},
        "complete": False,
    }
    out = Path(args.json)
    with tempfile.TemporaryDirectory(prefix="headct-e2e-") as tmp:
        work = Path(args.work or tmp)
        raw = work / "uncompressed"
        code, seconds = _headct(clock, "phantom", "--out", str(raw), "--studies", str(args.studies),
                                "--layout", "rsna", "--size", str(args.size), "--seed", "0",
                                *(["--slices", str(args.slices)] if args.slices else []))
        if code != 0:
            return _finish(result, out, "phantom did not finish")
        slices = json.loads((raw / "phantom.json").read_text())["counts"]["slices"]
        result["slices"] = slices
        result["phantom_s"] = round(seconds, 2)
        checkpoint = untrained_checkpoint(work / "checkpoint", args.input_size)
        variants = {"uncompressed": (raw, slices)}
        if args.jpeg_studies != 0:
            started = time.perf_counter()
            copy = jpeg_lossless_copy(raw, work / "jpeg_lossless", workers, args.jpeg_studies)
            variants["jpeg_lossless"] = (copy, sum(1 for _ in (copy / "dicom").rglob("*.dcm")))
            result["jpeg_encode_s"] = round(time.perf_counter() - started, 2)
        for name, (folder, count) in variants.items():
            stages = result["variants"].setdefault(name, {})
            cache = work / f"cache_{name}"
            stages["prepare"] = _stage(clock, count, cache / "shards", "prepare", str(folder), "--format", "rsna",
                                       "--labels", str(folder / "labels.csv"), "--out", str(cache),
                                       "--size", str(args.input_size), "--workers", str(workers))
            write_json(_judged(result), out)
            predictions = work / f"predict_{name}"
            studies = replicated(folder / "dicom", work / f"replicas_{name}", args.replicas)
            # start-up alone: one study per process, so the big run's steady rate is the difference of the two
            first = first_studies(folder / "dicom", work / f"startup_{name}", procs)
            stages["predict_startup"] = _stage(clock, sum(1 for _ in first.rglob("*.dcm")), None, "predict",
                                               str(first), "--model", str(checkpoint), "--out",
                                               str(work / f"startup_out_{name}"), "--device", device, procs=procs)
            # replicas share StudyInstanceUIDs, so their JSONs overwrite each other: no steady rate from them
            stages["predict"] = _stage(clock, count * args.replicas, predictions if args.replicas == 1 else None,
                                       "predict", str(studies),
                                       "--model", str(checkpoint), "--out", str(predictions), "--device", device,
                                       procs=procs)
            steady = _beyond_startup(stages["predict"], stages["predict_startup"])
            if steady is not None:
                stages["predict"]["steady_slices_per_s"] = steady
            write_json(_judged(result), out)
            if name == "uncompressed" and stages["prepare"].get("finished"):
                evaluation = work / "evaluate"
                stages["evaluate"] = _stage(clock, _test_slices(cache), None, "-c", EVALUATE.format(
                    checkpoint=str(checkpoint), cache=str(cache), out=str(evaluation), device=device), module=False)
                stages["prepare_plus_evaluate_slices_per_s"] = _chain(stages["prepare"], stages["evaluate"])
            write_json(_judged(result), out)
    result["complete"] = all(s.get("finished") for v in result["variants"].values()
                             for s in v.values() if isinstance(s, dict))
    return _finish(result, out, None)


def untrained_checkpoint(path: Path, size: int) -> Path:
    """An effnet-2d checkpoint for the RSNA task with frozen thresholds and temperature (no fitting pass)."""
    from headct.checkpoint import save_checkpoint
    from headct.models import build_model

    torch.manual_seed(0)
    return save_checkpoint(build_model(MODEL, len(LABELS)), path, size=size, task="rsna", labels=LABELS,
                           label_kind="multilabel", thresholds=dict.fromkeys(LABELS, 0.5), temperature=1.0)


def jpeg_lossless_copy(raw: Path, out: Path, workers: int, studies: int | None = None) -> Path:
    """The phantom folder again (its first ``studies`` studies), every DICOM as JPEG lossless SV1."""
    folders = sorted(p for p in (raw / "dicom").iterdir() if p.is_dir())[:studies]
    files = [f for folder in folders for f in sorted(folder.glob("*.dcm"))]
    shutil.copytree(raw, out, ignore=shutil.ignore_patterns("*.dcm"))
    for extra in sorted(p for p in (out / "dicom").iterdir() if p.is_dir())[len(folders):]:
        shutil.rmtree(extra)  # studies left out of the copy, and their label rows below
    kept = {f"ID_{f.stem}" for f in files}  # the phantom names each file by its SOPInstanceUID
    lines = (raw / "labels.csv").read_text().splitlines(keepends=True)
    (out / "labels.csv").write_text(lines[0] + "".join(r for r in lines[1:] if r.rsplit("_", 1)[0] in kept))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_transcode, files, [out / f.relative_to(raw) for f in files], chunksize=16))
    return out


def first_studies(studies: Path, out: Path, count: int) -> Path:
    """A folder holding the first ``count`` study folders of ``studies`` (hard links)."""
    for study in sorted(p for p in studies.iterdir() if p.is_dir())[:count]:
        _link_files(study, out / study.name)
    return out


def _beyond_startup(run: dict[str, Any], startup: dict[str, Any]) -> float | None:
    """Slices/s of ``run`` past its start-up: the extra slices over the extra seconds of a start-up-only run."""
    if not (run.get("finished") and startup.get("finished")) or run["seconds"] <= startup["seconds"]:
        return None
    return round((run["slices"] - startup["slices"]) / (run["seconds"] - startup["seconds"]), 1)


def replicated(studies: Path, out: Path, replicas: int) -> Path:
    """A folder holding every study folder of ``studies`` ``replicas`` times, as hard links (1: ``studies``)."""
    if replicas <= 1:
        return studies
    for k in range(replicas):
        for study in (p for p in studies.iterdir() if p.is_dir()):
            _link_files(study, out / f"r{k:03d}_{study.name}")
    return out


def _link_files(folder: Path, target: Path) -> None:
    """``target`` made, holding a hard link to every file of ``folder``."""
    target.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        os.link(f, target / f.name)


def _transcode(source: Path, target: Path) -> None:
    import pydicom

    from headct.phantom.writers import compress_jpeg_lossless

    ds = pydicom.dcmread(source)
    compress_jpeg_lossless(ds)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)


# --- helpers -----------------------------------------------------------------------------------

EVALUATE = ("from headct.evaluate import evaluate; "
            "evaluate({checkpoint!r}, {cache!r}, {out!r}, split='test', device={device!r}, report=False, "
            "n_bootstrap=100)")


def _stage(clock: Clock, slices: int, outputs: Path | None, *args: str, procs: int = 1,
           module: bool = True) -> dict[str, Any]:
    code, seconds = _headct(clock, *args, procs=procs, module=module)
    stage = {"seconds": round(seconds, 3), "slices": slices, "finished": code == 0, "exit_code": code}
    if code == 0:
        stage["slices_per_s"] = round(slices / seconds, 1)
        if outputs is not None:
            stage["steady_slices_per_s"] = _steady_rate(outputs, slices)
    log.info("%s: %s", "evaluate" if args[0] == "-c" else args[0], stage)
    return stage


def _steady_rate(folder: Path, slices: int) -> float | None:
    """Slices/s between the first and the last ``*.json`` written in ``folder`` (equal-sized studies)."""
    times = sorted(p.stat().st_mtime for p in folder.glob("*.json"))
    if len(times) < 3 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) * (slices / len(times)) / (times[-1] - times[0]), 1)


def _headct(clock: Clock, *args: str, procs: int = 1, module: bool = True) -> tuple[int | None, float]:
    command = ["-m", "headct.cli", *args] if module else list(args)
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               *command]
    else:
        cmd = [sys.executable, *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, procs)))}
    return run_until(cmd, clock.left(), env=env)


def _test_slices(cache: Path) -> int:
    from headct.data.cache import Cache

    return len(Cache(cache).rows("test"))


def _chain(*stages: dict[str, Any]) -> float | None:
    rates = [s.get("slices_per_s") for s in stages]
    if not all(rates):
        return None
    return round(1.0 / sum(1.0 / r for r in rates), 1)


def _judged(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the issue-16 target judged on what predict measured so far (None off CUDA)."""
    predict = result["variants"].get("uncompressed", {}).get("predict", {})
    value = predict.get("slices_per_s")
    on_gpu = str(result["settings"]["device"]).startswith("cuda")
    result["target"] = {"description": "uncompressed DICOM -> predictions (headct predict, torchrun)",
                        "value": value, "target": TARGET_SLICES_PER_S, "better": ">=", "unit": "slices/s",
                        "met": (value >= TARGET_SLICES_PER_S) if value is not None and on_gpu else None}
    return result


def _finish(result: dict[str, Any], out: Path, problem: str | None) -> int:
    if problem:
        result["problem"] = problem
    write_json(_judged(result), out)
    print(f"wrote {out}")
    return 0 if problem is None else 1


if __name__ == "__main__":
    sys.exit(main())
