"""Which class-activation maps point at the bleed? Train once on a hard phantom, then score each map choice.

The demo's pipeline (``headct.demo.run_demo``: phantom → prepare → train →
evaluate) on a hard phantom (difficulty 1: smaller, fainter lesions than the
demo's) at a resolution where a stride-32 map still has cells to point with:
256-px phantom studies, a 192-px cache (effnet-2d's last conv map is 6x6),
trained from scratch on the RSNA task. The run stays in ``--work``: a second
call finds ``WORK/run/best`` and only scores again.

Then, on the test split's lesion slices (up to ``--limit`` per lesion type),
every map choice: method (``headct.explain.CAM_METHODS``) x target layers
(one or several, averaged) x placement ("padded" or the library's "centred"
resize) x head mask (the map zeroed where the input is air). Maps are made
once per (method, layers, placement) and scored bare and head-masked (the same
``mask_to_head`` that ``gradcam_maps(head_only=True)`` applies); head-masked
maps meet random maps confined to the head as well. Scores: the pointing game
at the default tolerance (15 px at 224, 13 px at 192) and the energy share
inside the lesion, pooled over the lesion types, each beside smooth random maps.

    python benchmarks/localisation.py --work /tmp/loc [--studies 100] [--epochs 6] [--json ...]

The JSON is written after training and after every scored choice; a rerun with
the same ``--work`` and ``--json`` skips the choices already scored. ``--time-budget
SECONDS``: no new choice is started once it is spent. ``--markdown`` prints the
table of an earlier JSON and exits.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import headct
from headct.bench import environment, write_json
from headct.checkpoint import load_checkpoint
from headct.data.cache import Cache
from headct.demo import DemoSettings, headline, run_demo
from headct.explain import (
    CAM_METHODS,
    LABEL_BITS,
    ExplainConfig,
    cache_method_maps,
    default_tolerance,
    format_table,
    head_mask,
    lesion_masks,
    lesion_rows,
    mask_to_head,
    pooled_score,
    score_cache,
    score_maps,
)
from headct.labels import LESION_BITS

LAYER_SETS = {  # per model family: the candidate target layers, alone and combined (stride at 192 px)
    "effnet": [
        ["encoder.conv_head"],                     # stride 32, 1280 ch: the seed's layer
        ["encoder.blocks.4"],                      # stride 16: a 12x12 map
        ["encoder.blocks.5"],                      # stride 32, before the 1x1 head conv
        ["encoder.blocks.4", "encoder.conv_head"],
        ["encoder.blocks.2"],                      # stride 8: a 24x24 map
        ["encoder.blocks.4", "encoder.blocks.5"],
        ["encoder.blocks.2", "encoder.blocks.4", "encoder.conv_head"],
        ["encoder.bn2"],                           # conv_head after its BatchNorm and SiLU: positive activations
        ["encoder.blocks.4", "encoder.bn2"],
    ],
    "strokenext": [
        ["encoder_a.stages.3", "encoder_b.stages.3"],  # stride 32, both encoders (the default)
        ["encoder_a.stages.2", "encoder_b.stages.2"],  # stride 16
        ["encoder_a.stages.2", "encoder_a.stages.3", "encoder_b.stages.2", "encoder_b.stages.3"],
    ],
}
PLACEMENT_CHECKS = 3
"""The best choices scored again with the other placement (for EfficientNet: the library's own "centred"
resize instead of the "padded" one its geometry gives); the default is chosen among the model's own placement."""


