"""One optimisation step as headct trains: the task's loss, a scaled backward per micro-batch, then
unscale, clip, step, schedule.

The ``Trainer`` takes every step through :class:`OptimizerStep` and :func:`task_loss`
with the optimizer :func:`make_optimizer` builds, and ``headct bench --train`` times
exactly these pieces, so a benchmark figure cannot drift from what training does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def task_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str, loss_weights: torch.Tensor,
              smoothing: float, balance: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted BCE (multi-label: sum_c w_c * bce_c / sum_c w_c) or smoothed cross-entropy (multi-class).

    ``balance`` (class balance, ``headct.train.balanced_weights``): BCE ``pos_weight``
    per label, or cross-entropy class weights.
    """
    if kind == "multiclass":
        if targets.dim() == logits.dim():  # one-hot (series datasets) → class indices
            targets = targets.argmax(-1)
        return F.cross_entropy(logits, targets.long(), weight=balance, label_smoothing=smoothing)
    bce = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none", pos_weight=balance)
    return (bce * loss_weights).sum(-1).mean() / loss_weights.sum()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norm weights (1-D parameters), as usual."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else plain).append(p)
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": weight_decay},
                                    {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


class OptimizerStep:
    """Backward per micro-batch (loss / accum, scaled for fp16), then one optimizer step every ``accum``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, clip_grad: float | None = None,
                 accum: int = 1) -> None:
        self.model, self.optimizer, self.scaler, self.scheduler = model, optimizer, scaler, scheduler
        self.clip_grad, self.accum = clip_grad, accum

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one micro-batch's loss."""
        self.scaler.scale(loss / self.accum).backward()

    def step(self) -> None:
        """Clip (when set), step, update the scaler, clear the gradients, advance the schedule."""
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
