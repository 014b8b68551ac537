"""The seeds' comparison on phantoms: five models, one budget, one patient-level split.

    python benchmarks/seeds_comparison.py                      # GPU scale: >= 20,000 slices
    python benchmarks/seeds_comparison.py --studies 16 --size 64 --epochs 2 \\
        --models effnet-2d,effnet-2.5d,effnet-lstm,study-seq,strokenext-atto   # minutes on a CPU

Everything goes through the public command line, as a user would run it:

1. ``headct phantom`` writes a phantom set in the RSNA layout (DICOM + label CSV);
2. ``headct prepare --format rsna`` caches it and splits it by patient;
3. ``headct train --task rsna`` trains each model from scratch with the same
   budget (epochs, batch size, learning rate, seed);
4. ``headct evaluate RUN/best --split test`` gives per-class F1, micro-AUROC, ECE;
5. ``headct compare`` tests the best model (slice-level micro-AUROC) against each other;
6. ``headct.bench`` measures inference images/s at the same input size.

Writes ``docs/results.md`` (one table, the p-values, the device, budget and
split) and a JSON with every figure (``benchmarks/results/seeds_comparison_<device>.json``).

``--time-budget SECONDS`` bounds the whole comparison: after the phantom and
the cache, each model gets an equal share of what is left (training is
stopped at 70 % of it; the best checkpoint saved so far is evaluated and the
row says ``cut_short``), a model whose share is gone is listed as skipped, and
the JSON is rewritten after every model, so a run stopped early keeps its rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deadline import OUT_OF_TIME, RESERVE_S, Clock, run_until  # noqa: E402

from headct.bench import BenchConfig, environment, run_bench, write_json  # noqa: E402

log = logging.getLogger("seeds_comparison")

ROOT = Path(__file__).resolve().parent.parent
SEED_MODELS = ("effnet-2d", "effnet-2.5d", "effnet-lstm", "study-seq", "strokenext-tiny")
LABELS = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")


def build_parser() -> argparse.ArgumentParser:
    """The command line (gpu_run.py's tests parse the GPU run's arguments with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000, help="phantom studies (1000 x 21 slices at 256 px: 21,000 slices)")
    parser.add_argument("--size", type=int, default=256, help="slice size in pixels (phantom and cache)")
    parser.add_argument("--slices", type=int, default=None, help="slices per study (default: the phantom's)")
    parser.add_argument("--difficulty", type=float, default=1.0, help="phantom difficulty, 0 easy .. 2 hard")
    parser.add_argument("--epochs", type=int, default=10, help="the same epoch budget for every model")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on GPU, 16 on CPU")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap the budget per epoch")
    parser.add_argument("--models", default=",".join(SEED_MODELS), help="comma-separated model names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: CPUs - 1, at most 8)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--work", default="runs/seeds_comparison", help="phantom, cache, runs and evaluations go here")
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--json", default=None, help="default: benchmarks/results/seeds_comparison_<device>.json")
    parser.add_argument("--bench-iters", type=int, default=20, help="timed iterations for inference images/s (0: skip)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples in headct compare")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the whole comparison (see the module docstring)")
    parser.add_argument("--markdown-only", metavar="JSON",
                        help="only rewrite the markdown from this earlier result (e.g. after new target figures)")
    parser.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                        help=f"generated sections of the page to rewrite, of {','.join(SECTIONS)}; the others stay")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.markdown_only:
        write_markdown(json.loads(Path(args.markdown_only).read_text()), Path(args.markdown), Path(args.markdown_only),
                       _sections(args.sections))
        print(f"wrote {args.markdown}")
        return 0

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    batch_size = args.batch_size or (64 if on_gpu else 16)
    workers = args.workers if args.workers is not None else min(8, max(0, (os.cpu_count() or 1) - 1))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    work = Path(args.work)
    env = environment(device)
    label = "gpu" if on_gpu else "cpu"
    json_path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"seeds_comparison_{label}.json"

    clock = Clock(args.time_budget, reserve_s=RESERVE_S)
    cache = prepare_phantom(work, args, clock)
    meta = json.loads((cache / "meta.json").read_text())
    budget = {"epochs": args.epochs, "batch_size": batch_size, "lr": args.lr, "seed": args.seed,
              "max_steps_per_epoch": args.max_steps_per_epoch, "amp": "auto (bf16 on CUDA, off on CPU)",
              "pretrained": False, "augment": True}
    rows: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    result: dict[str, Any] = {}
    for number, model in enumerate(models):
        share = clock.left() / (len(models) - number)
        if share < 5:
            skipped[model] = "time budget spent"
            continue
        try:
            row = train_and_evaluate(model, cache, work, budget, workers, str(device), seconds=share)
        except subprocess.CalledProcessError as err:  # one model failing must not cost the others
            skipped[model] = f"headct {err.cmd[1]} failed (exit {err.returncode}); see the log"
            continue
        if row is None:
            skipped[model] = "not trained and evaluated within its share of the time budget"
            continue
        rows[model] = row
        if args.bench_iters and clock.left() > 0:
            rows[model]["inference"] = inference_speed(model, args.size, device, args.bench_iters)
        result = _result(args, label, env, meta, budget, workers, rows, skipped, None, {}, complete=False)
        write_json(result, json_path)  # after every model: a run stopped early keeps its rows
    if not rows:
        write_json(_result(args, label, env, meta, budget, workers, rows, skipped, None, {}, complete=False), json_path)
        print("no model finished within the time budget")
        return OUT_OF_TIME
    best = max(rows, key=lambda m: _num(rows[m]["micro_auroc"]))
    tests = {}
    for other in rows:
        if other != best and clock.left() > 0:
            tests[other] = compare(work, best, other, args.bootstrap, args.seed, clock)
    result = _result(args, label, env, meta, budget, workers, rows, skipped, best, tests,
                     complete=not skipped and len(tests) == len(rows) - 1)
    write_json(result, json_path)
    write_markdown(result, Path(args.markdown), json_path)
    print(f"wrote {args.markdown} and {json_path}")
    return 0


