"""Lesions of the phantom: what each looks like, where it goes, and its voxel mask.

Extra-axial collections (epidural lens, subdural crescent) and convexity
subarachnoid blood live in the polar shell of :mod:`headct.phantom.anatomy`,
between the inner table and the brain, which they push inward. The others are
painted into a rendered slice: an intraparenchymal ovoid with an oedema rim,
intraventricular blood layering in the dependent (posterior) horns, blood in
the basal cisterns, and an ischaemic wedge in a vascular territory that erases
the gray/white difference. Every lesion sets its bit in the mask exactly where
it changed the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from headct.labels import HEMORRHAGE_BITS, LESION_BITS
from headct.phantom.anatomy import (
    CISTERN,
    DEEP,
    GRAY,
    PARENCHYMA,
    VENTRICLE,
    WHITE,
    Blob,
    HeadAnatomy,
    SliceGrid,
    blob_section_mask,
)

_PARENCHYMA_LUT = np.zeros(256, dtype=bool)
_PARENCHYMA_LUT[list(PARENCHYMA)] = True


def size_factor(difficulty: float) -> float:
    """Lesion size multiplier: 1 at difficulty 1, bigger when easier, smaller when harder."""
    return float(np.clip(1.35 - 0.35 * difficulty, 0.45, 1.7))


def contrast_factor(difficulty: float) -> float:
    """Multiplier on a lesion's HU difference from the tissue it replaces."""
    return float(np.clip(1.5 - 0.5 * difficulty, 0.3, 1.6))


def noise_factor(difficulty: float) -> float:
    """Multiplier on the scanner noise."""
    return float(np.clip(0.5 + 0.5 * difficulty, 0.4, 2.0))


@dataclass
class SliceCanvas:
    """One slice being drawn: labels (read), HU and lesion mask (written)."""

    grid: SliceGrid
    z: float
    labels: np.ndarray  # uint8 [H, W] tissue
    hu: np.ndarray  # float32 [H, W]
    mask: np.ndarray  # uint8 [H, W] lesion bits


@dataclass
class Lesion:
    """Base: a lesion type, its HU and its height range (head frame, mm)."""

    kind: str
    hu: float
    z_range: tuple[float, float]
    params: dict = field(default_factory=dict)

    @property
    def bit(self) -> int:
        return LESION_BITS[self.kind]

    def touches(self, z: float) -> bool:
        return self.z_range[0] <= z <= self.z_range[1]

    def extra_axial(self, grid: SliceGrid, z: float) -> np.ndarray | None:
        """Thickness (mm) per polar-table angle of a collection under the inner table, or None."""
        return None

    def subarachnoid(self, grid: SliceGrid, z: float) -> np.ndarray | None:
        """Angles (bool per polar-table angle) whose surface and sulcal CSF is blood, or None."""
        return None

    def paint(self, canvas: SliceCanvas) -> None:
        """Draw into a rendered slice (HU and mask)."""

    def describe(self) -> dict:
        """JSON-ready summary for phantom.json."""
        out = {"type": self.kind, "bit": self.bit, "hu": round(float(self.hu), 1),
               "z_mm": [round(float(self.z_range[0]), 1), round(float(self.z_range[1]), 1)]}
        out.update({k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.params.items()})
        return out


@dataclass
class ExtraAxial(Lesion):
    """Epidural lens or subdural crescent: a thickness profile over angle and height."""

    theta: float = 0.0
    z_center: float = 0.0
    arc_half: float = 30.0  # mm along the convexity
    z_half: float = 20.0
    thickness: float = 10.0
    radius: float = 70.0  # inner-table radius used to turn angle into arc length
    exponent: float = 0.5  # 0.5: biconvex lens; smaller: flat crescent with tapered tips

    def extra_axial(self, grid: SliceGrid, z: float) -> np.ndarray | None:
        if not self.touches(z):
            return None
        arc = _wrap(grid.theta_centers - np.float32(self.theta)) * np.float32(self.radius)
        s2 = (arc / np.float32(self.arc_half)) ** 2 + np.float32(((z - self.z_center) / self.z_half) ** 2)
        return (np.float32(self.thickness) * np.clip(1.0 - s2, 0.0, None) ** np.float32(self.exponent)).astype(np.float32)


