"""Run a model over whole series: the one forward path shared by train, evaluate, predict and serve.

A series is ``[S, H, W]`` raw values (int16 HU or uint8) already at the model's
input size, or ``[S, C, H, W]`` uint8 for models of C 8-bit images per slice.
Slice-level models see each slice with its ``context`` neighbours on each side
(the end slice repeats at the edges); series-level models see the whole series
at once. Neighbour stacks are gathered on the device, so only the
series itself crosses from host to device. :func:`predict_split` runs it over
every series of one split of a cache (evaluation, and calibration after training).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from headct.data.cache import Cache
from headct.data.datasets import flatten_channels, neighbour_index
from headct.distributed import DistInfo, merge_in_order, rank_share
from headct.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class SeriesOutput:
    """Logits for one series: per slice ``[S, n]`` and, for series-level models, ``[n]``."""

    slice_logits: torch.Tensor
    series_logits: torch.Tensor | None = None


def autocast_context(
    device: torch.device, amp: str | None, *, cache_enabled: bool = True
) -> contextlib.AbstractContextManager:
    """Autocast for ``amp`` in {"bf16", "fp16"}; a no-op for None/"fp32"/"off"."""
    if amp in (None, "fp32", "off", "none"):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, cache_enabled=cache_enabled)


@torch.inference_mode()
def series_logits(
    model: nn.Module,
    pixels: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    amp: str | None = None,
    tta_flip: bool = False,
) -> SeriesOutput:
    """Logits for every slice of one series (and the series logit where the model has one).

    ``tta_flip``: test-time augmentation, the mean of the logits of the series
    and of its left-right mirror image (a head is near-symmetric; lesions are not).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    series = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, torch.Tensor) else pixels)
    if series.dim() != 3 + (model.spec.image_channels > 1):
        raise ValueError(f"a series is [S, H, W] ([S, C, H, W] for C 8-bit images per slice), "
                         f"got shape {tuple(series.shape)}")
    series = series.to(device, non_blocking=True)
    if tta_flip:
        views = [series_logits(model, view, batch_size=batch_size, device=device, amp=amp)
                 for view in (series, series.flip(-1))]
        mirrored = views[1].series_logits
        return SeriesOutput((views[0].slice_logits + views[1].slice_logits) / 2,
                            None if mirrored is None else (views[0].series_logits + mirrored) / 2)
    spec = model.spec
    with autocast_context(device, amp):
        if spec.level == "series":
            slice_out, series_out = model.forward_series(series[None].float(), None)
            return SeriesOutput(slice_out[0].float().cpu(), series_out[0].float().cpu())
        outputs = [model(batch).float().cpu() for batch in _neighbour_batches(series, spec.context, batch_size)]
    return SeriesOutput(torch.cat(outputs))


def _neighbour_batches(series: torch.Tensor, context: int, batch_size: int) -> Iterator[torch.Tensor]:
    index = neighbour_index(series.shape[0], context).to(series.device)
    for start in range(0, series.shape[0], batch_size):
        yield flatten_channels(series[index[start : start + batch_size]]).float()  # [b, K(*C), H, W]


# --- a split of a cache -------------------------------------------------------------

@dataclass
class SplitPredictions:
    """Logits and truth for the usable slices of one split, in cache order.

    ``targets`` are float 0/1 ``[N, n]`` (multi-label) or int class indices
    ``[N]`` (multi-class). ``series_logits`` (series-level models) has one row
    per entry of ``series_keys``.
    """

    rows: np.ndarray           # int [N]
    uids: np.ndarray           # str [N]
    studies: np.ndarray        # str [N]
    series: np.ndarray         # str [N] (shard keys)
    logits: np.ndarray         # float32 [N, n]
    targets: np.ndarray
    series_keys: np.ndarray    # str [M]
    series_studies: np.ndarray  # str [M]
    series_logits: np.ndarray | None = None  # float32 [M, n]




