"""Several processes, GPUs or nodes through ``torchrun``: set-up, rank and gathering.

``torchrun`` (or ``python -m torch.distributed.run``) sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` joins the process
group (nccl on CUDA, gloo on CPU) and picks this process's device. Without
those variables everything here is a single-process no-op, so the training
loop has one code path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None, *, backend: str | None = None) -> DistInfo:
    """Join the ``torchrun`` process group when there is one; choose the device.

    ``backend`` defaults to nccl on CUDA and gloo on CPU. Inference passes
    "gloo": it only gathers Python objects, and gloo lets several processes
    share one GPU (NCCL refuses two ranks on the same device).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        # more processes than GPUs (inference): they share the GPUs round-robin
        dev = torch.device("cuda", local_rank % torch.cuda.device_count() if world_size > 1
                           else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        log.info("process %d of %d on %s (%s)", rank, world_size, dev, backend)
    if world_size > 1:
        opencv_threads_like_torch()
    return DistInfo(rank, world_size, local_rank, dev)


def opencv_threads_like_torch() -> int:
    """Give OpenCV's thread pool torch's intra-op thread count (which torchrun sets to 1 per process
    through OMP_NUM_THREADS); returns it.

    OpenCV ignores OMP_NUM_THREADS and starts a thread per core in every process,
    so N processes on N cores would run N x N threads through the series checks
    and the resampling.
    """
    import cv2

    threads = torch.get_num_threads()
    cv2.setNumThreads(threads)
    return threads


def close_distributed(info: DistInfo) -> None:
    """Leave the process group (no-op for a single process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_share(items: Sequence[T], info: DistInfo) -> list[tuple[int, T]]:
    """This process's share of ``items`` with their positions: every ``world_size``-th from its rank."""
    return [(position, items[position]) for position in range(info.rank, len(items), info.world_size)]


def merge_in_order(pairs: list[tuple[int, Any]], info: DistInfo) -> list[Any]:
    """Every process's ``(position, item)`` pairs, merged by position (stable), on every process.

    With :func:`rank_share` this puts the outputs of split work back into the
    order a single process would have made them.
    """
    merged = [pair for part in gather_objects(pairs, info) for pair in part]
    return [item for _, item in sorted(merged, key=lambda pair: pair[0])]


def sum_scalar(value: float, info: DistInfo) -> float:
    """Sum of a float over all processes."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item())