def build_parser() -> argparse.ArgumentParser:
    """The command line (gpu_run.py's tests parse the GPU run's arguments with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--phantom-size", type=int, default=256)
    parser.add_argument("--difficulty", type=float, default=1.0,
                        help="phantom difficulty: >= 1 for small, faint lesions (the size factor falls with it)")
    parser.add_argument("--slices", type=int, default=None, help="per study (default: the phantom's for its size)")
    parser.add_argument("--cache-size", type=int, default=192)
    parser.add_argument("--model", default="effnet-2d")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--limit", type=int, default=64, help="lesion slices scored per lesion type")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the demo's")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None)
    parser.add_argument("--methods", default=",".join(CAM_METHODS), help="comma-separated CAM_METHODS names")
    parser.add_argument("--runs", type=int, default=None, help="score only the first N layer sets")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds (see above)")
    parser.add_argument("--work", default=None, help="keep the phantom, cache and run here (default: a temp dir)")
    parser.add_argument("--gallery", default=None, help="draw the best choice's 'any' overlay gallery here")
    parser.add_argument("--markdown", action="store_true", help="print the table of --json and exit")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "localisation.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.json)
    if args.markdown:
        print(markdown(json.loads(out.read_text())))
        return
    deadline = time.monotonic() + args.time_budget if args.time_budget else float("inf")
    settings = replace(DemoSettings(), studies=args.studies, phantom_size=args.phantom_size, slices=args.slices,
                       difficulty=args.difficulty, cache_size=args.cache_size, model=args.model,
                       epochs=args.epochs, n_bootstrap=200, device=args.device,
                       max_steps_per_epoch=args.max_steps_per_epoch)
    if args.batch_size:
        settings = replace(settings, batch_size=args.batch_size)
    earlier = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="headct-localisation-") as tmp:
        work = Path(args.work or tmp)
        report = _trained(work, settings, earlier, args.limit)
        write_json(report, out)
        model, config = load_checkpoint(work / "run" / "best")
        model = model.float().cpu().eval()  # maps: plain fp32 eager
        grid = model.spec.target_grid
        cache = Cache(work / "cache")
        family = "strokenext" if args.model.startswith("strokenext") else "effnet"
        methods = args.methods.split(",")
        other = "centred" if grid == "padded" else "padded"
        for layers in LAYER_SETS[family][: args.runs]:
            _score_once(report, model, config.labels or [], cache, methods, layers, grid, args.limit, deadline, out)
        for row in best_rows(report["choices"], PLACEMENT_CHECKS, placement=grid):
            _score_once(report, model, config.labels or [], cache, [row["method"]], row["layers"], other,
                        args.limit, deadline, out)
        own = [row for row in report["choices"] if row["placement"] == grid]  # the architecture fixes the placement
        report["best"] = best_rows(own, 1)[0] if own else None
        if args.gallery and report["best"]:
            _draw_best(model, config.labels or [], cache, report["best"], work, Path(args.gallery))
    write_json(report, out)
    print(markdown(report))
    print(f"written to {out}")


def _trained(work: Path, settings: DemoSettings, earlier: dict[str, Any], limit: int) -> dict[str, Any]:
    """The report's head: train through the demo pipeline, or find the run already in ``work``."""
    metrics, timing = work / "eval" / "metrics.json", work / "train_seconds.json"
    if (work / "run" / "best" / "config.json").is_file() and metrics.is_file():
        summary = headline(json.loads(metrics.read_text()))
        trained_s = json.loads(timing.read_text())["train_and_evaluate_s"] if timing.is_file() else None
    else:
        started = time.perf_counter()
        summary = run_demo(work, settings)["summary"]
        trained_s = round(time.perf_counter() - started, 1)
        write_json({"train_and_evaluate_s": trained_s}, timing)
        earlier = {}  # a new run: earlier scores were of another model
    return {"benchmark": "localisation",
            "what": "class-activation maps against phantom lesion masks, test split, pooled over lesion types",
            "settings": {**asdict(settings), "limit": limit}, "environment": environment(torch.device(settings.device)),
            "headct": headct.__version__, "date": time.strftime("%Y-%m-%d"), "classification": summary,
            "train_and_evaluate_s": trained_s, "choices": earlier.get("choices", []), "skipped": []}


def _score_once(report: dict[str, Any], model: torch.nn.Module, labels: list[str], cache: Cache,
                methods: list[str], layers: list[str], placement: str, limit: int, deadline: float, out: Path) -> None:
    """Score (method, layers, placement) for each method not in the JSON yet, bare and head-masked."""
    done = {(row["method"], tuple(row["layers"]), row["placement"]) for row in report["choices"]}
    methods = [method for method in methods if (method, tuple(layers), placement) not in done]
    if not methods:
        return
    if time.monotonic() > deadline:
        report["skipped"] += [{"method": method, "layers": layers, "placement": placement} for method in methods]
        return
    started = time.perf_counter()
    model.spec = replace(model.spec, target_grid=placement)
    scores = score_choices(model, labels, cache, methods, layers, limit)
    seconds = round(time.perf_counter() - started, 1)
    for method in methods:
        for head_only, result in scores[method].items():
            report["choices"].append({"method": method, "layers": layers, "placement": placement,
                                      "head_mask": head_only, "seconds_all_methods": seconds, **result})
            pooled = result["pooled"]
            print(f"{method:<10} {'+'.join(layers):<50} {placement:<8} head={head_only!s:<5} "
                  f"pointing {pooled['pointing_game']:.3f} (random {pooled['random_pointing_game']:.3f}) "
                  f"energy {pooled['energy_share']:.3f} (random {pooled['random_energy_share']:.3f})", flush=True)
    print(f"{len(methods)} methods on {'+'.join(layers)} ({placement}) in {seconds} s", flush=True)
    write_json(report, out)


RANDOM_BASELINE: dict[tuple[str, bool], dict[str, float]] = {}
"""The random maps' scores per (lesion type, head mask): the same slices and seed for every choice, so made once."""


