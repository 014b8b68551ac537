"""Normal head anatomy for the phantom: a 3-D description per head, rendered slice by slice.

The head lives in a head frame in mm: X toward the patient's left, Y toward the
back, Z up (skull base → vertex). Everything organised around the skull (scalp,
outer table, diploë, inner table, CSF, a cortical ribbon with gyri and sulci,
white matter) depends only on the angle around Z, the radius and the height,
so each slice renders it into a small polar table (angle × radius) that one
gather maps onto the pixel grid. Compact deep structures (ventricles, basal
ganglia, thalami, brainstem, cerebellum, cisterns, fissures, orbits, skull-base
bone and sinuses) are superellipsoids drawn into their own bounding boxes.
Both are plain vectorised numpy on float32; no per-pixel Python.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

TISSUES: dict[str, int] = {
    "air": 0,
    "soft_tissue": 1,
    "bone": 2,  # outer table and skull-base bone
    "diploe": 3,
    "inner_table": 4,
    "csf": 5,  # over the convexity
    "sulcal_csf": 6,
    "gray": 7,
    "white": 8,
    "deep_gray": 9,
    "ventricle": 10,
    "cistern": 11,  # basal cisterns and the Sylvian and interhemispheric fissures
    "fat": 12,
    "globe": 13,
    "lens": 14,
    "dura": 15,
}
"""Tissue label per voxel (the ``tissue`` volume of a generated study).

