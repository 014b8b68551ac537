"""One synthetic head-CT study: HU volume, lesion masks and tissue labels from a seed.

Anatomy comes from a patient seed (follow-up studies of one patient share a
head); pose, scan range, noise and lesions from the study seed. The volume is
rendered slice by slice from the 3-D description, then blurred a little (the
scanner's point spread) and given correlated noise, like a reconstructed CT.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from headct.labels import LESION_BITS
from headct.phantom.anatomy import (
    AIR,
    BRAIN,
    TISSUE_GROUPS,
    HeadAnatomy,
    ShellLesions,
    SliceGrid,
    make_grid,
    render_anatomy,
    sample_anatomy,
    written_into,
)
from headct.phantom.lesions import Lesion, SliceCanvas, noise_factor, sample_lesion

HU_MIN, HU_MAX = -1024.0, 3071.0
"""HU range the phantom keeps (what 12-bit CT with intercept -1024 can store)."""


@dataclass
class PhantomStudy:
    """A generated study, in scan order (feet → head).

    ``hu`` float32 [S, H, W]; ``masks`` uint8 [S, H, W] with :data:`LESION_BITS`;
    ``tissue`` uint8 [S, H, W] with :data:`headct.phantom.TISSUES` (the anatomy
    under any lesion); ``z`` slice heights in mm (head frame, increasing).
    """

    hu: np.ndarray
    masks: np.ndarray
    tissue: np.ndarray
    z: np.ndarray
    pixel_spacing: float
    slice_thickness: float
    lesions: list[Lesion] = field(default_factory=list)
    noise_sd: float = 0.0
    streaks: bool = False
    tilt: float = 0.0  # gantry tilt (degrees): slice k's plane leans about the left-right axis through (0, 0, z[k])
    slice_bits: np.ndarray | None = None  # uint8 [S]: the OR of each slice's mask (computed if not given)

    def __post_init__(self) -> None:
        if self.slice_bits is None:
            self.slice_bits = np.bitwise_or.reduce(self.masks.reshape(self.num_slices, -1), axis=1)

    @property
    def num_slices(self) -> int:
        return int(self.hu.shape[0])

    def tissue_mask(self, group: str) -> np.ndarray:
        """Boolean [S, H, W] of a tissue group name (see ``TISSUE_GROUPS``)."""
        lut = np.zeros(256, dtype=bool)
        lut[list(TISSUE_GROUPS[group])] = True
        return lut[self.tissue]

    def slice_labels(self) -> dict[str, np.ndarray]:
        """Per-slice 0/1 labels from the masks: one per lesion type plus ``any`` (any hemorrhage)."""
        present = self.slice_bits
        labels = {name: ((present & bit) != 0).astype(np.uint8) for name, bit in LESION_BITS.items()}
        bleed = sum(LESION_BITS[n] for n in LESION_BITS if n != "ischemic")
        labels["any"] = ((present & bleed) != 0).astype(np.uint8)
        return labels


class StudyBuffers:
    """Output arrays that :func:`generate_study` reuses from one study to the next.

    A process rendering study after study (``headct phantom``) keeps one, so
    each study is written into memory the previous one used: fresh arrays are
    new pages the kernel must fault in and zero, ~0.3 ms per 512² slice here.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """The buffer ``name`` with this shape and type (contents undefined), made if needed."""
        found = self._arrays.get(name)
        if found is None or found.shape != shape or found.dtype != np.dtype(dtype):
            found = self._arrays[name] = np.empty(shape, dtype=dtype)
        return found

    def release(self) -> None:
        """Let the arrays go (a study rendered into them must not be used after this)."""
        self._arrays.clear()