def _result(args: argparse.Namespace, label: str, env: dict[str, Any], meta: dict[str, Any],
            budget: dict[str, Any], workers: int, rows: dict[str, Any], skipped: dict[str, str],
            best: str | None, tests: dict[str, Any], *, complete: bool) -> dict[str, Any]:
    """The comparison's JSON: settings, every row, the tests; ``complete`` False while partial."""
    return {
        "label": label,
        "date": date.today().isoformat(),
        "environment": env,
        "phantom": {"studies": args.studies, "size": args.size, "slices": args.slices,
                    "difficulty": args.difficulty, "layout": "rsna", "seed": args.seed},
        "data": {"slices": meta.get("summary", {}).get("slices"), "studies": meta.get("summary", {}).get("studies"),
                 "split": meta.get("split")},
        "budget": budget,
        "workers": workers,
        "models": rows,
        "skipped": skipped,
        "time_budget_s": args.time_budget,
        "complete": complete,
        "best": best,
        "compare": tests,
    }


def prepare_phantom(work: Path, args: argparse.Namespace, clock: Clock | None = None) -> Path:
    """Phantom set → cache (split by patient); both kept under ``work`` and reused when present."""
    clock = clock or Clock()
    raw, cache = work / "phantom", work / "cache"
    workers = max(1, (os.cpu_count() or 2) - 1)
    if not (raw / ".done").exists():
        extra = ["--slices", str(args.slices)] if args.slices else []
        headct("phantom", "--out", str(raw), "--studies", str(args.studies), "--layout", "rsna",
               "--seed", str(args.seed), "--size", str(args.size), "--difficulty", str(args.difficulty), *extra,
               "--workers", str(workers), seconds=clock.left())  # byte-identical whatever the worker count
        (raw / ".done").write_text("")
    if not (cache / "meta.json").exists():
        headct("prepare", str(raw), "--format", "rsna", "--out", str(cache), "--size", str(args.size),
               "--seed", str(args.seed), "--workers", str(workers), seconds=clock.left())
    return cache