The first nine are also the polar shell's layer codes: the number of nested
surfaces (skin, outer table, diploë, inner table, dura, brain) a point lies
inside, plus one past the sulcal CSF and one past the cortex.
"""

TISSUE_GROUPS: dict[str, tuple[int, ...]] = {
    "air": (0,),
    "scalp": (1,),
    "skull": (2, 3, 4),
    "skull_tables": (2, 4),
    "diploe": (3,),
    "csf": (5, 6, 10, 11),
    "gray": (7,),
    "white": (8,),
    "deep_gray": (9,),
    "ventricle": (10,),
    "cistern": (11,),
    "fat": (12,),
    "globe": (13,),
}
"""Named groups of tissue labels, e.g. all CSF spaces (sulci, ventricles, cisterns)."""

(AIR, SOFT, BONE, DIPLOE, INNER, CSF, SULCUS, GRAY, WHITE, DEEP, VENTRICLE, CISTERN,
 FAT, GLOBE, LENS, DURA) = range(16)
N_LABELS = 16

PARENCHYMA = (GRAY, WHITE, DEEP)
BRAIN = (GRAY, WHITE, DEEP, CSF, SULCUS, CISTERN)
EXTRACRANIAL = (SOFT, BONE, DIPLOE, INNER)
NOT_AIR = tuple(range(1, N_LABELS))


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: a grid's stencil cache is keyed by blob
class Blob:
    """A superellipsoid structure in the head frame (mm), painted where its gate allows.

    ``slope`` tilts it: the centre moves by (dX/dZ, dY/dZ) per mm of height.
    ``gate`` lists the labels it may overwrite, which keeps brain structures
    inside the skull and orbits inside the face.
    """

    label: int
    center: tuple[float, float, float]
    axes: tuple[float, float, float]
    yaw: float = 0.0
    power: float = 2.0
    slope: tuple[float, float] = (0.0, 0.0)
    gate: tuple[int, ...] = BRAIN
    texture: str | None = None

    def section(self, z: float) -> tuple[float, float, float, float] | None:
        """(x, y, a, b) of the cross-section at height z, or None when it misses."""
        dz = abs(z - self.center[2]) / self.axes[2]
        if dz >= 1.0:
            return None
        scale = (1.0 - dz**self.power) ** (1.0 / self.power)
        x = self.center[0] + self.slope[0] * (z - self.center[2])
        y = self.center[1] + self.slope[1] * (z - self.center[2])
        return x, y, self.axes[0] * scale, self.axes[1] * scale


@dataclass
class HeadAnatomy:
    """One head: outline, layer thicknesses, gyral pattern, tissue HU and deep structures.

    Sampled once per patient (follow-up studies of a patient share it).
    """

    a: float  # outer half-width (left-right), mm
    b: float  # outer half-length (front-back), mm
    shape_k: np.ndarray  # outline Fourier harmonics
    shape_amp: np.ndarray
    shape_phase: np.ndarray
    z_wide: float  # height of the widest section
    z_top: float  # skin at the vertex
    z_orbit_roof: float
    scalp: float
    skull: float
    outer_table: float
    inner_table: float
    csf: float
    cortex: float
    atrophy: float
    sulcus_m: np.ndarray
    sulcus_n: np.ndarray
    sulcus_phase: np.ndarray
    sulcus_amp: np.ndarray
    sulcus_depth: float
    sulcus_halfwidth: float
    depth_m: np.ndarray
    depth_n: np.ndarray
    depth_phase: np.ndarray
    hu: np.ndarray  # float32 [N_LABELS], mean HU per tissue label
    blobs: list[Blob] = field(default_factory=list)
    scale: float = 1.0

    def outline(self, theta: np.ndarray) -> np.ndarray:
        """Skin radius (mm) at the widest level for angles theta (0 = front, +pi/2 = left)."""
        ellipse = 1.0 / np.sqrt((np.sin(theta) / self.a) ** 2 + (np.cos(theta) / self.b) ** 2)
        bumps = 1.0 + np.sum(
            self.shape_amp[:, None] * np.cos(self.shape_k[:, None] * theta[None, :] + self.shape_phase[:, None]),
            axis=0,
        )
        occiput = 1.0 + 0.03 * np.exp(-(((np.abs(theta) - math.pi) / 0.55) ** 2))
        return (ellipse * bumps * occiput).astype(np.float32)

    def angle_terms(self, theta: np.ndarray) -> AngleTerms:
        """The shell's height-independent terms at angles theta (a grid's table angles): once per study."""
        temporal = np.exp(-(((np.abs(theta) - math.pi / 2) / 0.45) ** 2))
        occipital = np.exp(-(((np.abs(theta) - math.pi) / 0.35) ** 2))
        waves = np.concatenate([self.sulcus_m, self.depth_m, np.float32(1.7) * self.depth_m])[:, None] * theta[None, :]
        return AngleTerms(
            temporal=temporal,
            skull=self.skull * (1.0 - 0.35 * temporal) + 2.0 * self.scale * occipital,
            face=np.exp(-((theta / 0.8) ** 4)),
            waves=np.concatenate([np.cos(waves), np.sin(waves)]).astype(np.float32),
        )

    def skull_thickness(self, angles: AngleTerms, z: float) -> np.ndarray:
        """Skull thickness (mm) per angle at height z: thin temporal squama, thick face below the orbit roofs."""
        t = angles.skull
        below = np.float64(min(max((self.z_orbit_roof - z) / (8.0 * self.scale), 0.0), 1.0))
        if below > 0:  # the middle cranial fossa floor: thicker bone laterally at the base
            t = t + below * 4.0 * self.scale * angles.temporal
        return t.astype(np.float32)

    def soft_thickness(self, angles: AngleTerms, z: float) -> np.ndarray:
        """Scalp thickness (mm) per angle; below the orbit roofs the face (orbits, sinuses) sits in front."""
        t = np.full(angles.face.shape, self.scalp, dtype=np.float32)
        below = np.float64(min(max((self.z_orbit_roof - z) / (6.0 * self.scale), 0.0), 1.0))
        if below > 0:
            t = t + below * 38.0 * self.scale * angles.face
        return t.astype(np.float32)

    def dome(self, z: float, depth: np.ndarray | float) -> np.ndarray:
        """In-plane shrink factor at height z for the surface ``depth`` mm under the skin."""
        half_height = (self.z_top - self.z_wide) - np.asarray(depth, dtype=np.float32)
        if z <= self.z_wide:
            below = (self.z_wide - z) / (70.0 * self.scale)
            return np.broadcast_to(np.float32(1.0 - 0.07 * below * below), np.shape(half_height))
        ratio = (z - self.z_wide) / np.maximum(half_height, 1e-3)
        return np.sqrt(np.clip(1.0 - ratio * ratio, 0.0, None)).astype(np.float32)

    def sulci(self, angles: AngleTerms, z: float, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Arc distance (mm) to the nearest sulcus and that sulcus's depth, per angle.

        Sulci are the zero lines of a smooth random field on (angle, height), so
        they continue from slice to slice; the distance is F / |dF/ds| (signed,
        so a sulcus can lean as it goes deeper). Returns (signed distance,
        depth, lean per mm of depth). Each wave cos(m theta + c(z)) is expanded as
        cos(m theta) cos c - sin(m theta) sin c: the angle terms are the grid's,
        so a slice costs one small matrix product instead of ~30 cosines per angle.
        """
        phase = np.concatenate([self.sulcus_n * z + self.sulcus_phase, self.depth_n * z + self.depth_phase,
                                np.float32(1.7) * (self.depth_n * z + self.depth_phase) + np.float32(1.0)]).astype(np.float64)
        cos, sin = np.cos(phase), np.sin(phase)
        n_s, n_d = len(self.sulcus_m), len(self.depth_m)
        amp, slope = self.sulcus_amp.astype(np.float64), (self.sulcus_amp * self.sulcus_m).astype(np.float64)
        sulcus, depth_wave, lean_wave = slice(0, n_s), slice(n_s, n_s + n_d), slice(n_s + n_d, n_s + 2 * n_d)
        rows = len(phase)
        weights = np.zeros((4, 2 * rows))
        weights[0, sulcus], weights[0, rows:][sulcus] = amp * cos[sulcus], -amp * sin[sulcus]  # F = sum a cos(.)
        weights[1, sulcus], weights[1, rows:][sulcus] = slope * sin[sulcus], slope * cos[sulcus]  # dF/dtheta (- sign)
        weights[2, depth_wave], weights[2, rows:][depth_wave] = cos[depth_wave] / n_d, -sin[depth_wave] / n_d
        weights[3, lean_wave], weights[3, rows:][lean_wave] = sin[lean_wave] / n_d, cos[lean_wave] / n_d
        f, df, g, lean = weights.astype(np.float32) @ angles.waves
        floor = 0.25 * float(np.sqrt(np.sum((self.sulcus_amp * self.sulcus_m) ** 2)))
        distance = f / np.maximum(np.abs(df), np.float32(floor)) * radius * np.sign(df)
        depth = np.float32(self.sulcus_depth) * np.clip(np.float32(0.55) + np.float32(0.9) * g, np.float32(0.15), np.float32(1.3))
        return distance.astype(np.float32), depth, np.float32(0.9) * lean


@dataclass(frozen=True)
class AngleTerms:
    """Per-angle terms of a head's shell that do not change with height (see :meth:`HeadAnatomy.angle_terms`)."""

    temporal: np.ndarray  # temporal squama weight
    skull: np.ndarray  # skull thickness (mm) above the skull base
    face: np.ndarray  # the face's weight in front, below the orbit roofs
    waves: np.ndarray  # float32 [2 * waves, n_theta]: cos then sin of each sulcus and depth wave's m * theta


