"""Torch datasets over a prepared cache: single slices (2-D / 2.5-D) and whole series.

Every item holds raw values in the cache's storage type (int16 HU, or uint8
0..255 grey); the consumer converts to float32 after moving a batch to its
device, so a host-to-GPU copy moves half (int16) or a quarter (uint8) of the
bytes of float32. The model's own windowing layer does the rest. Reads are
views of memory-mapped shards, so an item costs one small copy and no file
opens beyond the first touch of a shard.

- :class:`SliceDataset`: ``(x [K, H, W], y, row)`` with K = 2*context+1
  neighbours centred on the slice (edges repeat the end slice); a C-channel
  cache (several 8-bit images per slice) gives ``x [K*C, H, W]``, slice-major
  (:func:`flatten_channels`); y is float32
  ``[n]`` for multi-label tasks, an int64 class for multi-class ones. Rows the
  task cannot use (unknown labels, excluded classes) are left out.
- :class:`SeriesDataset`: ``(x [S, H, W], y_slices [S, n], y_series [n], rows [S])``
  (``x [S, C, H, W]`` in a C-channel cache) for whole-series models;
  :func:`collate_series` pads a batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from headct.data.cache import Cache
from headct.tasks import Task

Augment = Callable[[torch.Tensor], torch.Tensor]


def loader_workers(requested: int | None, device: torch.device, world_size: int = 1) -> int:
    """DataLoader workers: as requested, else 0 on the CPU (the model needs the cores) and, with a GPU,
    this process's share of the cores less one, at most 8 (reads are memory-mapped: a few keep up).

    The one rule for training and the benchmarks' input pipeline.
    """
    if requested is not None:
        return max(int(requested), 0)
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(world_size, 1) - 1))


def neighbour_index(num_slices: int, context: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[S, 2*context+1]`` slice indices centred on each slice, clamped at the ends (the end slice repeats).

    The one definition of a 2.5-D neighbour stack: the datasets, the models, the
    forward path and Grad-CAM all gather slices with it.
    """
    offsets = torch.arange(-context, context + 1, device=device)
    centres = torch.arange(num_slices, device=device)[:, None]
    return (centres + offsets[None, :]).clamp_(0, num_slices - 1)


def flatten_channels(stacks: torch.Tensor) -> torch.Tensor:
    """Neighbour stacks ``[b, K, C, H, W]`` of a C-channel series → ``[b, K*C, H, W]``, slice-major
    (slice 0's C images, then slice 1's, ...: the layout the input layer reads); ``[b, K, H, W]`` as is.

    The one place where a stack's channels meet its slices: datasets, the forward path and Grad-CAM use it.
    """
    return stacks.flatten(1, 2) if stacks.dim() == 5 else stacks


class SliceDataset(Dataset):
    """Slices of one split as ``(x [K, H, W], y, row)``, ``x`` in the cache's dtype; see the module docstring.

    ``augment``, when given, maps ``x`` as float32 to a new tensor of the same shape (items are then float32).
    """

    def __init__(self, cache: Cache, split: str | None, task: Task, context: int = 0,
                 augment: Augment | None = None) -> None:
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.cache, self.task, self.context, self.augment = cache, task, int(context), augment
        targets, keep = task.targets(cache.label_matrix)
        rows = cache.rows(split)
        self.rows = rows[keep[rows]]
        self.targets = targets
        index = cache.index
        self._shard = index["shard"]
        self._offset = index["offset"]
        self._length = {str(shard): len(cache.series_rows(str(shard))) for shard in np.unique(self._shard[self.rows])}

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        row = int(self.rows[item])
        shard = str(self._shard[row])
        offset = int(self._offset[row])
        series = self.cache.series_slices(shard)
        if self.context:
            positions = neighbour_index(self._length[shard], self.context)[offset].numpy()
            x = torch.from_numpy(np.ascontiguousarray(series[positions]))
        else:
            x = torch.from_numpy(np.array(series[offset:offset + 1]))
        x = flatten_channels(x[None])[0]
        if self.augment is not None:
            x = self.augment(x.float())
        return x, torch.as_tensor(self.targets[row]), row

    def labels(self) -> np.ndarray:
        """Targets of every item, in item order (for samplers and class weights)."""
        return self.targets[self.rows]


