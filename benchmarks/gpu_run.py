"""The prepared GPU run: every owed figure in one command, within a wall-time budget (issue 16).

    benchmarks/gpu_run.sh                 # on one H200: 8 minutes, results in $OUT or benchmarks/results/gpu_run/
    benchmarks/gpu_run.sh --smoke         # the same sequence on a CPU at toy sizes (→ results/gpu_run_smoke/)

Runs, in this order, each as its own script with its own time budget:

1. ``gpu_targets.py``: every issue-7 target (StrokeNeXt-tiny img/s, latency,
   memory; EfficientNet-B0 2-D and +LSTM; training from the cache vs synthetic);
2. ``end_to_end.py``: phantom DICOM (uncompressed and JPEG lossless) →
   ``headct prepare`` on every core → evaluation, and ``headct predict`` over
   the DICOM folder under torchrun; slices/s per stage and overall;
3. ``seeds_comparison.py``: the five seed models, one budget, sized to the
   minutes left;
4. ``localisation.py``: Grad-CAM pointing game at 256 px, trained on the GPU.

Each stage gets a share of the time left (what an earlier stage leaves unused
goes to the later ones), is told it (``--time-budget``), and is stopped with its
process group a little after it. Every stage writes its JSON as it goes, and
this driver rewrites ``summary.json`` after every stage, so a run cut short
keeps what it measured. Everything lands in ONE folder of at most 8 files:
``summary.json``, ``gpu_run.log``, ``gpu_targets.json``, ``end_to_end.json``,
``seeds_comparison.json``, ``seeds_results.md``, ``localisation.json``.
Work files (phantoms, caches, runs) go to a temporary folder, not there.

At the end one line per target says met / not met (n/a on a CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deadline import OUT_OF_TIME, Clock, run_until  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "gpu_run"
SMOKE_OUT = HERE / "results" / "gpu_run_smoke"  # never mixed up with the GPU figures
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20
STOP_GRACE_S = 15.0
"""A stage is stopped this long after its own budget (it stops starting work at its budget)..."""
FINAL_GRACE_S = 10.0
"""...but never later than this after the whole run's budget."""
NEEDED_MODULES = ("torch", "timm", "pydicom", "pylibjpeg", "libjpeg", "openjpeg", "pytorch_grad_cam", "sklearn",
                  "safetensors", "yaml", "matplotlib")


@dataclass
class Stage:
    """One script of the run: its share of the time left and its arguments for a budget of ``s`` seconds."""

    name: str
    share: float
    outputs: list[str]
    args: Any = field(repr=False)  # (budget_s, out, work) -> list[str]


def gpu_stages(cpus: int) -> list[Stage]:
    """The H200 sizes. Seeds: phantom slices scale with its budget (about 40 per second, ≤ 21,000)."""
    return [
        Stage("targets", 0.45, ["gpu_targets.json"], lambda s, out, work: [
            "gpu_targets.py", "--json", str(out / "gpu_targets.json"), "--phantom-studies", "120",
            "--time-budget", f"{s:.0f}"]),
        Stage("end_to_end", 0.17, ["end_to_end.json"], lambda s, out, work: [
            "end_to_end.py", "--studies", "60", "--size", "512", "--input-size", "256", "--slices", "24",
            "--replicas", "20",
            "--procs", str(min(12, cpus)), "--workers", str(cpus), "--jpeg-studies", "20", "--device", "cuda",
            "--json", str(out / "end_to_end.json"), "--work", str(work / "e2e"), "--time-budget", f"{s:.0f}"]),
        Stage("seeds", 0.25, ["seeds_comparison.json", "seeds_results.md"], lambda s, out, work: [
            "seeds_comparison.py", "--studies", str(max(100, min(1000, int(s * 40 / 21)))), "--size", "256",
            "--epochs", "3", "--batch-size", "64", "--bench-iters", "10", "--bootstrap", "200",
            "--device", "cuda", "--work", str(work / "seeds"), "--json", str(out / "seeds_comparison.json"),
            "--markdown", str(out / "seeds_results.md"), "--time-budget", f"{s:.0f}"]),
        Stage("localisation", 0.13, ["localisation.json"], lambda s, out, work: [
            "localisation.py", "--studies", "120", "--phantom-size", "256", "--cache-size", "256", "--epochs", "4",
            "--batch-size", "64", "--limit", "32", "--runs", "2", "--device", "cuda",
            "--work", str(work / "localisation"), "--json", str(out / "localisation.json"),
            "--time-budget", f"{s:.0f}"]),
    ]


