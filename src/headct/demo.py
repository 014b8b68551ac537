"""``headct demo``: the whole job on this machine, with no data and no network.

phantom (synthetic head CT with known lesions, RSNA DICOM layout) → prepare
(the memory-mapped cache, split by patient) → train (a small model on the RSNA
task, a few minutes on a CPU) → evaluate (metrics, predictions, plots, a
Grad-CAM gallery scored against the lesion masks) → ``DIR/eval/report.html``.

Every step writes under ``DIR``: ``phantom/``, ``cache/``, ``run/`` (the
training run; ``run/best`` is the checkpoint), ``eval/``. ``--quick`` runs tiny
settings (for the tests and a first look); the default settings are sized to
finish within about ten minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from headct.data.prepare import PrepareConfig, prepare
from headct.data.splits import SplitConfig
from headct.evaluate import evaluate
from headct.phantom.dataset import PhantomConfig, write_phantom
from headct.train import train
from headct.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Sizes of each step; the defaults give a clearly-above-chance model in minutes on a CPU."""

    studies: int = 250
    phantom_size: int = 128
    slices: int | None = None       # per study; None: the phantom's default for its size (12 at 128 px)
    difficulty: float = 0.0         # the phantom's easiest lesions: a from-scratch CPU model learns them in minutes
    cache_size: int = 96            # at 64 px the thin subdural/subarachnoid bleeds are 1-2 px and barely learnt
    model: str = "effnet-2d"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "rsna"
    epochs: int = 7
    batch_size: int = 32
    lr: float = 2e-3
    max_steps_per_epoch: int | None = None
    seed: int = 0
    device: str = "cpu"             # the demo's figures are CPU figures; "cuda" for a GPU run
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # more test studies than 0.8/0.1/0.1
    n_bootstrap: int = 1000

    @classmethod
    def quick(cls) -> DemoSettings:
        """Tiny settings: seconds, not minutes; the figures mean little."""
        return replace(cls(), studies=10, phantom_size=64, slices=8, cache_size=32, epochs=1, batch_size=8,
                       max_steps_per_epoch=3, n_bootstrap=200, fractions=(0.6, 0.2, 0.2))


def demo_command(args: argparse.Namespace) -> int:
    """``headct demo --out DIR [--quick]``: run every step, print the figures and where the report is."""
    settings = DemoSettings.quick() if getattr(args, "quick", False) else DemoSettings()
    result = run_demo(Path(args.out), settings)
    summary = result["summary"]
    print(f"demo: test micro AUROC {_fmt(summary['micro_auroc'])}, macro AUROC {_fmt(summary['macro_auroc'])}, "
          f"'any' AUROC {_fmt(summary['any_auroc'])} ({summary['test_slices']} slices, "
          f"{summary['test_studies']} studies) in {summary['seconds']:.0f} s")
    print(f"checkpoint: {result['checkpoint']}")
    print(f"report: {result['report']}")
    return 0


def run_demo(out: Path, settings: DemoSettings) -> dict[str, Any]:
    """phantom → prepare → train → evaluate under ``out``; returns paths and the headline figures."""

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log.info("demo 1/4: phantom (%d studies, %d px)", settings.studies, settings.phantom_size)
    write_phantom(PhantomConfig(out=out / "phantom", studies=settings.studies, layout="rsna", seed=settings.seed,
                                difficulty=settings.difficulty, size=settings.phantom_size, slices=settings.slices))
    log.info("demo 2/4: prepare (cache at %d px)", settings.cache_size)
    prepare(PrepareConfig(input=str(out / "phantom"), format="rsna", out=str(out / "cache"),
                          size=settings.cache_size,
                          split=SplitConfig(seed=settings.seed, fractions=settings.fractions)))
    log.info("demo 3/4: train %s on %s", settings.model, settings.task)
    best = train(TrainConfig(
        data=str(out / "cache"), model=settings.model, task=settings.task, out=str(out / "run"),
        model_kwargs=dict(settings.model_kwargs), epochs=settings.epochs, batch_size=settings.batch_size,
        lr=settings.lr, warmup_epochs=0.5, max_steps_per_epoch=settings.max_steps_per_epoch, seed=settings.seed,
        patience=0, device=settings.device, tensorboard=False,
    ))
    log.info("demo 4/4: evaluate on the test split")
    paths = evaluate(best, out / "cache", out / "eval", split="test", device=settings.device,
                     n_bootstrap=settings.n_bootstrap)
    summary = {**headline(json.loads(paths["metrics"].read_text())), "seconds": time.perf_counter() - started}
    return {"checkpoint": best, "metrics": paths["metrics"], "report": paths.get("report"), "summary": summary}


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The demo's headline figures from an evaluation's metrics.json content."""
    study = metrics.get("level", {}).get("study", {})
    return {
        "micro_auroc": metrics.get("micro_auroc"),
        "macro_auroc": metrics.get("macro_auroc"),
        "any_auroc": metrics.get("per_class", {}).get("any", {}).get("auroc"),
        "study_micro_auroc": study.get("micro_auroc"),
        "test_slices": metrics.get("n"),
        "test_studies": study.get("n"),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
