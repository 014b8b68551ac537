"""A montage of the phantom: one row per lesion type (plus a normal head), slices across.

Rows show one study each in the brain window (40/80) with the lesion mask
outlined in the type's colour; the normal row runs from skull base to vertex,
lesion rows through the lesion. The last column is the middle slice again in
the bone window (500/2000), where the skull's diploë shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headct.labels import LESION_BITS
from headct.phantom.generator import generate_study
from headct.phantom.writers import brain_window_png, write_png

COLOURS: dict[str, tuple[int, int, int]] = {
    "epidural": (255, 64, 64),
    "intraparenchymal": (255, 160, 0),
    "intraventricular": (255, 240, 0),
    "subarachnoid": (0, 220, 255),
    "subdural": (255, 64, 255),
    "ischemic": (64, 255, 64),
}


def render_preview(path: str | Path, *, seed: int = 0, size: int = 256, columns: int = 6,
                   difficulty: float = 1.0) -> np.ndarray:
    """Write the montage PNG to ``path`` and return it (uint8 [H, W, 3])."""
    rows = [_row("normal", seed, size, columns, difficulty)]
    rows += [_row(kind, seed + 1 + i, size, columns, difficulty) for i, kind in enumerate(LESION_BITS)]
    montage = np.concatenate(rows, axis=0)
    write_png(Path(path), montage)
    return montage


def _row(kind: str, seed: int, size: int, columns: int, difficulty: float) -> np.ndarray:
    from headct.windows import apply_windows  # imports torch: kept out of `import headct.phantom`

    lesions = () if kind == "normal" else (kind,)
    study = generate_study([seed, 4242], size=size, difficulty=difficulty, lesions=lesions, streaks=False)
    n = study.num_slices
    if lesions:
        on = np.flatnonzero(study.masks.reshape(n, -1).any(axis=1))
        low, high = (int(on.min()), int(on.max())) if on.size else (0, n - 1)
        if high - low + 1 < columns:  # show a little context around short lesions
            pad = (columns - (high - low + 1) + 1) // 2
            low, high = max(low - pad, 0), min(high + pad, n - 1)
        picks = np.linspace(low, high, columns).round().astype(int)
    else:
        picks = np.linspace(1, n - 2, columns).round().astype(int)
    tiles = [_tile(study.hu[k], study.masks[k]) for k in picks]
    bone = np.rint(apply_windows(study.hu[picks[columns // 2]], ["bone"])[0] * 255).astype(np.uint8)
    tiles.append(np.repeat(bone[:, :, None], 3, axis=2))
    label = _label(kind, size)
    return np.concatenate([label, *tiles], axis=1)


def _tile(hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # imported here: scipy costs ~0.2 s to import, which headct phantom without --preview skips
    from scipy import ndimage

    grey = brain_window_png(hu)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for name, bit in LESION_BITS.items():
        inside = (mask & np.uint8(bit)) != 0
        if inside.any():
            edge = inside & ~ndimage.binary_erosion(inside)
            rgb[edge] = COLOURS[name]
    return rgb


def _label(text: str, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    width = max(size // 2, 96)
    image = Image.new("RGB", (width, size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    colour = COLOURS.get(text, (255, 255, 255))
    draw.text((6, size // 2 - 6), text, fill=colour)
    return np.asarray(image)