class SeriesDataset(Dataset):
    """Whole series of one split as ``(x [S, H, W], y_slices [S, n], y_series [n], rows [S])``.

    ``y_slices`` holds the task's targets per slice (one-hot for multi-class
    tasks) and -1 on slices the task cannot use, so a loss can mask them.
    ``y_series`` is the maximum over usable slices for multi-label tasks; for
    multi-class tasks it is the most frequent class other than the first
    (stroke beats non-stroke, hemorrhagic beats ischemic on a tie) among usable
    slices, else the first class. ``max_slices`` keeps that many evenly
    spaced slices of longer series.
    """

    def __init__(self, cache: Cache, split: str | None, task: Task, max_slices: int | None = None) -> None:
        self.cache, self.task, self.max_slices = cache, task, max_slices
        targets, keep = task.targets(cache.label_matrix)
        n = task.num_outputs
        if task.kind == "multiclass":
            dense = np.eye(n, dtype=np.float32)[targets]
        else:
            dense = targets.astype(np.float32)
        dense[~keep] = -1.0
        self.slice_targets = dense
        self.keep = keep
        rows = cache.rows(split)
        shards = list(dict.fromkeys(cache.index["shard"][rows].tolist()))
        self.series = [(shard, cache.series_rows(shard)) for shard in shards
                       if keep[cache.series_rows(shard)].any()]

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        shard, rows = self.series[item]
        positions = np.arange(len(rows))
        if self.max_slices is not None and len(rows) > self.max_slices:
            positions = np.unique(np.round(np.linspace(0, len(rows) - 1, self.max_slices)).astype(np.int64))
        rows = rows[positions]
        x = torch.from_numpy(np.ascontiguousarray(self.cache.series_slices(shard)[positions]))
        y_slices = self.slice_targets[rows]
        return x, torch.from_numpy(y_slices), torch.from_numpy(self._series_target(rows)), torch.from_numpy(rows)

    def _series_target(self, rows: np.ndarray) -> np.ndarray:
        usable = self.slice_targets[rows][self.keep[rows]]
        n = self.task.num_outputs
        if self.task.kind == "multilabel":
            return usable.max(axis=0) if len(usable) else np.zeros(n, np.float32)
        counts = usable.sum(axis=0)
        target = np.zeros(n, dtype=np.float32)
        target[int(np.argmax(counts[1:])) + 1 if counts[1:].max(initial=0) > 0 else 0] = 1.0
        return target


def collate_series(batch: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad series to the longest: ``(x [B, S, H, W], y_slices [B, S, n], y_series [B, n], rows [B, S], mask [B, S])``
    (``x [B, S, C, H, W]`` for a C-channel cache).

    Padding is at the end of each row: x 0, y_slices -1, rows -1, mask False; x keeps the items' dtype.
    """
    longest = max(item[0].shape[0] for item in batch)
    plane = batch[0][0].shape[1:]
    n = batch[0][2].shape[0]
    b = len(batch)
    x = torch.zeros(b, longest, *plane, dtype=batch[0][0].dtype)
    y_slices = torch.full((b, longest, n), -1.0)
    rows = torch.full((b, longest), -1, dtype=torch.int64)
    mask = torch.zeros(b, longest, dtype=torch.bool)
    for i, (xi, yi, _, ri) in enumerate(batch):
        s = xi.shape[0]
        x[i, :s], y_slices[i, :s], rows[i, :s], mask[i, :s] = xi, yi, ri, True
    return x, y_slices, torch.stack([item[2] for item in batch]), rows, mask
