"""The training recipe judged by ``headct cv`` on a hard phantom: one row per option, one budget.

    python benchmarks/cv_recipe.py            # the CPU table in docs/results.md (3 folds, 2 x 12 steps)
    python benchmarks/cv_recipe.py --size 192 --slices 16 --folds 5 --epochs 30 --batch-size 64 \\
        --max-steps-per-epoch 0 --parallel 5 --time-budget 540 --work runs/cv_recipe_gpu \\
        --json benchmarks/results/cv_recipe_gpu.json                           # the comparison owed (a GPU)

``--parallel N`` trains N rows at once (each its own ``headct cv``, the cores shared among their
loaders); the rows that rescore or combine others wait for them. ``--time-budget`` stops the rows
still training then (a later run with the same ``--work`` resumes them from their last finished fold).

Everything goes through the public command line, as a user would run it:

1. ``headct phantom`` writes a hard phantom set (RSNA layout, difficulty 1.5: lesions at 0.8 of
   their default size and 0.75 of their contrast, more noise);
2. ``headct prepare --folds K --fractions 0.9,0.1,0`` caches it and assigns patient folds;
3. one ``headct cv --model effnet-2d --task rsna`` per row, the same budget (epochs, batch, seed)
   for every row: the old defaults (lr 3e-4, patience 5), the current defaults, then each
   option alone on the current defaults, then the options that helped, together.

"Helped": the row's pooled out-of-fold any-AUROC beats the current defaults' at both the slice
and the study level (the direction the same at both levels; the intervals of a 100-study
phantom are too wide for more). The combination row runs when two or more helped.

``--tta-flip`` changes no training step (only the validation calibration and the predictions),
so its row reuses the current defaults' trained folds: their runs are copied and ``headct cv``
resumes them with the flag on (no epoch left: calibration and prediction run again with it).
Its ``wall_s`` is that rescoring alone; ``trained_by`` names the row whose training it reused.

Writes the JSON (``--json``) after every row, so a run stopped early keeps its rows; a row whose
``--work`` folder holds a finished cv is read back, not rerun.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deadline import Clock, run_until  # noqa: E402

from headct.bench import environment, write_json  # noqa: E402

log = logging.getLogger("cv_recipe")

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "current defaults"
ROWS: dict[str, list[str]] = {  # row name -> headct cv flags on top of the shared budget
    BASELINE: [],
    "+ tta-flip": ["--tta-flip", "true"],
    "+ ema-decay 0.99": ["--ema-decay", "0.99"],
    "+ class-balance": ["--class-balance", "true"],
    "+ monitor study_macro_auroc": ["--monitor", "study_macro_auroc"],
    "old defaults (lr 3e-4, patience 5)": ["--lr", "3e-4", "--patience", "5"],
}  # in this order: the options have no evidence yet, the old defaults have issue 13's real-CT table
OPTIONS = ("+ tta-flip", "+ ema-decay 0.99", "+ class-balance", "+ monitor study_macro_auroc")
REUSES_TRAINING = {"+ tta-flip": BASELINE}  # rows that rescore another row's trained folds
COMBINATION = "combination of the options that helped"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100, help="phantom studies")
    parser.add_argument("--size", type=int, default=64, help="slice size in pixels (phantom and cache)")
    parser.add_argument("--slices", type=int, default=8, help="slices per study")
    parser.add_argument("--difficulty", type=float, default=1.5, help="phantom difficulty, 0 easy .. 2 hard")
    parser.add_argument("--phantom-seed", type=int, default=1)
    parser.add_argument("--folds", type=int, default=3, help="patient folds (headct prepare --folds)")
    parser.add_argument("--model", default="effnet-2d")
    parser.add_argument("--epochs", type=int, default=2, help="the same epoch budget for every row")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-steps-per-epoch", type=int, default=12, help="cap on optimiser steps per epoch "
                        "(0: none; the CPU table's budget is 2 epochs x 12 steps of 16 slices per fold)")
    parser.add_argument("--seed", type=int, default=0, help="training seed, every row")
    parser.add_argument("--bootstrap", type=int, default=1000, help="patient resamples for the intervals")
    parser.add_argument("--rows", default=None, help="comma-separated row names to run (default: all, in order)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--work", default="runs/cv_recipe", help="phantom, cache and cv runs go here")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "cv_recipe.json"))
    parser.add_argument("--parallel", type=int, default=1,
                        help="rows trained at once (a GPU has room for several small runs; rows that reuse or "
                             "combine others wait for them)")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers per row (default: headct's; with --parallel, the cores shared out)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds: rows still training then are stopped, rows not started are left out")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    work, json_path = Path(args.work), Path(args.json)
    work.mkdir(parents=True, exist_ok=True)
    cache = prepare_phantom(work, args)
    wanted = [r.strip() for r in args.rows.split(",")] if args.rows else [*ROWS, COMBINATION]
    result: dict[str, Any] = {
        "date": date.today().isoformat(), "environment": environment(torch.device(_device(args))),
        "data": {"phantom": {"studies": args.studies, "size": args.size, "slices": args.slices,
                             "difficulty": args.difficulty, "seed": args.phantom_seed, "layout": "rsna"},
                 "folds": args.folds, "fractions": [0.9, 0.1, 0.0]},
        "budget": {"model": args.model, "task": "rsna", "epochs": args.epochs, "batch_size": args.batch_size,
                   "max_steps_per_epoch": args.max_steps_per_epoch or None,
                   "seed": args.seed, "bootstrap": args.bootstrap, "pretrained": None},
        "rule": "an option helped when its pooled out-of-fold any-AUROC beats the current defaults' at both "
                "the slice and the study level",
        "rows": [],
    }
    clock = Clock(args.time_budget)
    done: dict[str, dict[str, Any]] = {}
    recording = threading.Lock()  # rows finish on several threads: one writes the JSON at a time

    def run(name: str, flags: list[str]) -> None:
        row = run_row(name, flags, cache, work, args, clock)
        if row is not None:
            with recording:
                done[name] = row
                result["rows"] = [done[n] for n in wanted if n in done]  # the table's order, whatever finished first
                write_json(result, json_path)

    first = [n for n in wanted if n != COMBINATION and REUSES_TRAINING.get(n) is None]
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:  # each row is its own `headct cv`
        list(pool.map(lambda n: run(n, ROWS[n]), first))
    for name in (n for n in wanted if REUSES_TRAINING.get(n) is not None):
        if REUSES_TRAINING[name] in done:
            run(name, ROWS[name])
    if COMBINATION in wanted:
        flags = combination_flags(result["rows"])
        if flags is None:
            log.info("combination: fewer than two options helped; not run")
            result["combination"] = "not run: fewer than two options helped"
        else:
            run(COMBINATION, flags)
    write_json(result, json_path)
    print(markdown_table(result))
    print(f"wrote {json_path}")
    return 0


def prepare_phantom(work: Path, args: argparse.Namespace) -> Path:
    """Phantom set -> cache with patient folds; both kept under ``work`` and reused when present."""
    raw, cache = work / "phantom", work / "cache"
    if not (raw / ".done").exists():
        headct("phantom", "--out", str(raw), "--studies", str(args.studies), "--layout", "rsna",
               "--seed", str(args.phantom_seed), "--size", str(args.size), "--slices", str(args.slices),
               "--difficulty", str(args.difficulty))
        (raw / ".done").write_text("")
    if not (cache / "meta.json").exists():
        headct("prepare", str(raw), "--format", "rsna", "--out", str(cache), "--size", str(args.size),
               "--folds", str(args.folds), "--fractions", "0.9,0.1,0")
    return cache


def run_row(name: str, flags: list[str], cache: Path, work: Path, args: argparse.Namespace,
            clock: Clock | None = None) -> dict[str, Any] | None:
    """One ``headct cv`` (or its finished output read back); the row's headline figures (None: stopped
    at the time budget; a later run with the same ``--work`` resumes it from its last finished fold)."""
    clock = clock or Clock()
    out = work / _slug(name)
    reused = REUSES_TRAINING.get(name)
    if reused is not None and not (out / "metrics.json").exists():
        _copy_trained_folds(work / _slug(reused), out)
    wall = None
    if not (out / "metrics.json").exists() or not json.loads((out / "metrics.json").read_text())["cv"]["complete"]:
        budget = ["--model", args.model, "--task", "rsna", "--epochs", str(args.epochs),
                  "--batch-size", str(args.batch_size), "--seed", str(args.seed),
                  "--progress", "false", "--tensorboard", "false"]
        if args.max_steps_per_epoch:
            budget += ["--max-steps-per-epoch", str(args.max_steps_per_epoch)]
        if args.device:
            budget += ["--device", args.device]
        workers = args.workers if args.workers is not None else _shared_workers(args.parallel)
        if workers is not None:
            budget += ["--workers", str(workers)]
        started = time.monotonic()
        log.info("headct cv %s (%s)", name, " ".join(flags))
        code, _ = run_until([sys.executable, "-m", "headct.cli", "cv", "--data", str(cache), "--out", str(out),
                             "--bootstrap", str(args.bootstrap), *budget, *flags], clock.left())
        if code is None:
            log.info("%s: stopped at the time budget", name)
            return None
        if code != 0:
            raise SystemExit(f"headct cv for {name!r} failed with exit code {code}")
        wall = round(time.monotonic() - started, 1)
        (out / "wall_s.txt").write_text(f"{wall}\n")
    elif (out / "wall_s.txt").exists():
        wall = float((out / "wall_s.txt").read_text())
    row = row_figures(json.loads((out / "metrics.json").read_text()))
    row.update(name=name, flags=flags, wall_s=wall, trained_by=reused)
    log.info("%s: %s", name, {k: row[k] for k in ("slice_any_auroc", "study_any_auroc", "wall_s")})
    return row


def row_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """Pooled out-of-fold any- and micro-AUROC per level with their patient-resampled intervals, ECE."""
    row: dict[str, Any] = {"folds": metrics["cv"]["folds_pooled"]}
    for level in ("slice", "study"):
        block = metrics["level"][level]
        row[f"{level}_n"] = block.get("n")
        row[f"{level}_any_auroc"] = block["per_class"]["any"]["auroc"]
        row[f"{level}_any_auroc_ci95"] = block["ci95"]["per_class"]["any"]["auroc"]
        row[f"{level}_micro_auroc"] = block["micro_auroc"]
        row[f"{level}_micro_auroc_ci95"] = block["ci95"]["micro_auroc"]
        row[f"{level}_macro_auroc"] = block["macro_auroc"]
        row[f"{level}_ece_calibrated"] = block["ece_calibrated"]
    row["best_epochs"] = [f["best_epoch"] for f in metrics["folds"]]
    return row


def combination_flags(rows: list[dict[str, Any]]) -> list[str] | None:
    """The flags of every option row that beat the current defaults at both levels (None: under two)."""
    by_name = {r["name"]: r for r in rows}
    base = by_name.get(BASELINE)
    if base is None:
        return None
    helped = [name for name in OPTIONS if name in by_name and all(
        _num(by_name[name][f"{level}_any_auroc"]) > _num(base[f"{level}_any_auroc"]) for level in ("slice", "study"))]
    if len(helped) < 2:
        return None
    return [flag for name in helped for flag in ROWS[name]]


def markdown_table(result: dict[str, Any]) -> str:
    """The docs/results.md table of the rows."""
    lines = ["| run | any AUROC, slice (95 % CI) | micro AUROC, slice (95 % CI) | any AUROC, study (95 % CI) "
             "| micro AUROC, study (95 % CI) | ECE, slice | s |", "|" + " --- |" * 7]
    for r in result["rows"]:
        cells = [r["name"]]
        for level in ("slice", "study"):
            for metric in ("any_auroc", "micro_auroc"):
                low, high = r[f"{level}_{metric}_ci95"]
                cells.append(f"{_fmt(r[f'{level}_{metric}'])} ({_fmt(low)}–{_fmt(high)})")
        cells.append(_fmt(r["slice_ece_calibrated"], 3))
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
        cells.append(wall if not r.get("trained_by") else f"{wall} (rescoring; training: {r['trained_by']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- helpers --------------------------------------------------------------------------------

def _copy_trained_folds(source: Path, out: Path) -> None:
    """The trained runs of ``source``'s folds into ``out``/fold<K>/run, for cv to resume and rescore."""
    runs = sorted(source.glob("fold*/run"))
    if not runs:
        raise SystemExit(f"{source}: no trained folds to reuse; run its row first")
    for run in runs:
        target = out / run.parent.name / "run"
        if not target.exists():
            shutil.copytree(run, target)


def headct(*args: str) -> None:
    log.info("headct %s", " ".join(args))
    subprocess.run([sys.executable, "-m", "headct.cli", *args], check=True)


def _shared_workers(parallel: int) -> int | None:
    """Loader workers per row when rows run side by side: the cores shared out (None: headct's default)."""
    if parallel <= 1:
        return None
    return max(0, (os.cpu_count() or 1) // parallel - 1)


def _device(args: argparse.Namespace) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
