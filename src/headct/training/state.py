"""What a stopped run needs to continue: ``RUN/train_state.pt``, written atomically each epoch.

The file holds the model and optimizer weights, the scheduler and grad-scaler
states, the epoch just finished, the early-stopping bookkeeping and the RNG
states, as plain tensors and containers so it loads with ``weights_only=True``
(no pickled code). Randomness that shapes an epoch (shuffling, augmentation,
dropout) is re-seeded from ``(seed, epoch, rank)`` at the start of every epoch,
so a resumed run repeats an uninterrupted one exactly; the saved RNG states
are restored as well, for anything drawn outside an epoch.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headct import atomic

STATE_FILE = "train_state.pt"
STATE_VERSION = 1


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, epoch, rank, stream), not on history."""
    mixed = np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(2, dtype=np.uint32)
    return int((int(mixed[0]) << 31) ^ int(mixed[1])) & ((1 << 63) - 1)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seed torch/numpy/random for this epoch; return a CPU generator for augmentation."""
    torch.manual_seed(epoch_seed(seed, epoch, rank, 0))
    np.random.seed(epoch_seed(seed, epoch, rank, 1) % (2**32))
    random.seed(epoch_seed(seed, epoch, rank, 2))
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, rank, 3))


def save_train_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus RNG states) to ``run_dir/train_state.pt`` atomically."""
    run_dir = Path(run_dir)
    path = run_dir / STATE_FILE
    payload = dict(state, version=STATE_VERSION, rng=rng_states())
    with atomic.writing(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_train_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``run_dir/train_state.pt`` (weights only) and restore the RNG states."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training state version {state.get('version')} is not {STATE_VERSION}")
    restore_rng_states(state["rng"])
    return state


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as weights-only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _python_state_to_lists(random.getstate()),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _python_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