def smoke_stages(cpus: int) -> list[Stage]:
    """The same sequence at toy sizes, on the CPU."""
    return [
        Stage("targets", 0.25, ["gpu_targets.json"], lambda s, out, work: [
            "gpu_targets.py", "--device", "cpu", "--json", str(out / "gpu_targets.json"), "--phantom-studies", "3",
            "--time-budget", f"{s:.0f}"]),
        Stage("end_to_end", 0.30, ["end_to_end.json"], lambda s, out, work: [
            "end_to_end.py", "--studies", "3", "--size", "64", "--input-size", "32", "--slices", "4", "--replicas", "2",
            "--procs", "2", "--workers", str(min(2, cpus)), "--jpeg-studies", "1", "--device", "cpu",
            "--json", str(out / "end_to_end.json"), "--work", str(work / "e2e"), "--time-budget", f"{s:.0f}"]),
        Stage("seeds", 0.27, ["seeds_comparison.json", "seeds_results.md"], lambda s, out, work: [
            "seeds_comparison.py", "--studies", "8", "--size", "64", "--slices", "4", "--epochs", "1",
            "--max-steps-per-epoch", "1", "--batch-size", "4", "--models", "effnet-2d,strokenext-atto",
            "--bench-iters", "1", "--bootstrap", "20", "--workers", "0", "--device", "cpu",
            "--work", str(work / "seeds"), "--json", str(out / "seeds_comparison.json"),
            "--markdown", str(out / "seeds_results.md"), "--time-budget", f"{s:.0f}"]),
        Stage("localisation", 0.18, ["localisation.json"], lambda s, out, work: [
            "localisation.py", "--studies", "6", "--phantom-size", "64", "--slices", "6", "--cache-size", "32",
            "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "4", "--limit", "2", "--runs", "1",
            "--device", "cpu", "--work", str(work / "localisation"), "--json", str(out / "localisation.json"),
            "--time-budget", f"{s:.0f}"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (under 3 minutes)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time budget (default: 8, smoke 2.8)")
    parser.add_argument("--stages", default=None, help="comma-separated subset: targets,end_to_end,seeds,localisation")
    parser.add_argument("--targets", default=None,
                        help="comma-separated subset of gpu_targets.py's targets (its --only), e.g. to remeasure two")
    parser.add_argument("--out", default=None,
                        help="default: $OUT if set, else benchmarks/results/gpu_run/ (smoke: gpu_run_smoke/)")
    args = parser.parse_args(argv)

    clock = Clock(60 * (args.minutes or (2.8 if args.smoke else 8.0)))
    out = Path(args.out or os.environ.get("OUT") or (SMOKE_OUT if args.smoke else DEFAULT_OUT))
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "gpu_run.log"
    cpus = os.cpu_count() or 1
    stages = (smoke_stages if args.smoke else gpu_stages)(cpus)
    if args.stages:
        wanted = args.stages.split(",")
        stages = [s for s in stages if s.name in wanted]
    if args.targets:
        stages = [only_targets(s, args.targets.split(",")) for s in stages]
    env = _environment(args.smoke)
    summary: dict[str, Any] = {"run": "smoke (CPU, toy sizes)" if args.smoke else "gpu",
                               "budget_s": clock.budget_s, "preflight": preflight(args.smoke), "stages": {}}
    _say(log_file, f"gpu_run: {summary['run']}, {clock.budget_s:.0f} s budget, results in {out}")
    problem = summary["preflight"].get("problem")
    if problem:
        _say(log_file, f"gpu_run: cannot start: {problem}")
        _write(out / "summary.json", summary)
        return 2
    with tempfile.TemporaryDirectory(prefix="headct-gpu-run-") as tmp:
        for number, stage in enumerate(stages):
            budget = clock.left() * stage.share / sum(s.share for s in stages[number:])
            summary["stages"][stage.name] = run_stage(stage, budget, clock, out, Path(tmp), env, log_file)
            _write(out / "summary.json", summary)  # after every stage: a run cut short keeps what it measured
    summary["targets"] = target_lines(out)
    summary["wall_s"] = round(clock.elapsed, 1)
    summary["files"] = check_files(out)
    _write(out / "summary.json", summary)
    for line in summary["targets"]:
        _say(log_file, line)
    _say(log_file, f"gpu_run: {summary['wall_s']:.0f} s wall, {len(summary['files']['names'])} files in {out}"
         + ("" if summary["files"]["within_limits"] else " (OVER the 8 files / 16 MiB limits)"))
    return 0 if summary["files"]["within_limits"] else 1


def only_targets(stage: Stage, names: list[str]) -> Stage:
    """The targets stage measuring only ``names`` (``gpu_targets.py --only``); other stages as they are."""
    if stage.name != "targets":
        return stage
    base = stage.args
    return Stage(stage.name, stage.share, stage.outputs,
                 lambda s, out, work: [*base(s, out, work), *(arg for name in names for arg in ("--only", name))])


def run_stage(stage: Stage, budget: float, clock: Clock, out: Path, work: Path, env: dict[str, str],
              log_file: Path) -> dict[str, Any]:
    """Run one stage with ``budget`` seconds (stopped a little after; never far past the whole run's)."""
    record: dict[str, Any] = {"budget_s": round(budget, 1)}
    if budget < 5:
        record["status"] = "skipped: no time left"
        _say(log_file, f"gpu_run: {stage.name}: skipped, no time left")
        return record
    script, *argv = stage.args(budget, out, work)
    cmd = [sys.executable, str(HERE / script), *argv]
    _say(log_file, f"gpu_run: {stage.name}: {budget:.0f} s: {' '.join(cmd[1:])}")
    hard_stop = min(budget + STOP_GRACE_S, clock.left() + FINAL_GRACE_S)
    code, seconds = run_until(cmd, hard_stop, env=env, log_file=log_file)
    record.update(seconds=round(seconds, 1), exit_code=code, status=_status(code))
    _say(log_file, f"gpu_run: {stage.name}: {record['status']} in {seconds:.0f} s")
    return record


def preflight(smoke: bool) -> dict[str, Any]:
    """What the run needs: the Python modules, the device, and room on the disk; ``problem`` if it can't run."""
    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]
    info: dict[str, Any] = {"missing_modules": missing, "cpus": os.cpu_count(),
                            "free_disk_gib": round(shutil.disk_usage(tempfile.gettempdir()).free / 2**30, 1),
                            "python": sys.version.split()[0]}
    if missing:
        info["problem"] = (f"missing Python modules {', '.join(missing)} (benchmarks/gpu_wheels.sh fetches them "
                           "as wheels into .whl/, which gpu_run.sh installs)")
        return info
    import torch

    info["torch"] = torch.__version__
    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info["device"] = props.name
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
    if not smoke and not info["cuda"]:
        info["problem"] = "no CUDA device (use --smoke for the CPU rehearsal)"
    return info


def target_lines(out: Path) -> list[str]:
    """One line per target: value, bar, met / not met / n/a."""
    lines = []
    targets = _read(out / "gpu_targets.json").get("targets", {})
    e2e = _read(out / "end_to_end.json").get("target")
    entries = [(name, t) for name, t in targets.items()] + ([("end_to_end_slices_per_s", e2e)] if e2e else [])
    for name, t in entries:
        value, unit = t.get("value"), t.get("unit", "")
        shown = "not measured" if value is None else _figure(value, unit)
        bar = f"{t.get('better', '>=')} {_figure(t['target'], unit)}" if t.get("target") is not None else "reported"
        met = {True: "met", False: "NOT met", None: "n/a"}[t.get("met")]
        if t.get("skipped"):
            met = f"n/a ({t['skipped']})"
        lines.append(f"target {name}: {shown} (bar {bar}): {met}")
    return lines


def _figure(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 2**30:.2f} GiB"
    number = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{number} {unit}".strip()


def check_files(out: Path) -> dict[str, Any]:
    """The folder's files and whether they fit what comes back from the device (8 files, 16 MiB each)."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    largest = max((p.stat().st_size for p in files), default=0)
    return {"names": [str(p.relative_to(out)) for p in files], "largest_bytes": largest,
            "within_limits": len(files) <= MAX_FILES and largest <= MAX_FILE_BYTES}


# --- helpers --------------------------------------------------------------------------------------

def _status(code: int | None) -> str:
    if code == 0:
        return "done"
    if code is None:
        return "stopped at its deadline"
    if code == OUT_OF_TIME:
        return "out of time before measuring anything"
    return "failed"


def _environment(smoke: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("OUT", None)  # the stages write where they are told, nowhere else
    if smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _say(log_file: Path, line: str) -> None:
    print(line, flush=True)
    with open(log_file, "a") as fh:
        fh.write(f"{time.strftime('%H:%M:%S')} {line}\n")


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
