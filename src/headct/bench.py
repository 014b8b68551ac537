"""Throughput, latency and memory of a model: the engine behind ``headct bench``.

In the manner of timm's ``benchmark.py``: a synthetic batch of raw input (HU or
grey, already on the device) goes through the model's fast inference path
(:func:`headct.inference.prepare_for_inference`: bf16 autocast, channels_last,
``torch.compile``, CUDA graphs) or through the trainer's own training step
(:mod:`headct.training.step`: forward, task loss, backward, clipping, AdamW). Warm-up iterations are not timed; each timed iteration is bracketed by
CUDA events (or ``time.perf_counter`` on the CPU) and the median is reported.
With ``data`` set, training is also timed on batches from a prepared cache
through the training input pipeline, and the ratio cache/synthetic says how
much of the GPU the data path leaves unused.

Reported: images/s (samples, and slice images = samples x slices read),
ms per batch, batch-1 latency, peak memory (CUDA max allocated; peak RSS of
the process on the CPU), parameters and forward GFLOPs per sample
(``torch.utils.flop_counter``, multiply-add = 2 FLOPs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headct import __version__, atomic
from headct.data.cache import Cache
from headct.data.datasets import SliceDataset, loader_workers
from headct.inference import autocast_context, prepare_for_inference, resolve_amp, to_channels_last
from headct.models import build_model
from headct.tasks import get_task
from headct.training.augment import AugmentConfig, augment_batch
from headct.training.config import TrainConfig
from headct.training.step import OptimizerStep, make_optimizer, task_loss

log = logging.getLogger(__name__)



@dataclass
class BenchConfig:
    """One benchmark: which model, what input, which speed-ups, how long."""

    model: str = "effnet-2d"
    num_classes: int = 6
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 256
    img_size: int = 256
    series_slices: int = 32          # series-level models: slices per series in one sample
    amp: str | None = None           # bf16 | fp16 | fp32; None: bf16 on CUDA, fp32 elsewhere
    channels_last: bool = False
    compile: str | None = None       # a torch.compile mode ("default", "max-autotune", ...)
    cuda_graphs: bool = False
    train: bool = False
    data: str | None = None          # a prepared cache: also time training from it (train mode)
    task: str = "rsna"               # task for training from the cache
    workers: int | None = None       # loader workers for the cache; None: headct.data.datasets.loader_workers
    warmup: int = 10
    iters: int = 50
    latency: bool = True             # also time batch 1
    device: str | None = None        # default: cuda when available, else cpu
    lr: float = 1e-4


def run_bench(config: BenchConfig, model: nn.Module | None = None) -> dict[str, Any]:
    """Run one benchmark and return its result (settings, environment and figures) as a dict.

    ``model`` overrides building ``config.model`` by name (tests pass a tiny one);
    it must carry a ``spec`` like the registered models do.
    """
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = resolve_amp(config.amp, device)
    if model is None:
        num_classes, kwargs = config.num_classes, dict(config.model_kwargs)
        if config.train and config.data:  # built as training would build it for this cache and task
            num_classes, kind = _cache_task(config)
            kwargs = {"input_kind": kind, **kwargs}
        model = build_model(config.model, num_classes, **kwargs)
    model_name = model.spec.name or config.model
    result: dict[str, Any] = {
        "model": model_name,
        "mode": "train" if config.train else "inference",
        "settings": {**asdict(config), "amp": amp or "fp32", "model": model_name},
        "environment": environment(device),
        "input": _input_description(model, config),
        "params": sum(p.numel() for p in model.parameters()),
        "gflops_per_sample": forward_gflops(model, config),
    }
    if config.train:
        result.update(bench_training(model, config, device, amp))
        if config.data:
            result["from_cache"] = bench_training_from_cache(model, config, device, amp)
            result["cache_vs_synthetic"] = (
                result["from_cache"]["samples_per_s_mean"] / result["samples_per_s_mean"]
            )
    else:
        result.update(bench_inference(model, config, device, amp))
    return result


def bench_inference(model: nn.Module, config: BenchConfig, device: torch.device, amp: str | None) -> dict[str, Any]:
    """Time the fast inference path at ``config.batch_size`` and at batch 1."""
    fast = prepare_for_inference(
        model, device, amp=amp, channels_last=config.channels_last, compile=config.compile,
        cuda_graph_batch=config.batch_size if config.cuda_graphs else None,
    )
    figures: dict[str, Any] = {}
    with torch.inference_mode():
        _reset_peak_memory(device)
        x = synthetic_input(model.spec, config, config.batch_size, device)
        times = time_steps(lambda: _forward(fast, x), device, config.warmup, config.iters)
        figures.update(_throughput(times, config.batch_size, _slices_per_sample(model.spec, config)))
        figures["peak_memory_bytes"] = peak_memory(device)
        if config.latency:
            one = prepare_for_inference(
                model, device, amp=amp, channels_last=config.channels_last, compile=config.compile,
                cuda_graph_batch=1 if config.cuda_graphs else None,
            )
            x1 = synthetic_input(model.spec, config, 1, device)
            latency = time_steps(lambda: _forward(one, x1), device, config.warmup, config.iters)
            figures["latency_ms"] = statistics.median(latency)
            figures["latency_cuda_graphs"] = one.uses_cuda_graphs
    figures["peak_memory_kind"] = _memory_kind(device)
    figures["effective"] = {
        "compile": fast.compile_mode,
        "cuda_graphs": fast.uses_cuda_graphs,
        "channels_last": config.channels_last,
        "amp": amp or "fp32",
    }
    return figures


def bench_training(model: nn.Module, config: BenchConfig, device: torch.device, amp: str | None) -> dict[str, Any]:
    """Time a training step (forward, loss, backward, AdamW) on a synthetic batch already on the device."""
    step = TrainStep(model, device, amp, channels_last=config.channels_last, compile_mode=config.compile, lr=config.lr)
    x = synthetic_input(model.spec, config, config.batch_size, device)
    y = step.random_targets(x)
    _reset_peak_memory(device)
    times = time_steps(lambda: step(x, y), device, config.warmup, config.iters)
    figures = _throughput(times, config.batch_size, _slices_per_sample(model.spec, config))
    figures["peak_memory_bytes"] = peak_memory(device)
    figures["peak_memory_kind"] = _memory_kind(device)
    figures["effective"] = {
        "compile": step.compile_mode,
        "cuda_graphs": False,  # not used for training steps
        "channels_last": config.channels_last,
        "amp": amp or "fp32",
    }
    return figures


class TrainStep:
    """The Trainer's own step on one batch: autocast forward, the task loss, ``OptimizerStep``.

    From :mod:`headct.training.step`: AdamW with the trainer's parameter groups
    and weight decay, multi-label BCE (equal weights; the benchmark's targets are
    random 0/1), backward scaled for fp16, gradient clipping at the trainer's
    default, one optimizer step per batch (no accumulation).
    """

    def __init__(self, model: nn.Module, device: torch.device, amp: str | None, *,
                 channels_last: bool = False, compile_mode: str | None = None, lr: float = 1e-4) -> None:
        self.model = model.to(device).train()
        if channels_last:
            to_channels_last(self.model)
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.compile_mode = compile_mode if compile_mode and device.type == "cuda" else None
        if compile_mode and not self.compile_mode:
            log.info("torch.compile skipped on %s (CUDA only)", device.type)
        self.forward = torch.compile(self.model, mode=self.compile_mode) if self.compile_mode else self.model
        defaults = TrainConfig()
        optimizer = make_optimizer(self.model, lr, defaults.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.optimizer_step = OptimizerStep(self.model, optimizer, scaler, clip_grad=defaults.clip_grad)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.amp):
            logits = self.forward(x)
        loss = task_loss(logits.float(), y, "multilabel", torch.ones(y.shape[-1], device=y.device), 0.0)
        self.optimizer_step.backward(loss)
        self.optimizer_step.step()
        return loss.detach()

    def random_targets(self, x: torch.Tensor) -> torch.Tensor:
        """0/1 targets shaped like the model's output for ``x``."""
        with torch.no_grad(), autocast_context(self.device, self.amp):
            shape = self.model(x[:1]).shape
        return torch.randint(0, 2, (x.shape[0], *shape[1:]), device=x.device).float()