@dataclass
class Subarachnoid(Lesion):
    """Blood in the convexity sulci of a sector and/or in the basal cisterns and fissures."""

    theta: float = 0.0
    theta_half: float = 0.5
    z_center: float = 30.0
    z_half: float = 20.0
    convexity: bool = True
    cisterns: tuple[float, float] | None = None  # height range of cisternal blood

    def touches(self, z: float) -> bool:
        conv = self.convexity and abs(z - self.z_center) < self.z_half
        cist = self.cisterns is not None and self.cisterns[0] <= z <= self.cisterns[1]
        return conv or cist

    def subarachnoid(self, grid: SliceGrid, z: float) -> np.ndarray | None:
        if not self.convexity or abs(z - self.z_center) >= self.z_half:
            return None
        half = self.theta_half * math.sqrt(1.0 - ((z - self.z_center) / self.z_half) ** 2)
        return np.abs(_wrap(grid.theta_centers - np.float32(self.theta))) < np.float32(half)

    def paint(self, canvas: SliceCanvas) -> None:
        if self.cisterns is None or not (self.cisterns[0] <= canvas.z <= self.cisterns[1]):
            return
        blood = canvas.labels == CISTERN
        canvas.hu[blood] = self.hu
        canvas.mask[blood] |= np.uint8(self.bit)


@dataclass
class Intraparenchymal(Lesion):
    """An ovoid haematoma with a hypodense oedema rim, confined to brain parenchyma."""

    blob: Blob | None = None
    rim: float = 3.0
    oedema_hu: float = 20.0

    def paint(self, canvas: SliceCanvas) -> None:
        if not self.touches(canvas.z) or self.blob is None:
            return
        b = self.blob
        halo = Blob(b.label, b.center, tuple(x + self.rim for x in b.axes), b.yaw, gate=b.gate)
        found = blob_section_mask(halo, canvas.z, canvas.grid)
        if found is not None:
            box, inside, _ = found
            inside &= _PARENCHYMA_LUT[canvas.labels[box]]
            inside &= canvas.mask[box] == 0
            canvas.hu[box][inside] = self.oedema_hu
        found = blob_section_mask(b, canvas.z, canvas.grid)
        if found is None:
            return
        box, inside, q = found
        inside &= _PARENCHYMA_LUT[canvas.labels[box]]
        hu = canvas.hu[box]
        hu[inside] = self.hu - 6.0 * q[inside]  # a little denser in the centre
        canvas.mask[box][inside] |= np.uint8(self.bit)


@dataclass
class Intraventricular(Lesion):
    """Blood layering in the dependent (posterior) lateral ventricles, optionally filling the third ventricle."""

    side: int = 0  # -1 right, +1 left, 0 both
    level: float = 27.0  # head-frame Y (mm) behind which ventricular CSF is blood
    third_ventricle: tuple[float, float] | None = None  # |X| and top height (mm) of a third-ventricle cast

    def paint(self, canvas: SliceCanvas) -> None:
        if not self.touches(canvas.z):
            return
        grid = canvas.grid
        where = np.flatnonzero(canvas.labels.ravel() == VENTRICLE)  # few pixels: test only those
        if where.size == 0:
            return
        x, y = grid.X.ravel()[where], grid.Y.ravel()[where]
        layer = y > np.float32(self.level)
        if self.side:
            layer &= x * np.float32(self.side) > 0
        if self.third_ventricle is not None and canvas.z < self.third_ventricle[1]:
            layer |= np.abs(x) < np.float32(self.third_ventricle[0])
        blood = where[layer]
        canvas.hu.ravel()[blood] = self.hu
        canvas.mask.ravel()[blood] |= np.uint8(self.bit)


@dataclass
class Ischemic(Lesion):
    """A hypodense wedge of a vascular territory; gray and white matter inside both go to ~20 HU."""

    territory: str = "mca"
    theta: float = math.pi / 2
    theta_half: float = 0.6
    u_inner: float = 0.35
    z_center: float = 15.0
    z_half: float = 30.0
    wobble: float = 0.0

    def paint(self, canvas: SliceCanvas) -> None:
        if abs(canvas.z - self.z_center) >= self.z_half:
            return
        grid = canvas.grid
        taper = math.sqrt(1.0 - ((canvas.z - self.z_center) / self.z_half) ** 2)
        half = np.float32(self.theta_half * (0.35 + 0.65 * taper))
        box, angle, edge = self._geometry(grid)
        if box is None:
            return
        labels, hu, mask = canvas.labels[box], canvas.hu[box], canvas.mask[box]
        region = angle < half * edge
        region &= _PARENCHYMA_LUT[labels]
        region &= (mask & np.uint8(HEMORRHAGE_BITS)) == 0
        if not region.any():
            return
        offset = np.zeros(256, dtype=np.float32)
        offset[GRAY], offset[WHITE], offset[DEEP] = 1.0, -1.0, 0.5  # gray/white difference all but gone
        hu[region] = np.float32(self.hu) + offset.take(labels[region])
        mask[region] |= np.uint8(self.bit)

    def _geometry(self, grid: SliceGrid) -> tuple[tuple[slice, slice] | None, np.ndarray, np.ndarray]:
        """The territory's pixel box, and in it the angle from its axis (inf inside u_inner) and the wobbly edge.

        The same for every slice of a study, so computed once per grid.
        """
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] is grid:
            return cached[1]
        angle = np.abs(_wrap(grid.theta - np.float32(self.theta)))
        angle[(grid.u <= np.float32(self.u_inner)) | (grid.u > 1.0)] = np.inf
        near = angle < np.float32(1.2 * self.theta_half)
        rows, cols = np.flatnonzero(near.any(axis=1)), np.flatnonzero(near.any(axis=0))
        if rows.size == 0:
            found = (None, angle[:0, :0], angle[:0, :0])
        else:
            box = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
            u = grid.u[box]
            edge = np.float32(1.0) + np.float32(0.12) * np.sin(u * np.float32(19.0) + np.float32(self.wobble))
            found = (box, np.ascontiguousarray(angle[box]), edge)
        self._cache = (grid, found)
        return found