def predict_split(
    model: nn.Module,
    cache: Cache,
    task: Task,
    split: str,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    amp: str | None = None,
    max_series: int | None = None,
    progress: bool = True,
    dist: DistInfo | None = None,
    tta_flip: bool = False,
) -> SplitPredictions:
    """Logits for every usable slice of ``split``, series by series (whole series per forward path).

    ``tta_flip`` averages with the mirrored series (:func:`series_logits`).

    With ``dist`` (torchrun), this process runs every world_size-th series and
    the parts are merged back into series order on every process.
    """
    dist = dist or DistInfo()
    targets_all, keep_all = task.targets(cache.label_matrix)
    split_rows = cache.rows(split)
    shards = list(dict.fromkeys(cache.index["shard"][split_rows].tolist()))
    if max_series is not None:
        shards = shards[:max_series]
    parts = []
    model.eval()
    share = rank_share(shards, dist)
    for position, shard in tqdm(share, desc=f"predict {split}", unit="series", disable=not progress, leave=False):
        series_rows = cache.series_rows(shard)
        keep = keep_all[series_rows]
        if not keep.any():
            continue
        out = series_logits(model, np.array(cache.series_slices(shard)), batch_size=batch_size,
                            device=device, amp=amp, tta_flip=tta_flip)
        series = out.series_logits.numpy() if out.series_logits is not None else None
        parts.append((position, (shard, series_rows[keep], out.slice_logits.numpy()[keep], series)))
    parts = merge_in_order(parts, dist)
    series_keys = [shard for shard, _, _, _ in parts]
    rows = [kept for _, kept, _, _ in parts]
    logits = [part_logits for _, _, part_logits, _ in parts]
    series_out = [series for _, _, _, series in parts if series is not None]
    n = task.num_outputs
    rows_arr = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    index = cache.index
    study_of_shard = {str(s): str(st) for s, st in zip(index["shard"][split_rows], index["study"][split_rows],
                                                      strict=True)}
    return SplitPredictions(
        rows=rows_arr,
        uids=index["uid"][rows_arr],
        studies=index["study"][rows_arr],
        series=index["shard"][rows_arr],
        logits=np.concatenate(logits).astype(np.float32) if logits else np.zeros((0, n), np.float32),
        targets=targets_all[rows_arr],
        series_keys=np.asarray(series_keys, dtype=str),
        series_studies=np.asarray([study_of_shard[s] for s in series_keys], dtype=str),
        series_logits=np.stack(series_out).astype(np.float32) if series_out else None,
    )


def resolve_amp(amp: str | None, device: str | torch.device) -> str | None:
    """The mixed precision to run: "bf16", "fp16" or None (fp32). The one rule train, bench and predict use.

    "auto" (or None): bf16 on a CUDA device that has it, else fp32; "off"/"fp32": fp32;
    "bf16"/"fp16" as asked (fp16 off CUDA is slow or unsupported: logged).
    """
    device = torch.device(device)
    if amp in (None, "auto"):
        cuda = device.type == "cuda" and torch.cuda.is_available()
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else None
    if amp in ("off", "fp32"):
        return None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be one of auto, bf16, fp16, fp32, off; got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        log.warning("fp16 autocast on %s is slow or unsupported; consider bf16 or off", device.type)
    return amp


def prepare_for_inference(
    model: nn.Module,
    device: str | torch.device,
    *,
    amp: str | None = "auto",
    channels_last: bool = True,
    compile: str | bool | None = None,
    cuda_graph_batch: int | None = None,
    freeze: bool | None = None,
) -> InferenceModel:
    """Move ``model`` to ``device`` in eval mode and wrap it in the fast inference path.

    ``amp="auto"`` is bf16 on CUDA and fp32 elsewhere; ``channels_last`` stores
    conv weights and inputs NHWC (Tensor Cores' layout; harmless on CPU);
    ``compile`` is a ``torch.compile`` mode (True: "default"), applied on CUDA
    only; ``cuda_graph_batch`` captures one CUDA graph for that batch size and
    pads smaller batches up to it. Off CUDA, compile and CUDA graphs are skipped
    (logged), so the same call works everywhere. ``freeze`` (default: on for fp32
    on the CPU) runs slice-level forwards through a frozen TorchScript trace:
    BatchNorm folded into the convolutions and oneDNN's fused kernels, about half
    eager's CPU time, outputs equal to eager's within float rounding (see :func:`frozen_trace`). The
    wrapper keeps ``spec``, ``forward`` and ``forward_series``, so
    ``series_logits`` takes it as is.
    """
    device = torch.device(device)
    amp = resolve_amp(amp, device)
    model = model.to(device).eval()
    if channels_last:
        to_channels_last(model)
    compile_mode = "default" if compile is True else (compile or None)
    if compile_mode and device.type != "cuda":
        log.info("torch.compile skipped on %s (CUDA only)", device.type)
        compile_mode = None
    if cuda_graph_batch and device.type != "cuda":
        log.info("CUDA graphs skipped on %s", device.type)
        cuda_graph_batch = None
    if freeze is None:
        freeze = device.type == "cpu" and amp is None and not compile_mode  # resolve_amp: None is fp32
    return InferenceModel(model, amp=amp, channels_last=channels_last, compile_mode=compile_mode,
                          cuda_graph_batch=cuda_graph_batch, freeze=freeze)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store every 2-D conv's weight NHWC, in place.

    Per conv rather than ``model.to(memory_format=...)``, which refuses the 5-D
    buffers of the windowing layer.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            module.to(memory_format=torch.channels_last)
    return model


