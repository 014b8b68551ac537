"""8-bit PNG/JPG slices (already windowed, e.g. TEKNOFEST) to a uint8 Volume.

One file, a list of files or a folder of slices (natural sort by name) becomes
``[S, H, W]`` uint8. Grey images pass through; RGB whose channels are equal
becomes one channel; true colour is converted to luminance with a warning
(alpha is ignored).
Anything that is not an 8-bit image (16-bit, float, bilevel) is refused: these
images carry no HU, so only an 8-bit windowed rendering is meaningful here.
Slice ids are hashes of the file names, never the names themselves.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from headct.errors import InputError
from headct.io.faults import one_line
from headct.io.privacy import short_hash
from headct.io.volume import Volume

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Volume:
    """Read one 8-bit PNG/JPG, a list of them, or a folder of them as one stack.

    Raises :class:`InputError` naming the file for an unreadable or non-8-bit
    image, or one whose size differs from the first slice's.
    """
    files = _image_files(path)
    slices: list[np.ndarray] = []
    notes: Counter[str] = Counter()
    for file in files:
        grey, warning = _read_grey(file)
        if slices and grey.shape != slices[0].shape:
            raise InputError(
                file,
                f"size {grey.shape[0]}x{grey.shape[1]} differs from the stack's "
                f"{slices[0].shape[0]}x{slices[0].shape[1]} (first slice {files[0].name})",
            )
        if warning:
            notes[warning] += 1
        slices.append(grey)
    logger.debug("%d image slices read from %s", len(slices), path)
    return Volume(
        pixels=np.stack(slices),
        kind="uint8",
        slice_uids=[short_hash(f.name) for f in files],
        warnings=[f"{note} ({n} of {len(files)} slices)" for note, n in notes.items()],
    )


def natural_key(name: str) -> list[object]:
    """Sort key that puts ``slice2`` before ``slice10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _image_files(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(path, str | os.PathLike):
        root = Path(path)
        if root.is_dir():
            files = [
                p for p in root.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            ]  # fmt: skip
            if not files:
                raise InputError(root, f"folder holds no {'/'.join(IMAGE_SUFFIXES)} images")
            return sorted(files, key=lambda p: natural_key(p.name))
        files = [root]
    else:
        files = [Path(p) for p in path]
        if not files:
            raise InputError(None, "empty list of image files")
    for file in files:
        if not file.is_file():
            raise InputError(file, "no such file")
    return files


def _read_grey(file: Path) -> tuple[np.ndarray, str | None]:
    """One image as uint8 [H, W] plus a warning when colour was converted."""
    try:
        with Image.open(file) as image:
            image.load()
            return _to_grey(image, file)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(file, f"not a readable PNG/JPG image ({one_line(exc, file)})") from None


def _to_grey(image: Image.Image, file: Path) -> tuple[np.ndarray, str | None]:
    mode = image.mode
    if mode in ("L", "LA"):
        return np.asarray(image.getchannel("L"), dtype=np.uint8).copy(), None
    if mode in ("RGB", "RGBA", "P", "PA"):
        rgb = image.convert("RGB")
        channels = np.asarray(rgb, dtype=np.uint8)
        if np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(
            channels[..., 0], channels[..., 2]
        ):
            return channels[..., 0].copy(), None
        luminance = np.asarray(rgb.convert("L"), dtype=np.uint8).copy()
        return luminance, "colour image converted to luminance (ITU-R 601-2)"
    raise InputError(
        file,
        f"image mode {mode} is not an 8-bit grey or RGB image; headct reads PNG/JPG only as "
        "8-bit windowed slices (read HU data from DICOM or NIfTI instead)",
    )