def default_slices(size: int) -> int:
    """Slices per study when not given: about RSNA's 5 mm spacing at 512, fewer for small images."""
    return int(np.clip(size // 12, 12, 40))


def generate_study(
    seed: int | Sequence[int],
    *,
    size: int = 512,
    slices: int | None = None,
    difficulty: float = 1.0,
    lesions: Sequence[str] = (),
    patient_seed: int | Sequence[int] | None = None,
    streaks: bool | None = None,
    noise: bool = True,
    tilt: float = 0.0,
    buffers: StudyBuffers | None = None,
) -> PhantomStudy:
    """Render one study. Same arguments → identical arrays.

    ``lesions`` lists lesion types (keys of ``LESION_BITS``), at most one of
    each; ``patient_seed`` fixes the head (default: derived from ``seed``);
    ``streaks`` adds skull-base streak artefacts (default: at random);
    ``noise=False`` gives the noise-free, unblurred HU (for tests);
    ``tilt`` (degrees) renders the same head, lesions and noise on planes
    tilted as by a tilted gantry (see :func:`_render_tilted_slice`).
    With ``buffers`` the study's arrays are theirs, overwritten by the next
    study rendered with the same buffers.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if len(set(lesions)) != len(lesions):
        raise ValueError(f"at most one lesion of each type per study, got {list(lesions)}")
    seed_list = [int(seed)] if isinstance(seed, int | np.integer) else [int(x) for x in seed]
    rng = np.random.default_rng(seed_list)
    if patient_seed is None:
        anatomy_rng = np.random.default_rng([*seed_list, 7919])
    else:
        anatomy_rng = np.random.default_rng(patient_seed if isinstance(patient_seed, int | np.integer) else list(patient_seed))
    anatomy = sample_anatomy(anatomy_rng)
    n_slices = slices or default_slices(size)
    if n_slices < 2:
        raise ValueError(f"a study needs at least 2 slices, got {n_slices}")
    if not -45.0 < tilt < 45.0:
        raise ValueError(f"tilt must be within (-45, 45) degrees, got {tilt}")

    fov = float(rng.uniform(215, 250))
    center = (float(rng.uniform(-6, 6)), float(rng.uniform(-8, 8)))
    yaw = float(np.clip(rng.normal(0, 0.07), -0.2, 0.2))
    grid = make_grid(anatomy, size, fov, center, yaw)
    brain_top = anatomy.z_top - anatomy.scalp - anatomy.skull - anatomy.csf
    z_lo = (-41.0 + float(rng.uniform(-3, 3))) * anatomy.scale
    z_hi = brain_top - float(rng.uniform(8, 14))
    z = np.linspace(z_lo, z_hi, n_slices)
    gap = float(z[1] - z[0])

    found = [sample_lesion(kind, rng, anatomy, difficulty, gap) for kind in lesions]
    sd = float(rng.uniform(3.0, 5.5)) * noise_factor(difficulty)
    with_streaks = bool(rng.random() < 0.3) if streaks is None else bool(streaks)
    noise_seed = int(rng.integers(2**31))

    buffers = buffers or StudyBuffers()
    shape = (n_slices, size, size)
    hu, tissue = buffers.array("hu", shape, np.float32), buffers.array("tissue", shape, np.uint8)
    masks = buffers.array("masks", shape, np.uint8)
    masks.fill(0)
    head = grid.head  # outside it is uniform air: nothing to blur
    noise_rng = np.random.default_rng([noise_seed, 2])
    bank = _NoiseBank(size, sd, noise_rng) if noise else None
    streaker = _Streaks(grid, anatomy, np.random.default_rng([noise_seed, 1])) if noise and with_streaks else None
    planes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    air = anatomy.hu[AIR]
    # an axial slice is rendered in the head box; the frame around it is air, filled here
    frame = [] if tilt else _frame(head, size)
    low, high = bank.range if bank is not None else (0.0, 0.0)
    clipped = head if not tilt and air + low >= HU_MIN and air + high <= HU_MAX else (slice(None), slice(None))
    for k, height in enumerate(z):
        image = hu[k]
        if tilt:
            _render_tilted_slice(anatomy, grid, float(height), found, tilt, planes, image, masks[k], tissue[k])
        else:
            _render_slice(anatomy, grid, float(height), found, image, masks[k], tissue[k])
        for strip in frame:
            image[strip] = air
        if bank is not None:  # the scanner: point spread, skull-base streaks, correlated noise
            _blur_slice(image[head])
            if streaker is not None:
                streaker.add(image, tissue[k], float(height))
            image += bank.window(noise_rng)
        np.clip(image[clipped], HU_MIN, HU_MAX, out=image[clipped])  # the frame, air plus noise, is in range
    slice_bits = np.bitwise_or.reduce(masks.reshape(n_slices, -1), axis=1)
    present = int(np.bitwise_or.reduce(slice_bits))
    kept = [lesion for lesion in found if present & lesion.bit]
    return PhantomStudy(hu, masks, tissue, z.astype(np.float64), grid.pixel, gap, kept, sd if noise else 0.0,
                        with_streaks and noise, float(tilt), slice_bits)


def _render_slice(anatomy: HeadAnatomy, grid: SliceGrid, z: float, lesions: list[Lesion],
                  hu: np.ndarray, mask: np.ndarray, tissue: np.ndarray) -> None:
    """One axial slice at height z: every tissue label and lesion bit, HU in the head box (outside it: the caller's)."""
    shell = ShellLesions()
    for lesion in lesions:
        thickness = lesion.extra_axial(grid, z)
        if thickness is not None:
            shell.extra_axial.append((lesion.bit, thickness))
        on = lesion.subarachnoid(grid, z)
        if on is not None and on.any():
            shell.subarachnoid.append((lesion.bit, on))
    # epidural blood lies outside the dura, subdural inside it
    shell.extra_axial.sort(key=lambda item: item[0] != LESION_BITS["epidural"])
    labels, bits = render_anatomy(anatomy, grid, z, shell, out=tissue)
    _label_hu(labels[grid.head], anatomy.hu, hu[grid.head])
    if bits is not None:
        mask[...] = bits
        box_bits, box_hu = bits[grid.head], hu[grid.head]  # shell lesions lie inside the head box
        for lesion in lesions:
            if lesion.kind in ("epidural", "subdural", "subarachnoid"):
                box_hu[(box_bits & np.uint8(lesion.bit)) != 0] = lesion.hu
    canvas = SliceCanvas(grid, z, labels, hu, mask)
    for lesion in sorted(lesions, key=lambda les: les.kind != "ischemic"):
        lesion.paint(canvas)


def _frame(head: tuple[slice, slice], size: int) -> list[tuple[slice, slice]]:
    """The strips of a size x size image around the head box: above, below, left, right."""
    rows, cols = head
    return [(slice(0, rows.start), slice(None)), (slice(rows.stop, size), slice(None)),
            (rows, slice(0, cols.start)), (rows, slice(cols.stop, size))]


def _label_hu(labels: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = table[labels]`` for uint8 labels: cv2.LUT does it ~6x faster than ndarray.take."""
    lut = np.zeros(256, dtype=np.float32)
    lut[:table.shape[0]] = table
    written_into(cv2.LUT(labels, lut, dst=out), out)


TILT_HEIGHT_STEP = 0.25
"""mm: a tilted slice's rows are rendered from axial planes at heights rounded to this step."""


def _render_tilted_slice(anatomy: HeadAnatomy, grid: SliceGrid, z: float, lesions: list[Lesion], tilt: float,
                         planes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
                         hu: np.ndarray, mask: np.ndarray, tissue: np.ndarray) -> None:
    """One slice of a tilted-gantry acquisition: a plane through (0, 0, z) leaning by ``tilt`` about X.

    Row r lies ``o = (r - centre) * pixel`` mm from the centre along the tilted
    column direction (0, cos t, sin t): at image y ``o cos t`` and height
    ``z + o sin t``. Each row is taken from the axial plane rendered at that
    height (rounded to :data:`TILT_HEIGHT_STEP`; planes are shared between
    slices and dropped once below every later slice), linearly interpolated
    between the two grid rows around ``o cos t`` (HU; labels nearest).
    """
    size = grid.size
    centre = (size - 1) / 2
    offsets = (np.arange(size) - centre) * grid.pixel
    sin, cos = math.sin(math.radians(tilt)), math.cos(math.radians(tilt))
    lattice = np.rint((z + offsets * sin) / TILT_HEIGHT_STEP).astype(int)
    for key in [key for key in planes if key < lattice.min()]:
        del planes[key]
    source = (np.arange(size) - centre) * cos + centre
    j0 = np.clip(np.floor(source).astype(int), 0, size - 2)
    frac = (source - j0).astype(np.float32)
    nearest = np.rint(source).astype(int)
    for r, key in enumerate(lattice):
        if key not in planes:
            plane = (np.full((size, size), anatomy.hu[AIR]), np.zeros((size, size), np.uint8), np.empty((size, size), np.uint8))
            _render_slice(anatomy, grid, key * TILT_HEIGHT_STEP, lesions, *plane)
            planes[key] = plane
        plane_hu, plane_mask, plane_tissue = planes[key]
        hu[r] = plane_hu[j0[r]] * (1 - frac[r]) + plane_hu[j0[r] + 1] * frac[r]
        mask[r] = plane_mask[nearest[r]]
        tissue[r] = plane_tissue[nearest[r]]


_BINOMIAL = np.array([0.25, 0.5, 0.25], dtype=np.float32)


def _blur_slice(image: np.ndarray) -> None:
    """In-place 3x3 binomial blur (1, 2, 1)/4 per axis of one slice: the scanner's mild point spread.

    cv2's separable filter writes into ``image`` (also a strided view) and is
    ~6x faster than the numpy passes this was; edges replicate their pixels
    (a slice's head box is framed by air, so its edges are uniform anyway).
    """
    written_into(cv2.sepFilter2D(image, -1, _BINOMIAL, _BINOMIAL, dst=image, borderType=cv2.BORDER_REPLICATE), image)


class _NoiseBank:
    """One blurred noise field 1.25x the slice, scaled to ``sd``; slices take windows of it.

    A window is randomly flipped, so slices do not repeat. The field is kept
    twice, as drawn and mirrored left-right, so that every window, flipped or
    not, runs forward along its rows: adding a reversed-row view to a slice
    took ~2.5x as long.
    """

    def __init__(self, size: int, sd: float, rng: np.random.Generator) -> None:
        side = size + size // 4  # windows shift by up to a quarter slice (the draw is ~60% of the field's cost)
        bank = rng.standard_normal((side, side), dtype=np.float32)
        _blur_slice(bank)
        bank *= np.float32(sd / max(float(bank.std()), 1e-6))
        self.size, self.bank, self.mirrored = size, bank, np.ascontiguousarray(bank[:, ::-1])

    def window(self, rng: np.random.Generator) -> np.ndarray:
        """A size x size view: the next random window (values as ``bank[rows, cols]`` flipped as drawn)."""
        size = self.size
        shift = self.bank.shape[0] - size
        row, col, flip = (int(v) for v in rng.integers(0, [shift + 1, shift + 1, 4]))
        if flip & 2:  # columns reversed: the same values, read forward from the mirrored copy
            col = self.bank.shape[1] - col - size
        window = (self.mirrored if flip & 2 else self.bank)[row:row + size, col:col + size]
        return window[::-1] if flip & 1 else window

    @property
    def range(self) -> tuple[float, float]:
        """The smallest and largest noise value."""
        return float(self.bank.min()), float(self.bank.max())


class _Streaks:
    """Skull-base artefacts: thin radial streaks and a dark band between the petrous bones."""

    def __init__(self, grid: SliceGrid, anatomy: HeadAnatomy, rng: np.random.Generator) -> None:
        self.grid, self.anatomy, self.rng = grid, anatomy, rng
        self.top = -12.0 * anatomy.scale
        self.t_idx: np.ndarray | None = None
        self.band: np.ndarray | None = None
        self.brain = np.zeros(256, dtype=np.uint8)  # a cv2.LUT table: 1 on brain labels
        self.brain[list(BRAIN)] = 1

    def add(self, image: np.ndarray, tissue: np.ndarray, z: float) -> None:
        if z >= self.top:
            return
        grid, s = self.grid, self.anatomy.scale
        head = grid.head  # brain lies inside the head box: the streaks are computed there only
        if self.t_idx is None:
            self.t_idx = grid.head_flat % grid.n_theta
            self.band = np.float32(12.0) * (np.exp(-(((grid.Y[head] - np.float32(8.0 * s)) / np.float32(6.0)) ** 2))
                                            * (np.abs(grid.X[head]) < 40 * s)).astype(np.float32)
        strength = float(np.clip((self.top - z) / (15.0 * s), 0.2, 1.0))
        theta = grid.theta_centers
        lut = np.zeros_like(theta)
        for center, amp in zip(self.rng.uniform(-math.pi, math.pi, size=6),
                               self.rng.choice([-1.0, 1.0], size=6) * self.rng.uniform(6, 14, size=6), strict=True):
            d = (theta - np.float32(center) + np.float32(math.pi)) % np.float32(2 * math.pi) - np.float32(math.pi)
            lut += np.float32(amp) * np.exp(-((d / np.float32(0.012)) ** 2))
        inside = cv2.LUT(tissue[head], self.brain).view(bool)
        streak = lut.take(self.t_idx)
        streak -= self.band  # the dark band, 12 HU deep at its centre
        streak *= np.float32(strength)
        box = image[head]
        np.add(box, streak, out=box, where=inside)