def score_choices(model: torch.nn.Module, labels: list[str], cache: Cache, methods: list[str], layers: list[str],
                  limit: int) -> dict[str, dict[bool, dict[str, Any]]]:
    """Per-type and pooled scores of each method on ``layers``, bare (False) and head-masked (True)."""
    rows, tolerance = cache.rows("test"), default_tolerance(cache.size)
    per_class: dict[str, dict[bool, dict[str, Any]]] = {method: {False: {}, True: {}} for method in methods}
    for class_index, label in enumerate(labels):
        if label not in LESION_BITS:  # the pooled figure is over lesion types; unions like "any" are left out
            continue
        chosen = lesion_rows(cache, rows, LABEL_BITS[label], limit)
        if not chosen:
            continue
        masks = lesion_masks(cache, chosen, LABEL_BITS[label])
        slices = np.stack([np.asarray(cache.slice(r)) for r in chosen])
        heads = head_mask(slices, cache.kind)
        cams = cache_method_maps(model, cache, chosen, class_index, methods, layers=layers, head_only=False)
        for method in methods:
            for head_only, maps in ((False, cams[method]), (True, mask_to_head(cams[method], slices, cache.kind))):
                baseline = RANDOM_BASELINE.get((label, head_only))
                score = score_maps(maps, masks, tolerance=tolerance, random_per_slice=0 if baseline else 8,
                                   within=heads if head_only else None).__dict__
                if baseline:
                    score.update(baseline)
                else:
                    RANDOM_BASELINE[label, head_only] = {k: score[k] for k in ("random_pointing_game",
                                                                               "random_energy_share")}
                per_class[method][head_only][label] = score
    return {method: {head_only: {"tolerance_px": tolerance, "per_class": scores, "pooled": pooled_score(scores)}
                     for head_only, scores in by_mask.items()} for method, by_mask in per_class.items()}


def best_rows(choices: list[dict[str, Any]], count: int, placement: str | None = None) -> list[dict[str, Any]]:
    """The ``count`` best choices: pooled pointing first, energy share as the tie-break."""
    rows = [row for row in choices if placement is None or row["placement"] == placement]
    ranked = sorted(rows, key=lambda r: (-r["pooled"]["pointing_game"], -r["pooled"]["energy_share"]))
    seen, best = set(), []
    for row in ranked:  # one row per (method, layers): its better head-mask variant
        key = (row["method"], tuple(row["layers"]))
        if key not in seen:
            seen.add(key)
            best.append(row)
    return best[:count]


def _draw_best(model: torch.nn.Module, labels: list[str], cache: Cache, best: dict[str, Any], work: Path,
               gallery: Path) -> None:
    """The best choice's overlays through ``score_cache`` (as ``headct explain --score`` draws them)."""
    model.spec = replace(model.spec, target_grid=best["placement"])
    settings = ExplainConfig(split="test", layers=best["layers"], method=best["method"], head_only=best["head_mask"],
                             each_layer=False)
    result = score_cache(model, labels, cache, work / "explain", settings)
    print(format_table(result))
    shutil.copyfile(work / "explain" / "overlays" / "gallery_any.png", gallery)


def markdown(report: dict[str, Any]) -> str:
    """The choices as a markdown table (bare and head-masked side by side), best first, with the random baselines."""
    pairs: dict[tuple[str, tuple[str, ...], str], dict[bool, dict[str, Any]]] = {}
    for row in report["choices"]:
        pairs.setdefault((row["method"], tuple(row["layers"]), row["placement"]), {})[row["head_mask"]] = row["pooled"]
    lines = ["| method | layers | placement | pointing | pointing, head mask | energy | energy, head mask |",
             "|---|---|---|---|---|---|---|"]
    ranked = sorted(pairs.items(), key=lambda kv: -max(p["pointing_game"] + p["energy_share"] / 100
                                                       for p in kv[1].values()))
    for (method, layers, placement), by_mask in ranked:
        bare, head = by_mask.get(False, {}), by_mask.get(True, {})
        names = " + ".join(name.removeprefix("encoder.") for name in layers)
        lines.append(f"| {method} | {names} | {placement} | {_fmt(bare, 'pointing_game')} | "
                     f"{_fmt(head, 'pointing_game')} | {_fmt(bare, 'energy_share')} | {_fmt(head, 'energy_share')} |")
    if report["choices"]:
        lines.append("")
        for head_only, what in ((False, "random maps"), (True, "random maps confined to the head")):
            p = next(row["pooled"] for row in report["choices"] if row["head_mask"] == head_only)
            lines.append(f"{what}: pointing {p['random_pointing_game']:.3f}, energy {p['random_energy_share']:.3f} "
                         f"({p['n_slices']} slices)  ")
    return "\n".join(lines)


def _fmt(pooled: dict[str, Any], key: str) -> str:
    return f"{pooled[key]:.3f}" if key in pooled else "-"


if __name__ == "__main__":
    main()