def train_and_evaluate(model: str, cache: Path, work: Path, budget: dict[str, Any], workers: int,
                       device: str, seconds: float = float("inf")) -> dict[str, Any] | None:
    """Train ``model`` with the shared budget, evaluate it on the test split; its row of the table.

    Training is stopped after 70 % of ``seconds``; the best checkpoint saved by
    then is evaluated (``cut_short``). None when there is none.
    """
    run, evaluation = work / "runs" / model, work / "evals" / model
    flags = ["--epochs", str(budget["epochs"]), "--batch-size", str(budget["batch_size"]),
             "--lr", str(budget["lr"]), "--seed", str(budget["seed"]), "--workers", str(workers),
             "--device", device, "--progress", "false", "--tensorboard", "false"]
    if budget["max_steps_per_epoch"]:
        flags += ["--max-steps-per-epoch", str(budget["max_steps_per_epoch"])]
    started = time.monotonic()
    finished = headct("train", "--data", str(cache), "--model", model, "--task", "rsna", "--out", str(run),
                      *flags, seconds=0.7 * seconds, may_stop=True)
    train_seconds = time.monotonic() - started
    if not (run / "best" / "config.json").is_file():
        return None
    if not headct("evaluate", str(run / "best"), "--data", str(cache), "--split", "test", "--out",
                  str(evaluation), "--device", device, seconds=seconds - train_seconds, may_stop=True):
        return None
    metrics = json.loads((evaluation / "metrics.json").read_text())
    slice_level = metrics.get("level", {}).get("slice", metrics)
    study_level = metrics.get("level", {}).get("study", {})
    return {
        "per_class_f1": {name: (slice_level["per_class"].get(name) or {}).get("f1") for name in LABELS},
        "f1_macro": slice_level.get("f1_macro"),
        "micro_auroc": slice_level.get("micro_auroc"),
        "study_micro_auroc": study_level.get("micro_auroc"),
        "ece": slice_level.get("ece"),
        "ece_calibrated": slice_level.get("ece_calibrated"),
        "train_seconds": train_seconds,
        "train_images_per_s": _mean_column(run / "metrics.csv", "images_per_s"),
        "epochs_run": _rows(run / "metrics.csv"),
        "eval": str(evaluation),
        "cut_short": not finished,
        "split": metrics.get("split"),
    }