def bench_training_from_cache(model: nn.Module, config: BenchConfig, device: torch.device,
                              amp: str | None) -> dict[str, Any]:
    """Time training steps on batches that the training input pipeline reads from ``config.data``.

    Same step as :func:`bench_training`; the batch comes from :func:`cache_batches`
    (memory-mapped cache → loader workers → pinned memory → device → augmentations
    on the device), so the ratio to the synthetic figure is what the input path costs.
    """
    if model.spec.level != "slice":
        raise ValueError("training from the cache is measured for slice-level models")
    step = TrainStep(model, device, amp, channels_last=config.channels_last, compile_mode=config.compile, lr=config.lr)
    workers = loader_workers(config.workers, device)
    batches = cache_batches(config.data, model.spec, config.task, config.batch_size, device, workers=workers)

    def train_on_next() -> None:
        x, y = next(batches)
        step(x, y)

    times = time_steps(train_on_next, device, config.warmup, config.iters)
    figures = _throughput(times, config.batch_size, _slices_per_sample(model.spec, config))
    figures.update(workers=workers, pin_memory=device.type == "cuda", augment_on_device=True)
    return figures


def cache_batches(cache_dir: str | os.PathLike, spec: Any, task_name: str, batch_size: int,
                  device: torch.device, *, workers: int = 0, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches ``(x, y)`` on ``device``, built the way ``headct train`` builds them (10,000 passes).

    ``SliceDataset`` over the train split in a shuffled ``DataLoader`` (workers,
    pinned memory on CUDA, full batches), then on the device: the float batch
    and ``headct.training.augment.augment_batch`` with the default strengths.
    Multi-class targets come back one-hot, so one BCE loss serves every task.
    """
    from torch.utils.data import DataLoader, RandomSampler


    cache = Cache(cache_dir)
    task = get_task(task_name, cache.labels)
    dataset = SliceDataset(cache, "train", task, context=spec.context)
    if len(dataset) < batch_size:
        raise ValueError(f"{cache_dir}: the train split has {len(dataset)} usable slices, fewer than a batch of {batch_size}")
    # one shuffled pass after another in ONE loader iteration: a small phantom cache has epochs of a few
    # batches, and restarting the loader at each would drain its prefetch queue (a stall a real epoch of
    # thousands of batches pays once), so the figure would measure the phantom's size, not the input path
    sampler = RandomSampler(dataset, num_samples=len(dataset) * 10_000, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    augment, generator = AugmentConfig(), torch.Generator().manual_seed(seed)
    input_kind = spec.input_kind
    for x, y, _ in loader:
        x = augment_batch(x.to(device, non_blocking=True).float(), augment, generator, input_kind)
        y = y.to(device, non_blocking=True)
        if task.kind == "multiclass":
            y = torch.nn.functional.one_hot(y.long(), task.num_outputs)
        yield x, y.float()


# --- measurement ------------------------------------------------------------------

def time_steps(step: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds of each of ``iters`` calls of ``step`` after ``warmup`` untimed ones.

    On CUDA, events bracket every call and are read after one final
    synchronisation (no host sync between iterations); on the CPU, perf_counter.
    """
    if iters < 1:
        raise ValueError("iters must be at least 1")
    for _ in range(warmup):
        step()
    _synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def synthetic_input(spec: Any, config: BenchConfig, batch_size: int, device: torch.device) -> torch.Tensor:
    """A random raw batch on ``device``: ``[B, K, H, W]`` (series-level: ``[B, S, H, W]``).

    HU models get int16-range HU cast to float (what ``series_logits`` hands a
    model); 8-bit models get 0..255 grey.
    """
    depth = config.series_slices if spec.level == "series" else spec.planes  # slices x 8-bit images per slice
    shape = (batch_size, depth, config.img_size, config.img_size)
    low, high = (-1024, 1500) if spec.input_kind == "hu" else (0, 256)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(low, high, shape, generator=generator, dtype=torch.int16).to(device).float()


def forward_gflops(model: nn.Module, config: BenchConfig) -> float | None:
    """Forward FLOPs of one sample in GFLOP (on the CPU, fp32), or None if they cannot be counted."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        x = synthetic_input(model.spec, config, 1, torch.device("cpu"))
        was_training = model.training
        model.eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.cpu()(x)
        model.train(was_training)
        return counter.get_total_flops() / 1e9
    except (RuntimeError, ValueError, TypeError) as err:  # an op without a FLOP formula, ...
        log.warning("FLOPs not counted: %s", err)
        return None


def peak_memory(device: torch.device) -> int:
    """Peak bytes: CUDA max allocated since the last reset, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, library versions and CPU threads: what a figure needs to be compared."""
    import timm

    env = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "headct": __version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def cpu_machine() -> dict[str, Any]:
    """What a CPU timing needs beside it: the CPU's name, its cores, torch's threads and the load average."""
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg())}


def matmul_gflops(size: int = 1024, seconds: float = 1.0) -> float:
    """The machine's fp32 matrix-multiply rate (GFLOP/s) with torch's threads: the floor a model is judged by.

    Square ``size`` matrices multiplied back to back for about ``seconds``; the
    best of three passes, since a shared machine only ever slows a pass down.
    """
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    torch.mm(a, b)  # warm-up: thread pool and packing buffers
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3 or count == 0:
            torch.mm(a, b)
            count += 1
        best = max(best, 2 * size ** 3 * count / elapsed / 1e9)
    return best


def write_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``result`` as indented JSON, atomically."""
    atomic.write_text(path, json.dumps(result, indent=2) + "\n")


# --- command line -----------------------------------------------------------------

def bench_command(args: argparse.Namespace) -> int:
    """``headct bench``: run one benchmark, print a summary line, write JSON if asked."""
    config = BenchConfig(
        model=args.model, batch_size=args.batch_size, img_size=args.img_size, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs,
        train=args.train or bool(args.data), data=args.data, task=args.task, workers=args.workers,
        warmup=args.warmup, iters=args.iters, device=args.device, num_classes=args.num_classes,
        series_slices=args.series_slices,
    )
    result = run_bench(config)
    print(summary_line(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def summary_line(result: dict[str, Any]) -> str:
    """One human line: model, mode, device, images/s, ms/batch, latency, memory."""
    s = result["settings"]
    parts = [
        f"{result['model']} {result['mode']} on {result['environment']['device_name']}",
        f"batch {s['batch_size']} {s['img_size']}px {s['amp']}",
        f"{result['samples_per_s']:.1f} img/s ({result['slice_images_per_s']:.1f} slice img/s)",
        f"{result['ms_per_batch']:.2f} ms/batch",
    ]
    if "latency_ms" in result:
        parts.append(f"batch-1 {result['latency_ms']:.2f} ms")
    parts.append(f"peak {result['peak_memory_bytes'] / 2**20:.0f} MiB ({result['peak_memory_kind']})")
    if "cache_vs_synthetic" in result:
        parts.append(f"cache/synthetic {result['cache_vs_synthetic']:.2f}")
    return ", ".join(parts)


# --- helpers ----------------------------------------------------------------------

def _cache_task(config: BenchConfig) -> tuple[int, str]:

    cache = Cache(config.data)
    return get_task(config.task, cache.labels).num_outputs, cache.kind


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if model.spec.level == "series":
        return model.forward_series(x, None)[1]
    return model(x)


def _slices_per_sample(spec: Any, config: BenchConfig) -> int:
    return config.series_slices if spec.level == "series" else 2 * spec.context + 1


def _throughput(times_ms: list[float], batch_size: int, slices: int) -> dict[str, Any]:
    median = statistics.median(times_ms)
    mean = statistics.fmean(times_ms)
    return {
        "ms_per_batch": median,
        "ms_per_batch_mean": mean,
        "ms_per_batch_min": min(times_ms),
        "samples_per_s": batch_size * 1e3 / median,
        "samples_per_s_mean": batch_size * 1e3 / mean,
        "slice_images_per_s": batch_size * slices * 1e3 / median,
        "slices_per_sample": slices,
        "timed_iters": len(times_ms),
    }


def _input_description(model: nn.Module, config: BenchConfig) -> dict[str, Any]:
    spec = model.spec
    return {
        "kind": spec.input_kind,
        "level": spec.level,
        "slices_per_sample": _slices_per_sample(spec, config),
        "size": config.img_size,
    }


def _memory_kind(device: torch.device) -> str:
    return "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