@dataclass
class SliceGrid:
    """A study's pixel grid expressed in its head's frame, plus the polar lookup for the shell.

    Pose (field of view, head offset, yaw) is per study; the tables depend on
    the head outline, so a grid belongs to one (anatomy, pose) pair.
    """

    size: int
    pixel: float  # mm
    center: tuple[float, float]  # head centre in image mm
    yaw: float
    X: np.ndarray  # float32 [H, W] head-frame mm
    Y: np.ndarray
    theta: np.ndarray  # float32 [H, W]
    u: np.ndarray  # float32 [H, W] radius / outline(theta)
    theta_centers: np.ndarray  # float32 [n_theta]
    outline: np.ndarray  # float32 [n_theta] skin radius at the widest level
    radius_table: np.ndarray  # float32 [n_u, n_theta] radius (mm) of each table cell (see :func:`make_grid`)
    du: float
    head: tuple[slice, slice]  # rows and columns that can hold anything but air (see :func:`head_box`)
    head_flat: np.ndarray  # intp [head rows, head columns]: each pixel's cell in a [n_u, n_theta] table
    angles: AngleTerms  # the head's height-independent shell terms at theta_centers
    stencils: dict[Blob, BlobStencil | None] = field(default_factory=dict, repr=False, compare=False)
    textures: dict[Blob, tuple[tuple[slice, slice], np.ndarray]] = field(default_factory=dict, repr=False, compare=False)
    _scratch: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_theta(self) -> int:
        return int(self.theta_centers.shape[0])

    @property
    def n_u(self) -> int:
        return int(self.radius_table.shape[0])

    def scratch(self, name: str, dtype: type) -> np.ndarray:
        """A work table [n_u, n_theta] kept for the grid's slices (contents undefined): no fresh pages per slice."""
        found = self._scratch.get(name)
        if found is None:
            found = self._scratch[name] = np.empty(self.radius_table.shape, dtype=dtype)
        return found

    def box(self, x: float, y: float, half_x: float, half_y: float | None = None) -> tuple[slice, slice] | None:
        """Pixel slices covering the head-frame rectangle (x ± half_x, y ± half_y) mm; None if off-image."""
        half_y = half_x if half_y is None else half_y
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        xi = self.center[0] + c * x - s * y
        yi = self.center[1] + s * x + c * y
        half = self.size / 2.0
        col = xi / self.pixel + half - 0.5
        row = yi / self.pixel + half - 0.5
        reach_c = (abs(c) * half_x + abs(s) * half_y) / self.pixel + 1.5
        reach_r = (abs(s) * half_x + abs(c) * half_y) / self.pixel + 1.5
        r0, r1 = max(int(row - reach_r), 0), min(int(row + reach_r) + 2, self.size)
        c0, c1 = max(int(col - reach_c), 0), min(int(col + reach_c) + 2, self.size)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)


def make_grid(anatomy: HeadAnatomy, size: int, fov: float, center: tuple[float, float], yaw: float) -> SliceGrid:
    """Head-frame coordinates and the polar lookup for one study's pose."""
    pixel = fov / size
    axis = ((np.arange(size, dtype=np.float32) + 0.5) - size / 2.0) * np.float32(pixel)
    xi = axis[None, :] - np.float32(center[0])
    yi = axis[:, None] - np.float32(center[1])
    c, s = np.float32(math.cos(yaw)), np.float32(math.sin(yaw))
    X = c * xi + s * yi  # float32 throughout: no copies to convert
    Y = -s * xi + c * yi
    theta = np.arctan2(X, -Y)
    radius = np.hypot(X, Y)

    outline_max = float(anatomy.outline(np.linspace(-math.pi, math.pi, 720, dtype=np.float32)).max())
    n_theta = int(np.clip(math.ceil(2 * math.pi * outline_max / (1.5 * pixel)), 256, 2048))
    du = min(1.0 * pixel / outline_max, 0.02)
    n_u = int(math.ceil(1.0 / du)) + 2
    theta_centers = (-math.pi + (np.arange(n_theta, dtype=np.float32) + 0.5) * (2 * math.pi / n_theta)).astype(np.float32)
    outline = anatomy.outline(theta_centers)

    # theta + pi >= 0, so the cast's truncation is the floor
    t_idx = ((theta + np.float32(math.pi)) * np.float32(n_theta / (2 * math.pi))).astype(np.intp)
    t_idx[t_idx >= n_theta] -= n_theta  # the angle pi itself lands one past the end: wrap it (a modulo, cheaper)
    u = radius / outline[t_idx]
    head = head_box(u, du)
    # table cell of each pixel in the head box (beyond it all is air)
    u_idx = np.minimum((u[head] * np.float32(1.0 / du)).astype(np.intp), n_u - 1)
    head_flat = u_idx * n_theta + t_idx[head]
    u_centers = (np.arange(n_u, dtype=np.float32) + 0.5) * np.float32(du)
    # the shell's tables are [n_u, n_theta], a row per radius: per-angle values broadcast along
    # rows of ~900 angles; [n_theta, n_u] made numpy loop over 900 short rows (~5x slower per pass)
    radius_table = u_centers[:, None] * outline[None, :]
    return SliceGrid(size, pixel, center, yaw, X, Y, theta, u, theta_centers, outline, radius_table, du, head, head_flat,
                     anatomy.angle_terms(theta_centers))


def head_box(u: np.ndarray, du: float) -> tuple[slice, slice]:
    """Pixel rows and columns that can hold anything but air, with a 2-pixel margin.

    Outside it every pixel lies beyond the widest skin outline (``u`` > 1 + 3 table
    cells), where the shell is air and no structure is drawn.
    """
    size = u.shape[0]
    inside = u < np.float32(1.0 + 3.0 * du)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return slice(0, size), slice(0, u.shape[1])
    return (slice(max(int(rows[0]) - 2, 0), min(int(rows[-1]) + 3, size)),
            slice(max(int(cols[0]) - 2, 0), min(int(cols[-1]) + 3, u.shape[1])))


