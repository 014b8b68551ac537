"""Does Grad-CAM point at the bleed? Train on the phantom, then score maps against its lesion masks.

The demo's pipeline (``headct.demo.run_demo``: phantom → prepare → train →
evaluate) at a resolution where a stride-32 map still has cells to point with:
256-px phantom studies, a 192-px cache (effnet-2d's last conv map is 6x6),
trained from scratch on the RSNA task. Then ``headct.explain.score_cache`` on
the test split, up to ``--limit`` lesion slices per class, for the model's
default target layer (at the default tolerance, 15 px at 224 scaled to 13 px
at 192, and at a strict 3 px) and for two earlier stages, each beside smooth
random maps (the baseline a map must beat).

About 20 minutes on two CPU cores; on a GPU, add ``--device cuda``.

    python benchmarks/localisation.py [--studies 200] [--epochs 8] [--json benchmarks/results/localisation.json]

``--time-budget SECONDS``: once training is done the JSON is written, and
then again after each scoring run; a scoring run is not started once the
budget is spent (the JSON lists it under ``skipped``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import headct
from headct.bench import environment
from headct.checkpoint import load_checkpoint
from headct.data.cache import Cache
from headct.demo import DemoSettings, headline, run_demo
from headct.explain import ExplainConfig, format_table, score_cache

RUNS = [  # (name, target layers (None: the model's default, conv_head), tolerance (None: the default), grid)
    ("default", None, None, None),
    ("default-3px", None, 3, None),
    ("default-library-placement", None, None, "centred"),  # pytorch-grad-cam's resize, half a cell off
    ("blocks.5", ["encoder.blocks.5"], None, None),  # stride 32, before the 1x1 head conv
    ("blocks.4", ["encoder.blocks.4"], None, None),  # stride 16: a 12x12 map at 192 px
]


def build_parser() -> argparse.ArgumentParser:
    """The command line (gpu_run.py's tests parse the GPU run's arguments with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--phantom-size", type=int, default=256)
    parser.add_argument("--slices", type=int, default=None, help="per study (default: the phantom's for its size)")
    parser.add_argument("--cache-size", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--limit", type=int, default=64, help="lesion slices scored per class")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the demo's")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None)
    parser.add_argument("--runs", type=int, default=len(RUNS), help="score only the first N of the runs")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds (see above)")
    parser.add_argument("--work", default=None, help="keep the phantom, cache and run here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true",
                        help="skip training: score the run already in --work (its time from the earlier --json)")
    parser.add_argument("--gallery", default=None, help="copy the 'any' overlay gallery (default tolerance) here")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "localisation.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    deadline = time.monotonic() + args.time_budget if args.time_budget else float("inf")
    settings = replace(DemoSettings(), studies=args.studies, phantom_size=args.phantom_size, slices=args.slices,
                       cache_size=args.cache_size, epochs=args.epochs, n_bootstrap=200, device=args.device,
                       max_steps_per_epoch=args.max_steps_per_epoch)
    if args.batch_size:
        settings = replace(settings, batch_size=args.batch_size)
    report = {"benchmark": "localisation",
              "what": "Grad-CAM pointing game and energy share against phantom lesion masks, test split",
              "settings": {**asdict(settings), "limit": args.limit}, "environment": environment(torch.device(args.device)),
              "headct": headct.__version__, "date": time.strftime("%Y-%m-%d"), "scores": {}, "skipped": []}
    with tempfile.TemporaryDirectory(prefix="headct-localisation-") as tmp:
        work = Path(args.work or tmp)
        if args.reuse:  # score an earlier run of this benchmark again (same --work)
            summary = headline(json.loads((work / "eval" / "metrics.json").read_text()))
            trained_s = json.loads(Path(args.json).read_text())["train_and_evaluate_s"]
        else:
            started = time.perf_counter()
            summary = run_demo(work, settings)["summary"]
            trained_s = time.perf_counter() - started
        model, config = load_checkpoint(work / "run" / "best")
        model = model.float().cpu().eval()  # Grad-CAM: plain fp32 eager
        cache = Cache(work / "cache")
        scores, grid = report["scores"], model.spec.target_grid
        report.update(classification=summary, train_and_evaluate_s=round(trained_s, 1))
        _write(report, Path(args.json))
        for name, layers, tolerance, placement in RUNS[: args.runs]:
            if time.monotonic() > deadline:
                report["skipped"].append(name)
                continue
            explain = ExplainConfig(split="test", limit=args.limit, tolerance=tolerance, layers=layers)
            drawn = work / "explain" if name == "default" else None
            model.spec = replace(model.spec, target_grid=placement or grid)
            result = score_cache(model, config.labels or [], cache, drawn, explain)
            result["target_grid"] = model.spec.target_grid
            scores[name] = result
            _write(report, Path(args.json))  # after every run: a run stopped early keeps its scores
            print(f"{name} (tolerance {result['tolerance_px']} px):\n{format_table(result)}\n", flush=True)
        if args.gallery:
            shutil.copyfile(work / "explain" / "overlays" / "gallery_any.png", args.gallery)
    _write(report, Path(args.json))
    print(f"written to {args.json}")


def _write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, out)


if __name__ == "__main__":
    main()
