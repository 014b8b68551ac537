"""The training loop: ``headct train`` and :func:`train`.

One run trains one model on one task of a prepared cache and writes, under ``RUN/``:

- ``config.yaml``: the resolved :class:`TrainConfig` (defaults < YAML < flags);
- ``best/`` and ``last/``: checkpoints (``headct.checkpoint``, atomic);
- ``train_state.pt``: everything ``--resume RUN`` needs (``headct.training.state``);
- ``metrics.csv``: one row per epoch (losses, validation metrics, lr, images/s);
- ``tb/``: TensorBoard events, when TensorBoard is installed.

Recipe: AdamW (lr 2e-3), linear warm-up then cosine decay per optimizer step,
AMP (bf16, or fp16 with a GradScaler), gradient accumulation and clipping, CT
augmentations on the device (``headct.training.augment``), the best epoch by a
validation metric (slice or ``study_`` level) kept, early stopping optional
(``patience``). Multi-label tasks use BCE weighted per label (the RSNA
competition's 2 on "any"); multi-class tasks use cross-entropy with label
smoothing (0.1 by default, as StrokeNeXt). Options, off by default until a
comparison shows they help: ``class_balance`` (rare-label loss weights),
``ema_decay`` (an EMA of the weights), ``tta_flip`` (mirror test-time
augmentation, recorded in the checkpoint), ``pretrained`` (timm weights or a
file), ``fold`` (cross-validation, ``headct.cv``).

Series-level models (``study-seq``) train on whole series with a per-slice and
a series loss, end to end, or two-stage (``encoder_checkpoint``): slice
embeddings from the trained 2-D encoder are computed once and only the RNN and
heads train.

At the end the best checkpoint predicts the validation split; a temperature is
fitted and per-class F1-best thresholds are swept on the calibrated
probabilities; both go into the checkpoint with a summary of the training data.

Several processes (GPUs, nodes) run through ``torchrun``: DDP with a
DistributedSampler, rank 0 writes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from headct import atomic
from headct.checkpoint import (
    Provenance,
    encoder_arguments,
    intended_use_for,
    load_checkpoint,
    save_checkpoint,
    update_checkpoint_config,
)
from headct.data.cache import Cache
from headct.data.datasets import SeriesDataset, SliceDataset, collate_series, loader_workers
from headct.data.folds import cache_folds, fold_view
from headct.decide import fit_calibration, probabilities, study_table
from headct.distributed import (
    DistInfo,
    barrier,
    close_distributed,
    gather_objects,
    init_distributed,
    sum_scalar,
)
from headct.errors import ConfigError
from headct.inference import (
    SplitPredictions,
    autocast_context,
    predict_split,
    resolve_amp,
    to_channels_last,
)
from headct.metrics import classification_metrics
from headct.models import build_model, builder_parameters
from headct.models.registry import check_model_name
from headct.tasks import get_task
from headct.training.augment import AugmentConfig, augment_batch
from headct.training.config import (
    TrainConfig,
    check_complete,
    load_config,
    resolve_config,
    save_config,
)
from headct.training.series import (
    EmbeddingDataset,
    SeriesForward,
    collate_embeddings,
    training_mode,
)
from headct.training.state import STATE_FILE, load_train_state, save_train_state, seed_epoch
from headct.training.step import OptimizerStep, make_optimizer, task_loss

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
LOWER_IS_BETTER = ("loss", "ece", "rsna_log_loss")  # monitored with a minus sign
PRETRAINED_HUB = ("imagenet", "true", "timm")  # --pretrained values that mean timm's default weights
PROGRESS_EVERY = 10  # batches between progress-bar loss updates (each one is a device sync)


# --- the command ---------------------------------------------------------------

def train_command(args: argparse.Namespace) -> int:
    """``headct train``: resolve the config, train, print where the best checkpoint is."""
    skip = {"command", "verbose", "command_verbose", "config", "resume"}
    flags = {k: v for k, v in vars(args).items() if k not in skip}
    if args.resume:
        run_dir = Path(args.resume)
        if flags.get("out") not in (None, str(run_dir)):
            raise ConfigError(f"--resume {run_dir} continues that run; drop --out or give the same directory")
        base = load_config(run_dir / "config.yaml")
        config = resolve_config(args.config, flags, base=base)
    else:
        config = resolve_config(args.config, flags)
    check_complete(config)
    check_model_name(config.model)  # before the cache loads, so a typo fails at once
    _check_fold(config)
    best = train(config, resume=bool(args.resume))
    if best is not None:
        print(f"best checkpoint: {best}")
    return 0


def _check_fold(config: TrainConfig) -> None:
    """``--fold K`` needs a cache with that fold (``headct prepare --folds``); one line otherwise."""
    if config.fold is None:
        return
    cache = Cache(config.data)
    available = cache_folds(cache)
    if config.fold not in available:
        raise ConfigError(f"{cache.path}: no fold {config.fold}; "
                          + (f"the cache has folds {available}" if available else "the cache has no folds"),
                          hint="headct prepare --folds K assigns patient folds")


def train(config: TrainConfig, *, resume: bool = False) -> Path | None:
    """Train as ``config`` says; returns the best checkpoint directory (None on ranks > 0)."""
    check_complete(config)
    info = init_distributed(config.device)
    try:
        return Trainer(config, info).fit(resume=resume)
    finally:
        close_distributed(info)


# --- the trainer -------------------------------------------------------------------

class Trainer:
    """One training run: data, model, optimisation state, and the epoch loop."""

    def __init__(self, config: TrainConfig, info: DistInfo) -> None:

        self.config, self.info, self.device = config, info, info.device
        self.run_dir = Path(config.out)
        self.cache = Cache(config.data)
        if config.fold is not None:  # train on the other folds, validate on a share of them
            self.cache = fold_view(self.cache, config.fold, seed=config.seed)
        self.task = get_task(config.task, self.cache.labels)
        self.input_windows = (input_windows(config.input_windows, self.cache.channels)
                              if self.cache.kind == "uint8" else None)
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = _build(config, self.task.num_outputs, self.cache.kind, self.cache.channels).to(self.device)
        if config.channels_last:
            to_channels_last(self.model)
        self.pretrained = _pretrained_summary(config.pretrained)
        self.spec = self.model.spec
        if self.spec.input_kind != self.cache.kind:
            raise ValueError(f"{config.model} reads {self.spec.input_kind} input but the cache holds "
                             f"{self.cache.kind}; set input_kind in --model-kwargs")
        if self.spec.image_channels != self.cache.channels:
            raise ConfigError(f"{config.model} reads {self.spec.image_channels} 8-bit images per slice but the "
                              f"cache holds {self.cache.channels}")
        self.mode = training_mode(self.spec.level, config.encoder_checkpoint)
        self.amp = resolve_amp(config.amp, self.device)
        self.loss_weights = torch.tensor(self.task.loss_weights, dtype=torch.float32, device=self.device)
        self.balance = (torch.tensor(balanced_weights(self._train_targets(), self.task.kind, self.task.num_outputs),
                                     dtype=torch.float32, device=self.device) if config.class_balance else None)
        self.smoothing = (config.label_smoothing if config.label_smoothing is not None
                          else (0.1 if self.task.kind == "multiclass" else 0.0))
        self.augment = AugmentConfig(config.flip_p, config.rotate_deg, config.scale, config.shift,
                                     config.window_shift, config.window_scale) if config.augment else None
        self.train_data, self.val_data, self.collate = self._datasets()
        self.train_loader, self.val_loader = self._loaders()
        self.steps_per_epoch = max(1, math.ceil(self._batches_per_epoch() / config.grad_accum))
        self.optimizer = make_optimizer(self.model, config.lr, config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(
            config.epochs * self.steps_per_epoch, round(config.warmup_epochs * self.steps_per_epoch),
            config.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.stepper = OptimizerStep(self.model, self.optimizer, self.scaler, scheduler=self.scheduler,
                                     clip_grad=config.clip_grad, accum=config.grad_accum)
        self.ema = _ema(self.model, config.ema_decay)
        self.net = self._wrap()
        self.history: list[dict[str, float]] = []
        self.start_epoch, self.best_score, self.best_epoch, self.bad_epochs = 0, None, -1, 0
        self.stopped = False

    # -- the loop --

    def fit(self, *, resume: bool = False) -> Path | None:
        config, main = self.config, self.info.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")
        if resume:
            self._restore()
        barrier(self.info)
        writer = _tensorboard(self.run_dir / "tb") if (main and config.tensorboard) else None
        for epoch in range(self.start_epoch, config.epochs):
            if self.stopped:
                break
            generator = seed_epoch(config.seed, epoch, self.info.rank)
            started = time.perf_counter()
            train_loss, seen = self._train_epoch(epoch, generator)
            elapsed = time.perf_counter() - started
            with self._averaged_weights():
                val = self._validate()
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["val_loss"],
                   **{f"val_{k}": v for k, v in val["metrics"].items()},
                   "lr": self.optimizer.param_groups[0]["lr"],
                   "images_per_s": sum_scalar(seen, self.info) / max(elapsed, 1e-9)}
            self._end_epoch(epoch, row, val)
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and value is not None and np.isfinite(value):
                        writer.add_scalar(key, value, epoch)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                       if k != "epoch" and v is not None))
        if writer is not None:
            writer.close()
        barrier(self.info)
        if not main:
            return None
        best = self.run_dir / "best"
        self._calibrate(best)
        return best

    def _train_epoch(self, epoch: int, generator: torch.Generator) -> tuple[float, int]:
        self.net.train()
        sampler = self.train_loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        accum, limit = self.config.grad_accum, self._batches_per_epoch()
        total, count, seen = torch.zeros((), device=self.device), 0, 0  # summed on the device: no sync a step
        bar = tqdm(_take(self.train_loader, limit), total=limit, desc=f"epoch {epoch}", unit="batch",
                   disable=not (self.config.progress and self.info.is_main), leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            last_micro = (i + 1) % accum == 0 or i + 1 == limit
            sync = self.net.no_sync() if (self.info.enabled and not last_micro) else nullcontext()
            with sync:
                loss, n = self._loss(batch, generator)
                self.stepper.backward(loss)
            if last_micro:
                self.stepper.step()
                if self.ema is not None:
                    self.ema.update(self.model, step=self.scheduler.last_epoch)  # optimizer steps so far
            total, count, seen = total + loss.detach().float(), count + 1, seen + n
            if not bar.disable and (count % PROGRESS_EVERY == 0 or count == limit):
                bar.set_postfix(loss=f"{float(total) / count:.4f}")  # reading the loss waits for the device
        return sum_scalar(float(total), self.info) / max(sum_scalar(count, self.info), 1.0), seen

    def _loss(self, batch: Any, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """Loss of one batch (augmented when a generator is given), and how many slices it held."""
        if self.mode == "slice":
            x, y = batch[0].to(self.device, non_blocking=True).float(), batch[1].to(self.device)
            if self.augment is not None and generator is not None:
                x = augment_batch(x, self.augment, generator, self.spec.input_kind)
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.net(x)
            return self.criterion(logits.float(), y), x.shape[0]
        x, y_slices, y_series, _, mask = (t.to(self.device, non_blocking=True) for t in batch)
        if self.mode == "series":
            x = x.float()
            if self.augment is not None and generator is not None:  # [B, S, C, H, W]: one transform per series
                x = augment_batch(x.flatten(1, -3), self.augment, generator, self.spec.input_kind).reshape(x.shape)
        with self._autocast():
            slice_logits, series_logits = self.net(x, mask)
        usable = mask & (y_slices[..., 0] >= 0)  # padding and slices the task cannot use carry -1
        loss = self.config.series_loss_weight * self.criterion(series_logits.float(), y_series)
        if usable.any():
            loss = loss + self.config.slice_loss_weight * self.criterion(slice_logits.float()[usable],
                                                                         y_slices[usable])
        return loss, int(mask.sum())

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task's loss (``headct.training.step.task_loss``) with this run's weights and smoothing."""
        return task_loss(logits, targets, self.task.kind, self.loss_weights, self.smoothing, self.balance)

    # -- validation --

    @torch.no_grad()
    def _validate(self) -> dict[str, Any]:
        """Loss and metrics on the validation split (sharded over ranks, gathered, de-duplicated)."""

        self.net.eval()
        logits, targets, rows, loss_sum, batches = [], [], [], 0.0, 0
        for batch in _take(self.val_loader, self._val_batches()):
            loss, _ = self._loss(batch, None)
            loss_sum, batches = loss_sum + float(loss), batches + 1
            out, y, r = self._slice_outputs(batch)
            logits.append(out), targets.append(y), rows.append(r)
        parts = gather_objects((logits, targets, rows), self.info)
        logits = torch.cat([t for p in parts for t in p[0]]).numpy()
        targets = torch.cat([t for p in parts for t in p[1]]).numpy()
        rows = torch.cat([t for p in parts for t in p[2]]).numpy()
        _, first = np.unique(rows, return_index=True)  # the DistributedSampler pads with repeats
        logits, targets = logits[first], targets[first]
        val_loss = sum_scalar(loss_sum, self.info) / max(sum_scalar(batches, self.info), 1.0)
        rows = rows[first]
        prob = probabilities(logits, self.task.kind)
        metrics = classification_metrics(targets, prob, labels=list(self.task.labels), kind=self.task.kind)
        metrics.update(self._study_metrics(rows, logits, targets))
        keep = ("micro_auroc", "macro_auroc", "f1_macro", "accuracy", "ece", "study_macro_auroc")
        return {"val_loss": val_loss, "metrics": {k: metrics.get(k) for k in keep if k in metrics},
                "all": metrics}

    def _study_metrics(self, rows: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Validation metrics per study (slices aggregated as evaluate does), keys prefixed ``study_``:
        ``--monitor study_macro_auroc`` stops early on what a study-level reader sees."""
        index = self.cache.index
        empty = np.zeros(0, dtype=str)
        pred = SplitPredictions(rows=rows, uids=index["uid"][rows], studies=index["study"][rows],
                                series=index["shard"][rows], logits=logits, targets=targets,
                                series_keys=empty, series_studies=empty)
        studies = study_table(pred, self.task, 1.0)
        if len(studies.studies) == 0:
            return {}
        metrics = classification_metrics(studies.targets, studies.prob, labels=list(self.task.labels),
                                         kind=self.task.kind)
        return {f"study_{k}": v for k, v in metrics.items() if isinstance(v, float | int) or v is None}

    def _slice_outputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-slice logits, targets and cache rows of one validation batch (on the CPU)."""
        if self.mode == "slice":
            x = batch[0].to(self.device).float()
            with self._autocast():
                out = self.net(x)
            return out.float().cpu(), batch[1].cpu(), batch[2].cpu()
        x, y_slices, _, rows, mask = batch
        with self._autocast():
            slice_logits, _ = self.net(x.to(self.device).float() if self.mode == "series"
                                       else x.to(self.device), mask.to(self.device))
        usable = mask & (y_slices[..., 0] >= 0)
        targets = y_slices[usable]
        if self.task.kind == "multiclass":
            targets = targets.argmax(-1)
        return slice_logits.float().cpu()[usable], targets, rows[usable]

    # -- bookkeeping --

    def _end_epoch(self, epoch: int, row: dict[str, float], val: dict[str, Any]) -> None:
        score = monitored_score(self.config.monitor, row, val)
        improved = self.best_score is None or (score is not None and score > self.best_score)
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        self.stopped = self.config.patience > 0 and self.bad_epochs >= self.config.patience
        self.history.append(row)
        if self.info.is_main:
            fields = self._checkpoint_fields(epoch)

            with self._averaged_weights():
                save_checkpoint(self.model, self.run_dir / "last", **fields)
                if improved:
                    save_checkpoint(self.model, self.run_dir / "best", **fields)
            write_history(self.run_dir / METRICS_FILE, self.history)
            save_train_state(self.run_dir, {
                "epoch": epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "best_score": self.best_score,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "stopped": self.stopped,
                "history": self.history,
                **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            })
        if self.stopped:
            log.info("early stop after epoch %d: %s did not improve for %d epochs",
                     epoch, self.config.monitor, self.bad_epochs)
        barrier(self.info)

    def _restore(self) -> None:
        state = load_train_state(self.run_dir)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_score, self.best_epoch = state["best_score"], int(state["best_epoch"])
        self.bad_epochs, self.stopped = int(state["bad_epochs"]), bool(state["stopped"])
        self.history = list(state["history"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        log.info("resuming %s after epoch %d", self.run_dir, self.start_epoch - 1)

    def _checkpoint_fields(self, epoch: int) -> dict[str, Any]:
        provenance = cache_provenance(self.cache)
        fields = {
            "size": self.cache.size, "task": self.task.name, "labels": list(self.task.labels),
            "label_kind": self.task.kind, "training": self.training_summary(epoch),
            "provenance": provenance, "intended_use": intended_use_for(provenance),
            "tta_flip": self.config.tta_flip,
        }
        if self.input_windows is not None:  # which HU window made each 8-bit image: predict applies them to DICOM
            fields["input_windows"] = self.input_windows
        return fields

    def training_summary(self, epoch: int) -> dict[str, Any]:
        """What the checkpoint was trained on and how (no paths: the cache is named by hashes)."""
        meta_file = self.cache.path / "meta.json"
        split = self.cache.meta.get("split", {})
        hidden = {"data", "out", "encoder_checkpoint", "pretrained"}  # paths: never in a checkpoint
        return {
            "cache": {"path_sha256": _sha256(str(self.cache.path.resolve()).encode()),
                      "meta_sha256": _sha256(meta_file.read_bytes()), "kind": self.cache.kind,
                      "size": self.cache.size, "source_format": self.cache.meta.get("source_format")},
            "split": {k: split.get(k) for k in ("how", "seed", "fractions", "n_train", "n_val", "n_test")}
            | ({"fold": split["fold"]} if "fold" in split else {}),
            "task": self.task.name, "labels": list(self.task.labels),
            "slices": {"train": len(self.train_data), "val": len(self.val_data)},
            "pretrained": self.pretrained,
            "mode": self.mode, "epoch": epoch, "best_epoch": self.best_epoch,
            "monitor": self.config.monitor, "best_score": self.best_score,
            "world_size": self.info.world_size, "amp": self.amp or "off",
            "config": {k: v for k, v in self.config.to_dict().items() if k not in hidden},
        }

    def _calibrate(self, best: Path) -> None:
        """Fit the temperature and sweep thresholds on validation with the best weights; store both."""
        model, stored = load_checkpoint(best, map_location=self.device)
        val = predict_split(model, self.cache, self.task, "val", batch_size=self.config.batch_size,
                            device=self.device, amp=self.amp, progress=self.config.progress,
                            tta_flip=self.config.tta_flip)
        # tta_flip again: it changes no training step, so a finished run resumed with it switched is scored
        # anew (calibration and the checkpoint's flag) without retraining (benchmarks/cv_recipe.py does so)
        training = dict(stored.training, epochs_run=len(self.history))
        training["config"] = dict(training.get("config") or {}, tta_flip=self.config.tta_flip)
        if len(val.rows) == 0:
            log.warning("no validation slices: thresholds 0.5 and temperature 1 are kept")
            update_checkpoint_config(best, training=training, tta_flip=self.config.tta_flip)
            return
        thresholds, temperature = fit_calibration(val.logits, val.targets, self.task.labels, self.task.kind)
        calibration = (f"temperature and F1-best thresholds fitted on the validation split "
                       f"({len(val.rows)} slices, {len(set(val.studies.tolist()))} studies)")
        provenance = dataclasses.replace(stored.provenance, calibration=calibration)
        update_checkpoint_config(best, thresholds=thresholds, temperature=temperature, training=training,
                                 provenance=provenance, tta_flip=self.config.tta_flip)
        log.info("best epoch %d: temperature %.3f, thresholds %s", self.best_epoch, temperature,
                 {k: round(v, 3) for k, v in thresholds.items()})

    def _train_targets(self) -> np.ndarray:
        """The task's targets of the usable training slices (for class balance)."""
        targets, keep = self.task.targets(self.cache.label_matrix)
        rows = self.cache.rows("train")
        return targets[rows[keep[rows]]]

    @contextmanager
    def _averaged_weights(self) -> Iterator[None]:
        """With EMA on: the model holds the averaged weights inside, its training weights again after."""
        if self.ema is None:
            yield
            return
        training = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(training)

    # -- set-up helpers --

    def _datasets(self) -> tuple[Dataset, Dataset, Any]:

        if self.mode == "slice":
            return (SliceDataset(self.cache, "train", self.task, context=self.spec.context),
                    SliceDataset(self.cache, "val", self.task, context=self.spec.context), None)
        train_data, val_data = (SeriesDataset(self.cache, split, self.task, max_slices=self.config.max_slices)
                                for split in ("train", "val"))
        if self.mode == "embeddings":
            train_data = EmbeddingDataset.from_series(self.model, train_data, self.device, self.info)
            val_data = EmbeddingDataset.from_series(self.model, val_data, self.device, self.info)
            return train_data, val_data, collate_embeddings
        return train_data, val_data, collate_series

    def _loaders(self) -> tuple[DataLoader, DataLoader]:
        config, info = self.config, self.info
        train_sampler = DistributedSampler(self.train_data, num_replicas=info.world_size, rank=info.rank,
                                           shuffle=True, seed=config.seed,
                                           drop_last=len(self.train_data) >= info.world_size)
        val_sampler = DistributedSampler(self.val_data, num_replicas=info.world_size, rank=info.rank,
                                         shuffle=False)
        workers = loader_workers(config.workers, self.device, info.world_size)
        common = {"num_workers": workers, "collate_fn": self.collate, "pin_memory": self.device.type == "cuda",
                  "persistent_workers": workers > 0}
        per_rank = len(train_sampler)
        train = DataLoader(self.train_data, batch_size=config.batch_size, sampler=train_sampler,
                           drop_last=per_rank > config.batch_size, **common)
        val = DataLoader(self.val_data, batch_size=config.batch_size, sampler=val_sampler, **common)
        return train, val

    def _batches_per_epoch(self) -> int:
        n = len(self.train_loader)
        if self.config.max_steps_per_epoch is not None:
            n = min(n, self.config.max_steps_per_epoch * self.config.grad_accum)
        return max(n, 1)

    def _val_batches(self) -> int:
        n = len(self.val_loader)
        return n if self.config.max_val_batches is None else min(n, self.config.max_val_batches)

    def _wrap(self) -> nn.Module:
        net: nn.Module = self.model if self.mode == "slice" else SeriesForward(self.model, self.mode)
        if not self.info.enabled:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)

    def _autocast(self):
        return autocast_context(self.device, self.amp)


# --- pieces the trainer uses ---------------------------------------------------------------

def cache_provenance(cache: Cache) -> Provenance:
    """Where a cache's data came from, from its meta.json (``synthetic`` unknown in caches without it)."""
    meta = cache.meta
    summary, split = meta.get("summary") or {}, meta.get("split") or {}
    return Provenance(source_format=meta.get("source_format"), synthetic=meta.get("synthetic"),
                      n_studies=summary.get("studies"), n_slices=summary.get("slices"), split_how=split.get("how"))


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier per optimizer step: linear warm-up to 1, then cosine down to ``min_ratio``."""
    total_steps, warmup_steps = max(total_steps, 1), max(min(warmup_steps, total_steps), 0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def monitored_score(monitor: str, row: dict[str, float], val: dict[str, Any]) -> float | None:
    """The early-stopping score, higher is better (losses and ECE are negated).

    An undefined metric (AUROC with one class in validation) falls back to the
    negated validation loss, with a warning, so the run still keeps a best.
    """
    name = monitor.removeprefix("val_")
    value = row.get("val_loss") if name == "loss" else val["all"].get(name)
    if value is None or not np.isfinite(value):
        log.warning("%s is undefined on this validation set; monitoring val_loss instead", monitor)
        return -float(row["val_loss"])
    return -float(value) if name in LOWER_IS_BETTER else float(value)


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.csv``: one row per epoch, columns in first-seen order, written atomically."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic.write_text(path, buffer.getvalue())


def input_windows(text: str | None, channels: int = 1) -> list[Any]:
    """The checkpoint's ``input_windows`` for an 8-bit cache: one window per image channel, in the cache's
    channel order (default: brain, for a cache of one image per slice)."""
    from headct.windows import parse_windows

    windows = parse_windows(text or "brain")
    if len(windows) != channels:
        raise ConfigError(f"--input-windows names {len(windows)} window{'s' if len(windows) != 1 else ''} "
                          f"but the cache holds {channels} 8-bit image{'s' if channels != 1 else ''} per slice; "
                          "name one window per image, in the order of prepare's --path-column")
    return [list(w) if isinstance(w, tuple) else w for w in windows]


def _build(config: TrainConfig, num_classes: int, input_kind: str, image_channels: int = 1) -> nn.Module:
    """Build the model for the cache's input kind and images per slice: its own arguments, or its encoder's
    (study-seq)."""
    kwargs = dict(config.model_kwargs)
    if config.pretrained:  # transient: the weights come from the file once, the checkpoint keeps them
        kwargs["pretrained"] = True if config.pretrained.lower() in PRETRAINED_HUB else config.pretrained
    if config.encoder_checkpoint:  # the trained encoder fixes its own input kind
        kwargs.update(encoder_arguments(config.encoder_checkpoint))
    elif "input_kind" in builder_parameters(config.model):
        kwargs = {"input_kind": input_kind, **_channels_argument(config.model, image_channels), **kwargs}
    else:
        images = {"image_channels": image_channels} if image_channels > 1 else {}  # the encoder's to refuse
        kwargs["encoder_kwargs"] = {"input_kind": input_kind, **images, **(kwargs.get("encoder_kwargs") or {})}
    return build_model(config.model, num_classes, **kwargs)


def _channels_argument(model: str, image_channels: int) -> dict[str, int]:
    """``image_channels`` for a cache of several 8-bit images per slice (none for one: the model's default)."""
    if image_channels == 1:
        return {}
    if "image_channels" not in builder_parameters(model):
        raise ConfigError(f"{model} reads one image per slice; the cache holds {image_channels} per slice")
    return {"image_channels": image_channels}


BALANCE_CAP = 10.0  # the largest weight class balance gives: one positive in 10,000 must not rule the loss


def balanced_weights(targets: np.ndarray, kind: str, num_outputs: int, cap: float = BALANCE_CAP) -> np.ndarray:
    """Loss weights for rare labels from training targets.

    Multi-label: BCE ``pos_weight`` per label = negatives / positives (1 for a
    label without positives), in [1, cap]. Multi-class: cross-entropy class
    weight = N / (C * n_c) (1 for an absent class), in [1/cap, cap].
    """
    if kind == "multilabel":
        positives = np.asarray(targets, dtype=np.float64).sum(axis=0)
        ratio = np.where(positives > 0, (len(targets) - positives) / np.maximum(positives, 1), 1.0)
        return np.clip(ratio, 1.0, cap)
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_outputs).astype(np.float64)
    weights = np.where(counts > 0, len(targets) / (num_outputs * np.maximum(counts, 1)), 1.0)
    return np.clip(weights, 1.0 / cap, cap)


def _ema(model: nn.Module, decay: float | None) -> nn.Module | None:
    """timm's ModelEmaV3 with its warm-up (the decay grows with the step, so short runs still average)."""
    if not decay:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def _pretrained_summary(pretrained: str | None) -> str | None:
    """What initialised the backbone, without a path: the hub tag, or the weights file's hash."""
    if not pretrained:
        return None
    if pretrained.lower() in PRETRAINED_HUB:
        return "timm default pretrained weights"
    return f"file sha256 {_sha256(Path(pretrained).read_bytes())}"


def _take(loader: DataLoader, limit: int) -> Iterator[Any]:
    for i, batch in enumerate(loader):
        if i >= limit:
            return
        yield batch


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: TensorBoard is not a dependency
        return None
    return SummaryWriter(str(path))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


__all__ = ["STATE_FILE", "TrainConfig", "Trainer", "train", "train_command"]