class InferenceModel(nn.Module):
    """A model behind the fast path: autocast, channels_last inputs, compile, one CUDA graph.

    Made by :func:`prepare_for_inference`. ``forward`` runs the slice-level path
    (graphed when a graph batch size was given); ``forward_series`` runs
    series-level models eagerly (their length varies, so no graph).
    """

    def __init__(self, model: nn.Module, *, amp: str | None, channels_last: bool,
                 compile_mode: str | None, cuda_graph_batch: int | None, freeze: bool = False) -> None:
        super().__init__()
        self.model = model
        self.spec = model.spec
        self.amp = amp
        self.channels_last = channels_last
        self.compile_mode = compile_mode
        self.cuda_graph_batch = cuda_graph_batch
        # Kept out of the module tree so state_dict() stays the plain model's.
        self.__dict__["_compiled"] = torch.compile(model, mode=compile_mode, dynamic=False) if compile_mode else model
        self.__dict__["_graphs"] = {}
        self.freeze = freeze
        self.__dict__["_frozen"] = {}  # input shape without the batch -> frozen trace (None: stay eager)

    @property
    def uses_cuda_graphs(self) -> bool:
        """True once a CUDA graph has been captured and is being replayed."""
        return any(graph is not None for graph in self._graphs.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cuda_graph_batch or not x.is_cuda:
            return self._run(x)
        key = (tuple(x.shape[1:]), x.dtype)
        if key not in self._graphs:
            self._graphs[key] = _capture_graph(self._run_graphable, x, self.cuda_graph_batch)
        graph = self._graphs[key]
        if graph is None:  # capture failed once: stay eager for this shape
            return self._run(x)
        return torch.cat([graph(chunk) for chunk in x.split(self.cuda_graph_batch)])

    def forward_series(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        with autocast_context(x.device, self.amp):
            return self.model.forward_series(x, mask)

    def _run(self, x: torch.Tensor, *, cache_enabled: bool = True) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.freeze and not x.is_cuda:
            key = tuple(x.shape[1:])
            if key not in self._frozen:
                self._frozen[key] = frozen_trace(self.model, x)
            if self._frozen[key] is not None:
                return self._frozen[key](x)
        with autocast_context(x.device, self.amp, cache_enabled=cache_enabled):
            return self._compiled(x)

    def _run_graphable(self, x: torch.Tensor) -> torch.Tensor:
        # Autocast's weight-cast cache must be off inside a CUDA graph capture.
        return self._run(x, cache_enabled=False)


def frozen_trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule | None:
    """A frozen TorchScript trace of ``model`` for CPU inference on inputs shaped like ``example``, or None.

    Why TorchScript, which torch now marks deprecated: on the CPU it gives what
    ``torch.compile`` gives (BatchNorm folded, oneDNN fused convolutions: about
    half eager's time on EfficientNet-B0) with a warm-up of a few seconds (trace,
    freeze and two profiling runs), where inductor takes 30-60 s per process
    even with a warm cache, longer than a whole study. The trace is made on 2 rows and checked against
    the eager model on 3, so a batch size baked into the graph is caught; any
    failure or mismatch leaves the model eager (logged).
    """
    probe = example[:3] if example.shape[0] >= 3 else torch.cat([example[:1]] * 3)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice and the tracer's warnings
            frozen = torch.jit.freeze(torch.jit.trace(model.eval(), probe[:2], check_trace=False))
            same = torch.allclose(frozen(probe).float(), model(probe).float(), rtol=1e-4, atol=1e-4)
    except Exception as err:  # noqa: BLE001 - any trace failure means: run eagerly
        log.info("TorchScript freeze not used (%s: %s); running eagerly", type(err).__name__, err)
        return None
    if not same:
        log.warning("the frozen TorchScript trace differs from the model; running eagerly")
        return None
    return frozen


class _GraphedForward:
    """One captured CUDA graph for a fixed batch size; smaller batches are padded up to it."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, batch_size: int) -> None:
        self.batch_size = batch_size
        self.static_input = example[:1].expand(batch_size, *example.shape[1:]).clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (and compilation) off the capture
            for _ in range(3):
                fn(self.static_input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self.static_input[:n].copy_(x)
        if n < self.batch_size:  # pad with the last row; its outputs are dropped
            self.static_input[n:].copy_(x[-1:].expand(self.batch_size - n, *x.shape[1:]))
        self.graph.replay()
        return self.static_output[:n].clone()


def _capture_graph(fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
                   batch_size: int) -> _GraphedForward | None:
    try:
        return _GraphedForward(fn, example, batch_size)
    except RuntimeError as err:  # e.g. an op that syncs with the host: run eagerly instead
        log.warning("CUDA graph capture failed (%s); running without CUDA graphs", err)
        return None