def inference_speed(model: str, size: int, device: torch.device, iters: int) -> dict[str, Any]:
    """Inference images/s of ``model`` at the comparison's input size (fast path, no compile)."""
    on_gpu = device.type == "cuda"
    config = BenchConfig(model=model, num_classes=len(LABELS), batch_size=256 if on_gpu else 16, img_size=size,
                         channels_last=True, warmup=max(2, iters // 5), iters=iters, device=str(device),
                         latency=False, series_slices=32)
    result = run_bench(config)
    series = result["input"]["level"] == "series"
    return {"samples_per_s": result["samples_per_s"], "slice_images_per_s": result["slice_images_per_s"],
            "level": result["input"]["level"],
            # one output per slice either way: a slice model's sample is one slice, a series model's is S
            "predicted_slices_per_s": result["slice_images_per_s"] if series else result["samples_per_s"],
            "batch_size": config.batch_size, "amp": result["settings"]["amp"],
            "params": result["params"], "gflops_per_sample": result["gflops_per_sample"]}


def compare(work: Path, best: str, other: str, bootstrap: int, seed: int,
            clock: Clock | None = None) -> dict[str, Any]:
    """``headct compare`` best vs other; the slice-level overall p-values (and the whole result)."""
    out = work / "compare" / f"{best}__vs__{other}.json"
    headct("compare", str(work / "evals" / best), str(work / "evals" / other), "--json", str(out),
           "--bootstrap", str(bootstrap), "--seed", str(seed), seconds=(clock or Clock()).left(), may_stop=True)
    if not out.is_file():
        return {"file": None, "levels": {}, "skipped": "time budget spent"}
    result = json.loads(out.read_text())
    summary = {}
    for level, block in result["levels"].items():
        overall = block["overall"]
        summary[level] = {"n_items": block["n_items"], "auroc_diff": overall["bootstrap"]["diff"],
                          "p_bootstrap": overall["bootstrap"]["p"], "p_mcnemar": overall["mcnemar"]["p"]}
    return {"file": str(out), "levels": summary}


SECTIONS = ("seeds", "localisation", "performance", "gpu_run")
DEFAULT_SECTIONS = ("seeds", "performance", "gpu_run")
"""Localisation only when named: its section on the page also holds issue 13's hand-written method table."""


def write_markdown(result: dict[str, Any], path: Path, json_path: Path,
                   sections: Sequence[str] | None = None) -> None:
    """Rewrite the generated sections of ``docs/results.md`` in place, keeping every other section.

    ``sections`` (default: ``DEFAULT_SECTIONS``) names which to regenerate; a
    seeds result cut short before measuring any model leaves the seeds section
    as it was. Hand-written sections (and generated ones not named) stay where
    and as they are; a generated section not on the page yet goes at its end.
    """
    wanted = list(sections or DEFAULT_SECTIONS)
    generated: list[list[str]] = []
    if "seeds" in wanted and result.get("models"):
        generated.append(seeds_section(result, json_path))
    if "localisation" in wanted:
        generated.append(localisation_section())
    if "performance" in wanted:
        generated.append(performance_section())
    if "gpu_run" in wanted:
        generated.append(gpu_run_section())
    old = path.read_text() if path.exists() else "# Results\n"
    text = merge_sections(old, [lines for lines in generated if lines])
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    os.replace(tmp, path)


def merge_sections(page: str, sections: list[list[str]]) -> str:
    """``page`` with each ``## `` section of ``sections`` put in place of the one with the same heading
    (else added at the end); everything else on the page unchanged."""
    parts = re.split(r"(?m)^(?=## )", page)
    head, old = parts[0], parts[1:]
    headings = [part.splitlines()[0].strip() for part in old]
    for lines in sections:
        text = "\n".join(lines).rstrip("\n") + "\n\n"
        heading = lines[0].strip()
        if heading in headings:
            old[headings.index(heading)] = text
        else:
            old.append(text)
            headings.append(heading)
    return (head + "".join(old)).rstrip("\n") + "\n"


def seeds_section(result: dict[str, Any], json_path: Path) -> list[str]:
    """The seeds' comparison: the table, the p-values, and what the figures were measured on."""
    env, budget, data = result["environment"], result["budget"], result["data"]
    split = data.get("split") or {}
    gpu = result["label"] == "gpu"
    lines = [
        "## The seeds' comparison on phantoms",
        "",
        ("Measured on a GPU." if gpu else
         "**CPU run at small settings: a smoke-scale comparison, not the real one.** The H100 run "
         "(>= 20,000 phantom slices, 256 px, the seed models at full size) is still owed: "
         "`python benchmarks/seeds_comparison.py` on a GPU machine regenerates this page. "
         "The models here are barely trained (a few steps), so the figures show that the pipeline "
         "runs end to end, not which seed is better; timings come from a 2-core machine shared with "
         "other jobs (load average about 7) and vary several-fold from run to run."),
        "",
        f"- Device: {env['device_name']} ({env['device']}), torch {env['torch']}, timm {env['timm']}, "
        f"{env['cpu_threads']} CPU threads; {result['date']}.",
        f"- Data: phantom, RSNA layout, {result['phantom']['studies']} studies, {data.get('slices')} slices at "
        f"{result['phantom']['size']} px, difficulty {result['phantom']['difficulty']}, seed {result['phantom']['seed']}.",
        f"- Split: by {split.get('how', '?')}, seed {split.get('seed', '?')}, fractions {split.get('fractions', '?')}: "
        f"{split.get('n_train', '?')} / {split.get('n_val', '?')} / {split.get('n_test', '?')} studies "
        "(train / val / test); no patient on two sides.",
        f"- Budget, the same for every model, trained from scratch (no pretrained weights): {budget['epochs']} epochs, "
        f"batch {budget['batch_size']}, AdamW lr {budget['lr']}, seed {budget['seed']}"
        + (f", at most {budget['max_steps_per_epoch']} steps per epoch" if budget["max_steps_per_epoch"] else "")
        + f", AMP {budget['amp']}, augmentations on.",
        "- Metrics on the test split, slice level: per-class F1 at thresholds frozen on validation, micro-AUROC, "
        "ECE after temperature scaling (`ece_calibrated`). Training time is wall time of `headct train` "
        "(validation and calibration included); images/s: training (mean over epochs, from `metrics.csv`); "
        "inference slices predicted per second (`headct.bench`, fast path with channels_last, "
        "series models 32 slices per series; batch "
        f"{next(iter(result['models'].values())).get('inference', {}).get('batch_size', '-')}).",
        "",
    ]
    head = ["model", *[f"F1 {name[:6]}" for name in LABELS], "micro-AUROC", "ECE cal.", "train s",
            "train img/s", "infer slices/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, row in result["models"].items():
        cells = [(f"**{model}**" if model == result["best"] else model)
                 + (" (cut short)" if row.get("cut_short") else "")]
        cells += [_fmt(row["per_class_f1"][name]) for name in LABELS]
        cells += [_fmt(row["micro_auroc"], 4), _fmt(row["ece_calibrated"] if row["ece_calibrated"] is not None
                                                     else row["ece"]),
                  f"{row['train_seconds']:.0f}", _fmt(row["train_images_per_s"], 1),
                  _fmt((row.get("inference") or {}).get("predicted_slices_per_s"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("skipped"):
        lines += ["", "Not run within the time budget: " + ", ".join(
            f"{model} ({why})" for model, why in result["skipped"].items()) + "."]
    if any(row.get("cut_short") for row in result["models"].values()):
        lines += ["", "\"cut short\": training was stopped at its share of the time budget; the best "
                  "checkpoint saved by then was evaluated, so those rows had less than the shared budget."]
    lines += ["", f"Best by slice-level micro-AUROC: **{result['best']}**. `headct compare` against it "
              "(overall = macro AUROC; bootstrap resamples whole studies; McNemar on every-label-right decisions):", ""]
    lines += ["| vs | level | items | AUROC diff (best - other) | p bootstrap | p McNemar |", "|---|---|---|---|---|---|"]
    for other, test in result["compare"].items():
        for level, s in test["levels"].items():
            lines.append(f"| {other} | {level} | {s['n_items']} | {_fmt(s['auroc_diff'], 4)} | "
                         f"{_fmt(s['p_bootstrap'], 4)} | {_fmt(s['p_mcnemar'], 4)} |")
    lines += ["", f"Every figure, with per-model details: `{_relative(json_path)}`.", ""]
    return lines


def localisation_section() -> list[str]:
    """Grad-CAM against the phantom's lesion masks, from ``benchmarks/results/localisation.json``."""
    path = ROOT / "benchmarks" / "results" / "localisation.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    settings, env, summary = data["settings"], data["environment"], data["classification"]
    default = data["scores"]["default"]
    lines = [
        "## Does Grad-CAM point at the bleed? (issues 6 and 13)", "",
        f"`python benchmarks/localisation.py` ({data['date']}, {env['device_name']}, torch {env['torch']}): "
        f"{settings['studies']} phantom studies at {settings['phantom_size']} px (difficulty "
        f"{settings['difficulty']}), cached at {settings['cache_size']} px, {settings['model']} trained from scratch "
        f"through `headct train` for {settings['epochs']} epochs ({data['train_and_evaluate_s'] / 60:.0f} min "
        f"with evaluation). Test split: slice micro-AUROC {_fmt(summary['micro_auroc'])}, "
        f"'any' {_fmt(summary['any_auroc'])}.",
        "",
        f"Up to {settings['limit']} test slices per class, each explained for its own class; a hit when the "
        f"map's peak lies within {default['tolerance_px']} px of the lesion mask (15 px at 224, scaled); energy: the "
        "share of the map inside the mask. Random: smooth random maps on the same slices. 'pooled' "
        "pools the five lesion types over their slices.",
        "",
        "| class | slices | pointing | random | energy | random |", "|---|---|---|---|---|---|",
    ]
    rows = {**default["per_class"], "pooled": default["pooled"]}
    for label, score in rows.items():
        lines.append(f"| {label} | {score['n_slices']} | {_fmt(score['pointing_game'])} | "
                     f"{_fmt(score['random_pointing_game'])} | {_fmt(score['energy_share'])} | "
                     f"{_fmt(score['random_energy_share'])} |")
    lines += ["", "Pooled over the lesion types, by target layer, map placement (`ModelSpec.target_grid`; "
              "\"centred\" is pytorch-grad-cam's own resize) and tolerance:", "",
              "| layer | placement | tolerance px | pointing | random | energy | random |",
              "|---|---|---|---|---|---|---|"]
    for result in data["scores"].values():
        pooled = result["pooled"]
        lines.append(f"| {', '.join(result['target_layers'])} | {result.get('target_grid', '-')} | "
                     f"{result['tolerance_px']} | "
                     f"{_fmt(pooled['pointing_game'])} | {_fmt(pooled['random_pointing_game'])} | "
                     f"{_fmt(pooled['energy_share'])} | {_fmt(pooled['random_energy_share'])} |")
    lines += ["", "\"padded\" places each cell where the architecture's geometry says it looks (EfficientNet's "
              "symmetric padding: half a cell up and left of a plain resize; checked on untrained networks in "
              "tests/models/test_zoo.py). A trained network can learn to look elsewhere: which placement "
              "points better changes from one training run to the next, so at stride 32 the pointing figures "
              "carry about half a cell of placement uncertainty. The energy share barely moves with placement.",
              "", "![Grad-CAM of 'any' on test slices, lesion outlined in white](gradcam_gallery.png)", ""]
    return lines


def performance_section() -> list[str]:
    """The issue-7 performance targets from ``benchmarks/results/*targets*.json``, where measured."""
    lines = ["## Performance targets (issue 7)", ""]
    results = ROOT / "benchmarks" / "results"
    files = sorted([*results.glob("*targets*.json"), *results.glob("gpu_run/gpu_targets.json")])
    if not any(_read_label(f) == "gpu" for f in files):
        lines += ["The GPU figures are still owed: the GPU run below (`benchmarks/gpu_run.sh`) measures every "
                  "target on one H200 and judges each.", ""]
    for f in files:
        data = json.loads(f.read_text())
        env = data["environment"]
        lines += [f"`{_relative(f)}`: {env['device_name']}, torch {env['torch']}, timm {env['timm']}"
                  + (f". {data['note']}" if data.get("note") else "."), "",
                  "| target | value | bar | met |", "|---|---|---|---|"]
        for target in data.get("targets", {}).values():
            bar = "reported" if target["target"] is None else f"{target['better']} {target['target']:g} {target['unit']}"
            if target["unit"] == "bytes" and target["target"] is not None:
                bar = f"{target['better']} {target['target'] / 2**20:.0f} MiB"
            met = {True: "yes", False: "no", None: "-"}[target["met"]]
            value = f"{_fmt(target['value'], 2)} {target['unit']}"
            if target["unit"] == "bytes" and target["value"] is not None:
                kind = (target.get("figures") or {}).get("peak_memory_kind", "")
                value = f"{target['value'] / 2**20:.0f} MiB ({kind})"
            lines.append(f"| {target['description']} | {value} | {bar} | {met} |")
        lines.append("")
    return lines


GPU_RUN_COMMAND = """\
benchmarks/gpu_wheels.sh        # once, on a machine with PyPI: the wheels the GPU image lacks -> .whl/ (git-ignored)
# then ONE device call from the repository root (carry the wheels; 8 min budget + at most ~20 s):
#   run(command="benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=570)
# and, with the files back from $OUT copied to benchmarks/results/gpu_run/:
python benchmarks/seeds_comparison.py --markdown-only benchmarks/results/gpu_run/seeds_comparison.json"""


def gpu_run_section() -> list[str]:
    """Issue 16's one-command GPU run: the command, and its summary once it has run."""
    lines = ["## The GPU run (issue 16)", "",
             "One prepared command measures everything owed on one H200 in 8 minutes of wall time: the "
             "issue-7 targets, the end-to-end DICOM -> predictions rate (uncompressed and JPEG lossless), the "
             "seeds' comparison sized to the minutes left and Grad-CAM localisation at 256 px "
             "(`benchmarks/gpu_run.py` says how). `benchmarks/gpu_run.sh --smoke` rehearses the same sequence "
             "on a CPU at toy sizes.", "", "```", GPU_RUN_COMMAND, "```", ""]
    smoke_path = ROOT / "benchmarks" / "results" / "gpu_run_smoke" / "summary.json"
    if smoke_path.exists():
        smoke = json.loads(smoke_path.read_text())
        stages = "; ".join(f"{name} {stage.get('status')} ({stage.get('seconds', 0):.0f} of "
                           f"{stage.get('budget_s', 0):.0f} s)" for name, stage in smoke.get("stages", {}).items())
        lines += [f"Last CPU rehearsal (`{_relative(smoke_path.parent)}/`, {smoke.get('budget_s', 0) / 60:.0f} min "
                  f"budget, {smoke.get('wall_s')} s wall, {smoke.get('preflight', {}).get('cpus')} CPUs shared with "
                  f"other jobs): {stages}. Its figures are toy-size CPU figures and judge nothing.", ""]
    summary_path = ROOT / "benchmarks" / "results" / "gpu_run" / "summary.json"
    if not summary_path.exists():
        return lines + ["Not run yet: no GPU has been lent to a session since it was prepared, so every GPU "
                        "figure on this page is still owed.", ""]
    summary = json.loads(summary_path.read_text())
    pre = summary.get("preflight", {})
    lines += [f"`{_relative(summary_path)}`: {pre.get('device', 'no CUDA device')}, torch {pre.get('torch')}, "
              f"{summary.get('wall_s')} s of wall time.", "", "| stage | status | seconds | budget s |",
              "|---|---|---|---|"]
    for name, stage in summary.get("stages", {}).items():
        lines.append(f"| {name} | {stage.get('status')} | {stage.get('seconds', '-')} | {stage.get('budget_s')} |")
    lines += ["", *[f"- {line}" for line in summary.get("targets", [])], ""]
    for name, title in (("end_to_end.json", "End to end, in the run"),
                        ("end_to_end_rerun.json", "End to end, rerun alone in a second device call "
                         "(`benchmarks/end_to_end.py`, same sizes)")):
        e2e_path = summary_path.with_name(name)
        if e2e_path.exists():
            lines += end_to_end_table(json.loads(e2e_path.read_text()), title)
    return lines


def end_to_end_table(e2e: dict[str, Any], title: str) -> list[str]:
    """One ``end_to_end.json`` as a table per input and stage, and its target line."""
    settings = e2e.get("settings", {})
    lines = [f"{title}: {settings.get('time_budget_s', 0):.0f} s budget; slices/s per stage (steady: between "
             "the first and last output written; predict: the studies replicated "
             f"{settings.get('predict_replicas', 1)}x, {settings.get('predict_processes', 1)} torchrun processes):",
             "", "| input | stage | slices | seconds | finished | slices/s | steady slices/s |",
             "|---|---|---|---|---|---|---|"]
    for variant, stages in e2e.get("variants", {}).items():
        for stage, figures in stages.items():
            if isinstance(figures, dict):
                lines.append(f"| {variant} | {stage} | {figures.get('slices')} | {figures.get('seconds')} | "
                             f"{'yes' if figures.get('finished') else 'no'} | "
                             f"{_fmt(figures.get('slices_per_s'), 1)} | {_fmt(figures.get('steady_slices_per_s'), 1)} |")
    target = e2e.get("target") or {}
    if target.get("value") is not None:
        met = "met" if target.get("met") else "NOT met"
        lines += ["", f"- {target.get('description')}: {target['value']:,.0f} {target.get('unit')} "
                  f"(bar {target.get('better')} {target.get('target'):,.0f}): {met}"]
    return lines + [""]


# --- helpers -------------------------------------------------------------------------

def _sections(names: str) -> list[str]:
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--sections: unknown {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    return wanted


def _read_label(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("label")
    except (OSError, ValueError):
        return None


def headct(*args: str, seconds: float = float("inf"), may_stop: bool = False) -> bool:
    """Run one ``headct`` command for at most ``seconds``; True when it finished.

    A failure stops the comparison with that command's exit code; so does
    running out of time, unless ``may_stop`` (the caller uses what was written).
    """
    log.info("headct %s", " ".join(args))
    code, _ = run_until([sys.executable, "-m", "headct.cli", *args], min(seconds, 10 * 24 * 3600.0))
    if code is None and may_stop:
        return False
    if code != 0:
        raise subprocess.CalledProcessError(code if code is not None else -9, ["headct", args[0]])
    return True


def _mean_column(path: Path, column: str) -> float | None:
    values = [float(r[column]) for r in _read_csv(path) if r.get(column) not in (None, "")]
    return sum(values) / len(values) if values else None


def _rows(path: Path) -> int:
    return len(_read_csv(path))


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _num(value: Any) -> float:
    return float(value) if value is not None else float("-inf")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