@dataclass
class ShellLesions:
    """What lesions contribute to the polar shell at one height.

    ``extra_axial``: (bit, thickness per table angle in mm), outermost first
    (epidural before subdural). ``subarachnoid``: (bit, bool per angle) marks
    angles whose surface and sulcal CSF is blood.
    """

    extra_axial: list[tuple[int, np.ndarray]] = field(default_factory=list)
    subarachnoid: list[tuple[int, np.ndarray]] = field(default_factory=list)


def render_anatomy(anatomy: HeadAnatomy, grid: SliceGrid, z: float, shell: ShellLesions | None = None,
                   out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Tissue labels (uint8 [H, W], into ``out`` if given) at height z, and the shell lesions' bits (or None)."""
    labels_table, bits_table = _shell_table(anatomy, grid, z, shell)
    labels = np.empty((grid.size, grid.size), dtype=np.uint8) if out is None else out
    labels.fill(AIR)  # beyond the head box the shell is air: the table is read only inside it
    labels[grid.head] = labels_table.ravel().take(grid.head_flat, mode="clip")  # "clip": unbuffered, indices valid
    bits = None
    if bits_table is not None:
        bits = np.zeros((grid.size, grid.size), dtype=np.uint8)
        bits[grid.head] = bits_table.ravel().take(grid.head_flat, mode="clip")
    for blob in anatomy.blobs:
        if abs(z - blob.center[2]) < blob.axes[2]:
            paint_blob(blob, z, grid, labels)
    return labels, bits


def paint_blob(blob: Blob, z: float, grid: SliceGrid, labels: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Draw ``blob``'s section at height z into ``labels``; returns (box, painted mask) or None."""
    if blob.texture is None and blob.slope == (0.0, 0.0):  # most blobs: their stencil, no call chain (~15 a slice)
        stencil, dz = _stencil(blob, grid), abs(z - blob.center[2]) / blob.axes[2]
        if stencil is None or dz >= 1.0:
            return None
        sub = labels[stencil.box]
        inside = stencil.q0 < np.float32(1.0 - dz**blob.power)
        inside &= cv2.LUT(sub, _gate_lut(blob.gate)).view(bool)
        np.copyto(sub, np.uint8(blob.label), where=inside)
        return stencil.box, inside
    found = _blob_section(blob, z, grid)
    if found is None:
        return None
    box, inside, q = found
    sub = labels[box]
    inside &= cv2.LUT(sub, _gate_lut(blob.gate)).view(bool)  # gate[sub], ~8x faster (no intp index copy)
    if blob.texture == "folia":  # cerebellar folia: thin CSF arcs around the fourth ventricle, a white-matter core
        sub[inside] = blob.label
        sub[inside & _texture(blob, box, grid) & (q() > 0.15)] = WHITE
        return box, inside
    if blob.texture == "cells":  # air cells (ethmoid, mastoid): thin bony septa on a ~4 mm lattice
        sub[inside] = blob.label
        sub[inside & _texture(blob, box, grid)] = BONE
        return box, inside
    np.copyto(sub, np.uint8(blob.label), where=inside)
    return box, inside


def _texture(blob: Blob, box: tuple[slice, slice], grid: SliceGrid) -> np.ndarray:
    """A textured blob's pattern in ``box`` (folia: the white-matter arcs; cells: the bony septa).

    The pattern does not change with height: kept per grid and box (a textured blob's box is its
    stencil's), instead of ~0.2 ms of cosines per blob and slice.
    """
    cached = grid.textures.get(blob)
    if cached is not None and cached[0] == box:
        return cached[1]
    X, Y = grid.X[box], grid.Y[box]
    if blob.texture == "folia":
        period = max(3.2, 2.2 * grid.pixel)
        dy = Y - np.float32(blob.center[1] - 0.8 * blob.axes[1])
        pattern = np.cos(np.hypot(X, dy) * np.float32(2 * math.pi / period)) > 0.8
    else:
        pattern = (np.abs(np.sin(X * np.float32(math.pi / 4.0))) < 0.2) | (np.abs(np.sin(Y * np.float32(math.pi / 3.6))) < 0.2)
    grid.textures[blob] = (box, pattern)
    return pattern


@dataclass(frozen=True)
class BlobStencil:
    """An upright blob's widest section on one grid: its box and each pixel's ``q`` there.

    Every section of a superellipsoid without slope is its widest one scaled by
    ``s = (1 - |dz|**p)**(1/p)`` about the same centre, so at height z a pixel
    is inside where ``q0 < s**p = 1 - |dz|**p``: one comparison per slice
    instead of recomputing the rotated, normalised coordinates.
    """

    box: tuple[slice, slice]
    q0: np.ndarray  # float32: normalised superellipse radius (to the power p) in the widest section


def _blob_section(blob: Blob, z: float, grid: SliceGrid) -> tuple[tuple[slice, slice], np.ndarray, Callable[[], np.ndarray]] | None:
    """(box, inside mask, q) of a blob's section at height z; ``q()`` computes the normalised radius²."""
    if blob.slope != (0.0, 0.0):  # the centre moves with z: sections are not nested
        found = blob_section_mask(blob, z, grid)
        return None if found is None else (found[0], found[1], lambda: found[2])
    stencil = _stencil(blob, grid)
    dz = abs(z - blob.center[2]) / blob.axes[2]
    if stencil is None or dz >= 1.0:
        return None
    limit = np.float32(1.0 - dz**blob.power)
    return stencil.box, stencil.q0 < limit, lambda: stencil.q0 / limit


def _stencil(blob: Blob, grid: SliceGrid) -> BlobStencil | None:
    """The grid's stencil of an upright blob (made on first use), None if its widest section is off the image."""
    stencil = grid.stencils.get(blob, _MISSING)
    if stencil is _MISSING:
        widest = blob_section_mask(blob, blob.center[2], grid)
        stencil = grid.stencils[blob] = None if widest is None else BlobStencil(widest[0], widest[2])
    return stencil


def blob_section_mask(blob: Blob, z: float, grid: SliceGrid) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """(box, inside mask, normalised radius² q) of a blob's section at height z, before gating."""
    section = blob.section(z)
    if section is None:
        return None
    x0, y0, a, b = section
    if a <= 0 or b <= 0:
        return None
    c, s = math.cos(blob.yaw), math.sin(blob.yaw)
    box = grid.box(x0, y0, abs(c) * a + abs(s) * b, abs(s) * a + abs(c) * b)
    if box is None:
        return None
    dx = grid.X[box] - np.float32(x0)
    dy = grid.Y[box] - np.float32(y0)
    if blob.yaw:
        c, s = np.float32(c), np.float32(s)
        dx, dy = c * dx + s * dy, c * dy - s * dx
    tx = dx * np.float32(1.0 / a)
    ty = dy * np.float32(1.0 / b)
    tx *= tx
    ty *= ty
    if blob.power == 2.0:
        q = tx + ty
    elif blob.power == 6.0:
        q = tx * tx * tx + ty * ty * ty
    else:
        half = np.float32(blob.power / 2.0)
        q = tx**half + ty**half
    return box, q < 1.0, q


@functools.lru_cache(maxsize=64)
def _gate_lut(gate: tuple[int, ...]) -> np.ndarray:
    """A cv2.LUT table: 1 on the labels in ``gate``, else 0 (made once per gate)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[list(gate)] = 1
    return lut


_MISSING = object()


def _beyond_skin(grid: SliceGrid, outermost: np.ndarray, lo: int) -> int:
    """First table column whose cells all lie outside ``outermost`` (radius per angle): air from there on.

    Near the vertex the head's section is far smaller than the table, whose
    layer tests would mostly find air; the column is estimated from the
    outline, then checked on the table itself (radii grow along a row), so
    cutting the table there changes no label.
    """
    end = int(math.ceil(float(np.max(outermost / grid.outline)) / grid.du)) + 2
    if end >= grid.n_u or not bool(np.all(grid.radius_table[end] >= outermost)):
        return grid.n_u
    return max(end, lo + 1)


def _layer_codes(radius: np.ndarray, bounds: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """``out`` (uint8 [W, n]) = per cell, how many surfaces ``bounds`` [B, n] its ``radius`` [W, n] lies inside.

    The same as summing ``radius < bounds[s]`` over the surfaces, but columns of
    ``radius`` never decrease, so each surface splits the table into rows inside
    at every angle, a band, and rows outside at every angle: only the band is
    compared cell by cell. ``rows`` [B, n] estimates where each surface falls
    (fractional row per angle); the band is widened until the rows on either
    side confirm it, so a poor estimate costs time, never a wrong code.
    """
    width = radius.shape[0]
    bands = []
    for bound, estimate in zip(bounds, rows, strict=True):
        first = min(max(math.floor(float(estimate.min())) - 1, 0), width)
        last = min(max(math.ceil(float(estimate.max())) + 2, first), width)
        while first > 0 and not bool(np.all(radius[first - 1] < bound)):
            first = max(first - 4, 0)
        while last < width and bool(np.any(radius[last] < bound)):
            last = min(last + 4, width)
        bands.append((first, last))
    # below every band: inside all surfaces whose band starts higher up
    starts = sorted(first for first, _ in bands)
    for k, (low, high) in enumerate(zip([0, *starts], [*starts, width], strict=True)):
        out[low:high] = len(bands) - k
    flag = np.empty(out.shape, dtype=bool)
    for bound, (first, last) in zip(bounds, bands, strict=True):
        np.less(radius[first:last], bound, out=flag[first:last])
        out[first:last] += flag[first:last].view(np.uint8)


def _shell_table(anatomy: HeadAnatomy, grid: SliceGrid, z: float, shell: ShellLesions | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels of the polar table at height z (and shell lesion bits), vectorised over cells."""
    outline = grid.outline
    a = anatomy

    def surface(depth):  # in-plane radius (mm) per angle of the surface ``depth`` mm under the skin
        return (outline - depth) * a.dome(z, depth)

    thick = a.skull_thickness(grid.angles, z)
    d_bone = a.soft_thickness(grid.angles, z)
    d_diploe = d_bone + np.float32(a.outer_table)
    d_inner = d_bone + thick
    d_diploe_end = np.maximum(d_inner - np.float32(a.inner_table), d_diploe)
    lesion_thickness = [(bit, h.astype(np.float32)) for bit, h in (shell.extra_axial if shell else [])]
    pushed = sum((h for _, h in lesion_thickness), np.zeros_like(outline))
    d_brain = d_inner + pushed + np.float32(a.csf)
    # skin, outer table, diploë, inner table, dura, brain: the six nested surfaces [6, n_theta], in one pass
    boundaries = surface(np.stack([np.zeros_like(outline), d_bone, d_diploe, d_diploe_end, d_inner, d_brain]))
    b_brain = boundaries[-1]
    b_inner = boundaries[4]

    deepest = a.sulcus_depth + a.cortex + 3.0
    u_lo = float(np.min((b_brain - deepest) / outline))
    lo = min(max(math.floor(u_lo / grid.du), 0), grid.n_u - 1)
    end = _beyond_skin(grid, boundaries.max(axis=0), lo)
    radius = grid.radius_table[lo:end]  # [cells, n_theta]

    labels = grid.scratch("labels", np.uint8)  # read by the caller before the next slice
    labels[:lo] = WHITE
    labels[end:] = AIR
    code = labels[lo:end]  # layer codes are tissue labels
    _layer_codes(radius, boundaries, boundaries / (outline * np.float32(grid.du)) - np.float32(0.5 + lo), code)

    # in-plane depth under the brain surface, corrected for the oblique cut near the vertex
    mean_radius = float(np.mean(b_brain))
    half_height = (a.z_top - a.z_wide) - float(np.mean(d_brain))
    obliquity = 1.0
    if z > a.z_wide and half_height > 0 and mean_radius > 0:
        zeta = min((z - a.z_wide) / half_height, 0.999)
        slope = mean_radius / max(float(np.mean(a.dome(z, d_brain))), 1e-3) * zeta / (half_height * math.sqrt(1 - zeta * zeta))
        obliquity = max(1.0 / math.sqrt(1.0 + slope * slope), 0.35)
    # cells beyond the outermost brain surface can hold no gray or white matter
    hi = min(max(math.ceil(float(np.max(b_brain / outline)) / grid.du) + 1 - lo, 0), radius.shape[0])
    cells = radius[:hi]
    distance, sulcus_depth, lean = a.sulci(grid.angles, z, np.maximum(b_brain, 1.0))
    depth, across, work = (grid.scratch(name, np.float32)[:hi] for name in ("depth", "across", "work"))
    np.subtract(b_brain, cells, out=depth)
    if obliquity != 1.0:
        depth *= np.float32(obliquity)
    # distance to the nearest CSF: the brain surface, or a sulcus that leans and narrows as it deepens
    np.multiply(lean, depth, out=across)
    np.subtract(distance, across, out=across)
    np.abs(across, out=across)
    np.multiply(depth, np.float32(1.0) / np.maximum(sulcus_depth, 1.0), out=work)
    np.subtract(np.float32(1.5), work, out=work)
    np.clip(work, 0.35, 1.5, out=work)
    work *= np.float32(a.sulcus_halfwidth)
    across -= work
    np.maximum(across, 0.0, out=across)
    across *= across
    np.subtract(depth, sulcus_depth, out=work)
    np.maximum(work, 0.0, out=work)
    work *= work
    work += across
    np.sqrt(work, out=work)
    np.minimum(depth, work, out=work)
    sub_code, sub_flag = code[:hi], grid.scratch("flag", np.bool_)[:hi]
    np.greater(work, 0.0, out=sub_flag)
    sub_code += sub_flag.view(np.uint8)
    np.greater_equal(work, np.float32(a.cortex), out=sub_flag)
    sub_code += sub_flag.view(np.uint8)

    if shell is None or not (shell.extra_axial or shell.subarachnoid):
        return labels, None
    bits = np.zeros((grid.n_u, grid.n_theta), dtype=np.uint8)
    sub = bits[lo:end]
    outer = b_inner
    for bit, h in lesion_thickness:
        inner = surface(d_inner + h)  # the collection's inner margin follows the displaced brain
        sub |= ((radius < outer) & (radius >= inner)).view(np.uint8) * np.uint8(bit)
        d_inner = d_inner + h
        outer = inner
    if shell.subarachnoid:
        csf_cells = (code == 5) | (code == 6)
        csf_cells &= radius < outer
        for bit, on in shell.subarachnoid:
            sub |= (csf_cells & on).view(np.uint8) * np.uint8(bit)
    return labels, bits


def written_into(result: np.ndarray, out: np.ndarray) -> None:
    """Make sure a cv2 call given ``dst=out`` left its result in ``out``.

    cv2 writes into ``dst`` when its shape and type fit and returns a new array
    object over the same memory; only if it allocated elsewhere is a copy needed.
    """
    if not np.may_share_memory(result, out):
        out[...] = result


# --- sampling ---------------------------------------------------------------


def sample_anatomy(rng: np.random.Generator) -> HeadAnatomy:
    """A random adult head: size, shape, thicknesses, gyral pattern, tissue HU and deep structures."""
    s = float(rng.uniform(0.9, 1.07))
    atrophy = float(rng.beta(1.3, 3.0))
    k = np.arange(2, 7, dtype=np.float32)
    hu = np.zeros(N_LABELS, dtype=np.float32)
    hu[AIR] = -1000.0
    hu[SOFT] = rng.uniform(30, 45)
    hu[BONE] = hu[INNER] = rng.uniform(1450, 1750)
    hu[DIPLOE] = rng.uniform(650, 850)
    hu[CSF] = hu[SULCUS] = hu[VENTRICLE] = hu[CISTERN] = rng.uniform(4, 10)
    hu[GRAY] = rng.uniform(37, 42)
    hu[WHITE] = rng.uniform(26, 30)
    hu[DEEP] = rng.uniform(34, 38)
    hu[FAT] = rng.uniform(-100, -80)
    hu[GLOBE] = rng.uniform(6, 12)
    hu[LENS] = rng.uniform(90, 120)
    hu[DURA] = rng.uniform(45, 55)
    n_sulci = 9
    anatomy = HeadAnatomy(
        a=74.0 * s * float(rng.uniform(0.95, 1.05)),
        b=94.0 * s * float(rng.uniform(0.96, 1.04)),
        shape_k=k,
        shape_amp=(rng.normal(0, 0.012, size=k.shape) / (k / 2)).astype(np.float32),
        shape_phase=rng.uniform(0, 2 * math.pi, size=k.shape).astype(np.float32),
        z_wide=18.0 * s,
        z_top=float(rng.uniform(88, 96)) * s,
        z_orbit_roof=-9.0 * s,
        scalp=float(rng.uniform(4.0, 6.5)),
        skull=float(rng.uniform(5.5, 8.0)),
        outer_table=float(rng.uniform(1.5, 2.1)),
        inner_table=float(rng.uniform(1.2, 1.7)),
        csf=float(rng.uniform(1.0, 2.0) + 2.5 * atrophy),
        cortex=float(rng.uniform(2.6, 3.3)),
        atrophy=atrophy,
        sulcus_m=rng.integers(7, 19, size=n_sulci).astype(np.float32),
        sulcus_n=rng.uniform(-0.09, 0.09, size=n_sulci).astype(np.float32),
        sulcus_phase=rng.uniform(0, 2 * math.pi, size=n_sulci).astype(np.float32),
        sulcus_amp=rng.uniform(0.5, 1.0, size=n_sulci).astype(np.float32),
        sulcus_depth=float(rng.uniform(10, 14)) * (1 + 0.3 * atrophy),
        sulcus_halfwidth=float(rng.uniform(0.3, 0.5) + 0.8 * atrophy),
        depth_m=rng.integers(2, 6, size=3).astype(np.float32),
        depth_n=rng.uniform(-0.05, 0.05, size=3).astype(np.float32),
        depth_phase=rng.uniform(0, 2 * math.pi, size=3).astype(np.float32),
        hu=hu,
        scale=s,
    )
    anatomy.blobs = _deep_structures(rng, anatomy)
    return anatomy


def _deep_structures(rng: np.random.Generator, a: HeadAnatomy) -> list[Blob]:
    """Deep and skull-base structures, in painting order (later ones win)."""
    s = a.scale
    v = 1.0 + 0.9 * a.atrophy  # ventricles widen with age

    def j(x: float, frac: float = 0.07) -> float:
        return float(x * rng.uniform(1 - frac, 1 + frac))

    blobs: list[Blob] = []
    for side in (-1.0, 1.0):
        # basal ganglia, thalami, insula and the Sylvian fissure
        blobs += [
            Blob(DEEP, (side * j(23.5 * s, 0.04), j(-3 * s), j(9 * s)), (5.5 * s, j(14 * s), j(9 * s)), yaw=side * 0.22, gate=PARENCHYMA),
            Blob(DEEP, (side * j(11.5 * s, 0.04), j(-17 * s), j(16 * s)), (4.5 * s, j(8 * s), j(9 * s)), gate=PARENCHYMA),
            Blob(DEEP, (side * j(9.5 * s, 0.04), j(12 * s), j(11 * s)), (7.0 * s, j(12 * s), j(9 * s)), yaw=-side * 0.15, gate=PARENCHYMA),
            Blob(GRAY, (side * j(36 * s), j(-2 * s), j(7 * s)), (2.6 * s, j(17 * s), j(12 * s)), yaw=side * 0.12, gate=PARENCHYMA),
            Blob(CISTERN, (side * j(41 * s), j(-6 * s), j(5 * s)), ((0.9 + 1.2 * a.atrophy) * s, j(19 * s), j(11 * s)), yaw=side * 0.3, power=2.5, gate=BRAIN),
            # lateral ventricles: frontal horn, body, atrium, occipital and temporal horns
            Blob(VENTRICLE, (side * (1.4 + 4.6 * v) * s, j(-22 * s), j(18 * s)), (4.0 * s * v, j(13 * s), j(10 * s)), yaw=side * 0.35, gate=BRAIN),
            Blob(VENTRICLE, (side * (1.4 + 4.5 * v) * s, j(2 * s), j(30 * s)), (4.3 * s * v, j(27 * s), j(8 * s)), yaw=side * 0.08, gate=BRAIN),
            Blob(VENTRICLE, (side * j(17 * s), j(27 * s), j(18 * s)), (j(6 * s * v), j(10 * s), j(10 * s)), gate=BRAIN),
            Blob(VENTRICLE, (side * j(18 * s), j(41 * s), j(14 * s)), (j(3.2 * s * v), j(12 * s), j(6 * s)), yaw=-side * 0.3, gate=BRAIN),
            Blob(VENTRICLE, (side * j(29 * s), j(-4 * s), j(-9 * s)), (j(2.0 * s * v), j(11 * s), j(4 * s)), yaw=-side * 0.35, gate=BRAIN),
        ]
    # third ventricle, interhemispheric fissure with medial cortex and falx
    blobs += [
        Blob(VENTRICLE, (0.0, j(3 * s), j(11 * s)), (1.6 * s * v, j(12 * s), j(9 * s)), gate=BRAIN),
    ]
    fissures = [
        ((0.0, -62 * s, 34 * s), (45 * s, 52 * s)),
        ((0.0, 66 * s, 30 * s), (36 * s, 52 * s)),
        ((0.0, 0.0, 78 * s), (110 * s, 26 * s)),
    ]
    for center, (length, height) in fissures:
        blobs.append(Blob(GRAY, center, (3.8 * s, length, height), power=6.0, gate=(WHITE,)))
    for center, (length, height) in fissures:
        blobs.append(Blob(CISTERN, center, ((0.8 + 1.0 * a.atrophy) * s, length, height), power=6.0, gate=BRAIN))
    for center, (length, height) in fissures:
        blobs.append(Blob(DURA, center, (0.3 * s, length, height), power=6.0, gate=(CISTERN, CSF, SULCUS)))
    # posterior fossa: cerebellum, cisterns, brainstem, fourth ventricle
    blobs += [
        Blob(GRAY, (-22 * s, j(47 * s), j(-25 * s)), (j(27 * s), j(25 * s), j(19 * s)), yaw=0.3, gate=(GRAY, WHITE), texture="folia"),
        Blob(GRAY, (22 * s, j(47 * s), j(-25 * s)), (j(27 * s), j(25 * s), j(19 * s)), yaw=-0.3, gate=(GRAY, WHITE), texture="folia"),
        Blob(GRAY, (0.0, j(50 * s), j(-20 * s)), (j(9 * s), j(20 * s), j(16 * s)), gate=(GRAY, WHITE), texture="folia"),
        Blob(CISTERN, (0.0, j(-10 * s), j(-7 * s)), (j(11 * s), j(8 * s), j(5 * s)), power=2.5, gate=BRAIN),
        Blob(CISTERN, (0.0, j(7 * s), j(-1 * s)), (j(15.5 * s), j(15 * s), j(6 * s)), gate=BRAIN),
        Blob(CISTERN, (0.0, j(1 * s), j(-24 * s)), (j(17 * s), j(15 * s), j(15 * s)), slope=(0.0, -0.2), gate=BRAIN),
        Blob(CISTERN, (0.0, j(64 * s), j(-38 * s)), (j(9 * s), j(9 * s), j(8 * s)), gate=BRAIN),
        Blob(WHITE, (0.0, j(7 * s), j(1 * s)), (j(13 * s), j(12 * s), j(9 * s)), gate=BRAIN),
        Blob(CISTERN, (0.0, j(-3 * s), j(0 * s)), (3.0 * s, 4.5 * s, j(6 * s)), gate=(WHITE,)),
        Blob(WHITE, (0.0, j(4 * s), j(-24 * s)), (j(15 * s), j(12.5 * s), j(15 * s)), slope=(0.0, -0.2), gate=BRAIN),
        Blob(VENTRICLE, (0.0, j(20 * s), j(-23 * s)), (j(6 * s * v), j(3.2 * s), j(8 * s)), gate=BRAIN),
        Blob(VENTRICLE, (0.0, j(12 * s), j(-2 * s)), (1.1 * s, 1.1 * s, j(7 * s)), gate=BRAIN),
    ]
    # skull base: sphenoid with its sinus, clivus, petrous ridges with mastoid cells
    blobs += [
        Blob(BONE, (0.0, j(-26 * s), j(-30 * s)), (j(17 * s), j(15 * s), j(13 * s)), power=3.0, gate=NOT_AIR),
        Blob(AIR, (0.0, j(-29 * s), j(-31 * s)), (j(12 * s), j(10 * s), j(9 * s)), power=3.0, gate=(BONE,)),
        Blob(BONE, (0.0, j(-12 * s), j(-32 * s)), (j(8 * s), j(5 * s), j(12 * s)), slope=(0.0, -0.45), gate=NOT_AIR),
    ]
    for side in (-1.0, 1.0):
        blobs += [
            Blob(BONE, (side * j(33 * s), j(9 * s), j(-29 * s)), (j(5 * s), j(22 * s), j(8 * s)), yaw=-side * 0.95, gate=NOT_AIR),
            Blob(AIR, (side * j(52 * s), j(20 * s), j(-32 * s)), (j(8 * s), j(10 * s), j(7 * s)), gate=(BONE, DIPLOE, INNER), texture="cells"),
        ]
    # orbits: fat cone, optic nerve, globe, lens; ethmoid cells between them
    z_eye = a.z_orbit_roof - 15.0 * s
    for side in (-1.0, 1.0):
        ang = side * 0.36
        rim = float(a.outline(np.array([ang], dtype=np.float32))[0])
        def at(r: float, ang: float = ang) -> tuple[float, float]:
            return r * math.sin(ang), -r * math.cos(ang)
        gx, gy = at(rim - 15.5 * s)
        fx, fy = at(rim - 33 * s)
        lx, ly = at(rim - 6.5 * s)
        blobs += [
            Blob(BONE, (fx, fy, z_eye), (j(15 * s), j(23 * s), j(14 * s)), yaw=ang * 0.6, gate=(SOFT,)),
            Blob(FAT, (fx, fy, z_eye), (j(12 * s), j(20 * s), j(11 * s)), yaw=ang * 0.6, gate=EXTRACRANIAL),
            Blob(SOFT, (fx, fy, z_eye - 1.0), (1.8 * s, j(17 * s), 2.2 * s), yaw=ang * 0.6, gate=(FAT,)),
            Blob(GLOBE, (gx, gy, z_eye), (11.8 * s, 11.8 * s, 11.8 * s), gate=EXTRACRANIAL + (FAT,)),
            Blob(LENS, (lx, ly, z_eye), (4.2 * s, 1.8 * s, 4.2 * s), yaw=ang, gate=(GLOBE,)),
        ]
    blobs += [
        Blob(BONE, (0.0, -(a.b - 24 * s), z_eye), (j(11 * s), j(20 * s), j(13 * s)), gate=(SOFT,)),
        Blob(AIR, (0.0, -(a.b - 24 * s), z_eye), (j(8 * s), j(17 * s), j(12 * s)), gate=(BONE,), texture="cells"),
    ]
    # below the orbits: maxillary sinuses and the nasal cavity
    z_max = z_eye - 21 * s
    for side in (-1.0, 1.0):
        blobs += [
            Blob(BONE, (side * 23 * s, -(a.b - 30 * s), z_max), (j(17 * s), j(19 * s), j(15 * s)), gate=(SOFT,)),
            Blob(AIR, (side * 23 * s, -(a.b - 30 * s), z_max), (j(15 * s), j(17 * s), j(14 * s)), gate=(BONE,)),
        ]
    blobs += [
        Blob(BONE, (0.0, -(a.b - 30 * s), z_max), (j(6 * s), j(24 * s), j(16 * s)), gate=(SOFT,)),
        Blob(AIR, (0.0, -(a.b - 30 * s), z_max), (j(4.5 * s), j(22 * s), j(15 * s)), gate=(BONE,)),
        Blob(BONE, (0.0, -(a.b - 30 * s), z_max), (0.8 * s, j(22 * s), j(15 * s)), gate=(AIR,)),
    ]
    return blobs
