"""Tasks: what a model predicts, and how a cache's label columns become its targets.

A cache stores labels as a matrix of 1 / 0 / -1 (unknown), one column per
label name (``Cache.labels``). A task picks or combines those columns:

- ``rsna``: multi-label, the six RSNA labels (loss weight 2 on "any").
- ``presence``: multi-class ["non-stroke", "stroke"]; from one-hot
  non-stroke/hemorrhagic/ischemic columns, or from an "any" column.
- ``subtype``: multi-class ["ischemic", "hemorrhagic"]; non-stroke rows dropped.
- ``3class``: multi-class ["non-stroke", "hemorrhagic", "ischemic"].
- ``a,b,c``: multi-label on those cache label columns.

``Task.targets(label_matrix)`` returns the targets and a mask of the rows the
task can use (rows with unknown or excluded labels are dropped, not guessed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headct.labels import RSNA_LABELS

STROKE_LABELS: tuple[str, ...] = ("non-stroke", "hemorrhagic", "ischemic")
TASK_NAMES: tuple[str, ...] = ("rsna", "presence", "subtype", "3class")


@dataclass(frozen=True)
class Task:
    """A prediction target built from cache label columns.

    ``columns`` are indices into the cache's label matrix; ``rule`` says how
    they turn into targets ("columns", "presence", "presence-any", "subtype",
    "3class").
    """

    name: str
    labels: tuple[str, ...]
    kind: str  # "multilabel" (sigmoid/BCE) | "multiclass" (softmax/CE)
    columns: tuple[int, ...]
    rule: str
    loss_weights: tuple[float, ...]

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def targets(self, label_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cache labels ``[N, L]`` (1/0/-1) → (targets, keep mask ``[N]`` bool).

        Multi-label targets are float32 ``[N, n]``; multi-class targets are
        int64 class indices ``[N]``. Rows where ``keep`` is False carry 0.
        """
        matrix = np.asarray(label_matrix)
        if matrix.ndim != 2:
            raise ValueError(f"label matrix must be [N, L], got shape {matrix.shape}")
        picked = matrix[:, list(self.columns)].astype(np.int64)
        known = (picked >= 0).all(axis=1)
        if self.rule == "columns":
            targets = np.where(known[:, None], picked, 0).astype(np.float32)
            return targets, known
        if self.rule == "presence-any":
            anyhem = picked[:, 0]
            return np.where(known, anyhem, 0).astype(np.int64), known
        # The remaining rules read one-hot (non-stroke, hemorrhagic, ischemic)-style columns.
        one_hot = known & (picked.sum(axis=1) == 1)
        if self.rule == "presence":  # columns: non-stroke, hemorrhagic, ischemic
            stroke = (picked[:, 1] == 1) | (picked[:, 2] == 1)
            return np.where(one_hot, stroke, 0).astype(np.int64), one_hot
        if self.rule == "subtype":  # columns: hemorrhagic, ischemic; classes ischemic=0, hemorrhagic=1
            return np.where(one_hot, picked[:, 0] == 1, 0).astype(np.int64), one_hot
        if self.rule == "3class":  # columns: non-stroke, hemorrhagic, ischemic
            return np.where(one_hot, picked.argmax(axis=1), 0).astype(np.int64), one_hot
        raise ValueError(f"unknown task rule {self.rule!r}")


def get_task(name: str, cache_labels: Sequence[str]) -> Task:
    """The task called ``name`` on a cache whose label columns are ``cache_labels``.

    Raises ValueError naming the missing columns when the cache cannot feed the task.
    """
    labels = list(cache_labels)
    key = name.strip()
    if key == "rsna":
        return Task("rsna", RSNA_LABELS, "multilabel", _columns(key, labels, RSNA_LABELS), "columns",
                    (1.0,) * 5 + (2.0,))
    if key == "presence":
        if all(label in labels for label in STROKE_LABELS):
            cols = _columns(key, labels, STROKE_LABELS)
            return Task(key, ("non-stroke", "stroke"), "multiclass", cols, "presence", (1.0, 1.0))
        if "any" in labels:
            return Task(key, ("non-stroke", "stroke"), "multiclass", (labels.index("any"),), "presence-any",
                        (1.0, 1.0))
        raise ValueError(f"task 'presence' needs columns {list(STROKE_LABELS)} or 'any'; cache has {labels}")
    if key == "subtype":
        cols = _columns(key, labels, ("hemorrhagic", "ischemic"))
        return Task(key, ("ischemic", "hemorrhagic"), "multiclass", cols, "subtype", (1.0, 1.0))
    if key == "3class":
        return Task(key, STROKE_LABELS, "multiclass", _columns(key, labels, STROKE_LABELS), "3class",
                    (1.0, 1.0, 1.0))
    wanted = tuple(part.strip() for part in key.split(",") if part.strip())
    if not wanted:
        raise ValueError(f"empty task name; use one of {', '.join(TASK_NAMES)} or label,label,...")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"task {name!r} names a label twice")
    return Task(",".join(wanted), wanted, "multilabel", _columns(key, labels, wanted), "columns",
                (1.0,) * len(wanted))


def _columns(task: str, labels: list[str], wanted: Sequence[str]) -> tuple[int, ...]:
    missing = [w for w in wanted if w not in labels]
    if missing:
        raise ValueError(f"task {task!r} needs label columns {missing} that the cache lacks (it has {labels})")
    return tuple(labels.index(w) for w in wanted)