# --- sampling ---------------------------------------------------------------


def sample_lesion(kind: str, rng: np.random.Generator, anatomy: HeadAnatomy, difficulty: float, slice_gap: float) -> Lesion:
    """A random lesion of ``kind`` for this head; it spans at least two slices ``slice_gap`` mm apart."""
    if kind not in LESION_BITS:
        raise ValueError(f"unknown lesion type {kind!r}; known: {', '.join(LESION_BITS)}")
    s = anatomy.scale * size_factor(difficulty)
    c = contrast_factor(difficulty)
    min_half = 1.1 * slice_gap
    hu = anatomy.hu
    side = float(rng.choice([-1.0, 1.0]))

    def contrast(value: float, background: float) -> float:
        return float(background + (value - background) * c)

    if kind in ("epidural", "subdural"):
        epidural = kind == "epidural"
        if epidural:
            theta = side * float(rng.uniform(0.9, 2.2)) if rng.random() < 0.75 else side * float(rng.uniform(0.15, 0.6))
            z_center = float(rng.uniform(0, 45)) * anatomy.scale
            arc_half, z_half = float(rng.uniform(22, 34)) * s, max(float(rng.uniform(14, 22)) * s, min_half)
            thickness, exponent = float(rng.uniform(9, 17)) * s, 0.5
        else:
            theta = side * float(rng.uniform(1.0, 2.1))
            z_center = float(rng.uniform(10, 40)) * anatomy.scale
            arc_half, z_half = float(rng.uniform(55, 85)) * s, max(float(rng.uniform(30, 42)) * s, min_half)
            thickness, exponent = float(rng.uniform(5, 10)) * s, 0.3
        radius = float(anatomy.outline(np.array([theta], dtype=np.float32))[0]) - anatomy.scalp - anatomy.skull
        value = contrast(float(rng.uniform(58, 75)), float(hu[GRAY]))
        return ExtraAxial(kind, value, (z_center - z_half, z_center + z_half),
                          {"side": "left" if side > 0 else "right", "max_thickness_mm": thickness},
                          theta=theta, z_center=z_center, arc_half=arc_half, z_half=z_half,
                          thickness=thickness, radius=radius, exponent=exponent)

    if kind == "subarachnoid":
        convexity = bool(rng.random() < 0.6)
        cisterns = None
        if not convexity or rng.random() < 0.5:
            low, high = -14.0 * anatomy.scale, 12.0 * anatomy.scale
            if high - low < 2 * min_half:
                low, high = -min_half, min_half
            cisterns = (low, high)
        theta = side * float(rng.uniform(0.6, 2.4))
        z_center = float(rng.uniform(20, 55)) * anatomy.scale
        z_half = max(float(rng.uniform(15, 28)) * s, min_half)
        if convexity and cisterns is not None:  # one continuous spread: cisterns up over the convexity
            z_center = cisterns[1] + z_half * float(rng.uniform(0.2, 0.8))
        value = contrast(float(rng.uniform(52, 65)), float(hu[CISTERN]))
        z_lo = min(z_center - z_half if convexity else math.inf, cisterns[0] if cisterns else math.inf)
        z_hi = max(z_center + z_half if convexity else -math.inf, cisterns[1] if cisterns else -math.inf)
        return Subarachnoid(kind, value, (z_lo, z_hi), {"convexity": convexity, "cisterns": cisterns is not None},
                            theta=theta, theta_half=float(rng.uniform(0.4, 0.8)), z_center=z_center,
                            z_half=z_half, convexity=convexity, cisterns=cisterns)

    if kind == "intraparenchymal":
        site = str(rng.choice(["basal ganglia", "thalamus", "lobar", "lobar", "cerebellum"]))
        radius = np.array([rng.uniform(9, 16), rng.uniform(11, 20), rng.uniform(9, 15)]) * s
        radius[2] = max(radius[2], min_half)
        sc = anatomy.scale
        if site == "basal ganglia":
            center = (side * 22 * sc, -2 * sc, 10 * sc)
            radius[:2] = np.minimum(radius[:2], [13 * sc, 18 * sc])
        elif site == "thalamus":
            center = (side * 12 * sc, 11 * sc, 12 * sc)
            radius[:2] = np.minimum(radius[:2], [11 * sc, 13 * sc])
        elif site == "cerebellum":
            center = (side * 22 * sc, 48 * sc, -24 * sc)
            radius = np.minimum(radius, [13 * sc, 14 * sc, max(12 * sc, min_half)])
        else:
            theta = float(rng.uniform(-math.pi, math.pi))
            z = float(rng.uniform(12, 45)) * sc
            rim = float(anatomy.outline(np.array([theta], dtype=np.float32))[0]) * float(anatomy.dome(z, 20.0))
            r = rim - anatomy.scalp - anatomy.skull - anatomy.csf - float(max(radius[:2].max(), 12)) - 10.0
            center = (r * math.sin(theta), -r * math.cos(theta), z)
        blob = Blob(GRAY, center, tuple(float(v) for v in radius), yaw=float(rng.uniform(-0.6, 0.6)), gate=PARENCHYMA)
        rim = float(rng.uniform(2.0, 5.0)) * s
        value = contrast(float(rng.uniform(62, 85)), float(hu[WHITE]))
        oedema = contrast(float(rng.uniform(16, 22)), float(hu[WHITE]))
        return Intraparenchymal(kind, value, (center[2] - radius[2], center[2] + radius[2]),
                                {"site": site, "radii_mm": [round(float(v), 1) for v in radius]},
                                blob=blob, rim=rim, oedema_hu=oedema)

    if kind == "intraventricular":
        sc = anatomy.scale
        which = int(rng.choice([-1, 0, 1]))
        level = float(rng.uniform(17, 24)) * sc
        third = (3.5 * sc, 20.0 * sc) if rng.random() < 0.3 else None
        value = contrast(float(rng.uniform(55, 75)), float(hu[VENTRICLE]))
        return Intraventricular(kind, value, (0.0, 40.0 * sc),
                                {"side": {-1: "right", 0: "both", 1: "left"}[which], "third_ventricle": third is not None},
                                side=which, level=level, third_ventricle=third)

    # ischemic
    territory = str(rng.choice(["mca", "mca", "mca", "pca", "aca"]))
    sc = anatomy.scale
    if territory == "mca":
        theta, half = side * float(rng.uniform(1.35, 1.8)), float(rng.uniform(0.35, 0.7))
        u_inner = float(rng.choice([rng.uniform(0.25, 0.35), rng.uniform(0.55, 0.65)]))
        z_center, z_half = float(rng.uniform(5, 30)) * sc, float(rng.uniform(22, 35))
    elif territory == "pca":
        theta, half = side * float(rng.uniform(2.6, 2.9)), float(rng.uniform(0.2, 0.35))
        u_inner, z_center, z_half = float(rng.uniform(0.35, 0.5)), float(rng.uniform(5, 20)) * sc, float(rng.uniform(15, 22))
    else:
        theta, half = side * float(rng.uniform(0.12, 0.25)), float(rng.uniform(0.12, 0.2))
        u_inner, z_center, z_half = float(rng.uniform(0.3, 0.45)), float(rng.uniform(35, 60)) * sc, float(rng.uniform(18, 26))
    half *= min(size_factor(difficulty), 1.3)
    z_half = max(z_half * s, min_half)
    value = contrast(float(rng.uniform(17, 23)), float(hu[WHITE] + hu[GRAY]) / 2)
    return Ischemic(kind, value, (z_center - z_half, z_center + z_half),
                    {"territory": territory, "side": "left" if side > 0 else "right"},
                    territory=territory, theta=theta, theta_half=half, u_inner=u_inner,
                    z_center=z_center, z_half=z_half, wobble=float(rng.uniform(0, 2 * math.pi)))


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped into [-pi, pi)."""
    return (angle + np.float32(math.pi)) % np.float32(2 * math.pi) - np.float32(math.pi)
