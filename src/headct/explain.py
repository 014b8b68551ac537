"""Class-activation maps, their overlays, and how well they point at the lesion.

Maps come from pytorch-grad-cam (used as a context manager, so its hooks are
released): Grad-CAM, HiResCAM, LayerCAM, Grad-CAM++ or XGrad-CAM (``CAM_METHODS``)
on each model's default target layers and method (``model.spec.target_layers``,
``model.spec.target_method``; several layers are averaged, each normalised
first). One map per image and class (``ClassifierOutputTarget``), normalised
to 0..1 and placed on the input where each cell looks (``PlacedCAM``), then
optionally zeroed outside the head (``head_mask``: a bleed cannot lie in air),
resized to the slice's original resolution and drawn in false colour (jet) on
the brain window. Series-level models are explained per slice through a
single-input wrapper.

``score_cache`` measures localisation against the phantom's lesion masks in a
cache: the pointing game (the map's peak falls inside the lesion, dilated by a
few pixels) and the share of map energy inside the lesion, each beside the same
numbers for smooth random maps (the baseline a map must beat).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from headct import atomic
from headct.checkpoint import CheckpointConfig, load_checkpoint
from headct.data.cache import Cache, display_plane
from headct.data.datasets import flatten_channels, neighbour_index
from headct.decide import probabilities
from headct.inference import autocast_context, series_logits
from headct.labels import HEMORRHAGE_BITS, LESION_BITS
from headct.windows import apply_windows

if TYPE_CHECKING:
    from pytorch_grad_cam.base_cam import BaseCAM

log = logging.getLogger(__name__)

LABEL_BITS: dict[str, int] = {**LESION_BITS, "any": HEMORRHAGE_BITS, "hemorrhagic": HEMORRHAGE_BITS,
                              "stroke": HEMORRHAGE_BITS | LESION_BITS["ischemic"]}
"""Which mask bits show each output label; labels absent here (non-stroke) are not scored."""


# --- maps ------------------------------------------------------------------

def target_layer_names(model: nn.Module) -> list[str]:
    """The model's default Grad-CAM layers (module paths), from ``model.spec``."""
    names = list(model.spec.target_layers)
    if not names:
        raise ValueError(f"model {model.spec.name!r} names no Grad-CAM target layers in its spec")
    return names


CAM_METHODS: dict[str, str] = {  # name -> pytorch_grad_cam class (imported when a map is made: ~1 s)
    "gradcam": "GradCAM",          # channel weights: gradients averaged over the map
    "hirescam": "HiResCAM",        # gradient x activation per cell, summed over channels
    "layercam": "LayerCAM",        # positive gradient x activation per cell
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
}
"""Map methods by name (all gradient-based: one forward and one backward pass per batch)."""

AIR_HU = -300.0
"""Pixels below this (HU) are air or background: fat is about -100, lung and air far lower."""
AIR_UINT8 = 8
"""8-bit slices at or below this grey level count as background (a brain window shows air and fat as 0)."""


def target_method(model: nn.Module) -> str:
    """The model's default map method, from ``model.spec`` ("gradcam" when the spec names none)."""
    return getattr(model.spec, "target_method", "") or "gradcam"


def gradcam_maps(
    model: nn.Module,
    x: torch.Tensor,
    class_index: int,
    *,
    layers: Sequence[str] | None = None,
    method: str | None = None,
    head_only: bool | None = None,
    batch_size: int = 16,
    amp: str | None = None,
) -> np.ndarray:
    """Class-activation maps of class ``class_index`` for raw inputs ``x``: float32 ``[B, H, W]`` in 0..1.

    ``x`` is ``[B, K, H, W]`` for slice-level models, ``[S, H, W]`` (one
    series) for series-level ones. ``layers`` picks target layers by module
    path (default: all of the spec's, averaged); ``method`` one of
    ``CAM_METHODS`` (default: the spec's); ``head_only`` zeroes the map outside
    the head (default: the spec's ``target_head_mask``). ``amp`` ("bf16",
    "fp16") runs the forward pass under autocast.
    """
    method = method or target_method(model)
    return method_maps(model, x, class_index, [method], layers=layers, head_only=head_only,
                       batch_size=batch_size, amp=amp)[method]


def method_maps(
    model: nn.Module,
    x: torch.Tensor,
    class_index: int,
    methods: Sequence[str],
    *,
    layers: Sequence[str] | None = None,
    head_only: bool | None = None,
    batch_size: int = 16,
    amp: str | None = None,
) -> dict[str, np.ndarray]:
    """:func:`gradcam_maps` for several methods at once: ``{method: [B, H, W]}``.

    One forward and backward pass per batch serves every method: the methods
    differ only in how they weigh the same activations and gradients, so the
    first method's recorder is shared with the others.
    """
    layer_names = list(layers) if layers else target_layer_names(model)
    head_only = _head_only(model, head_only)
    series_level = model.spec.level == "series"
    network: nn.Module = _SeriesAsSlices(model) if series_level else model
    target_modules = [model.get_submodule(name) for name in layer_names]
    reshape = _to_float_nchw if model.spec.target_layout == "nhwc" else _to_float
    device = next(model.parameters()).device
    was_training = model.training
    if series_level:  # one series is one forward pass: its slices are the batch
        x, batch_size = x[:, None], max(int(x.shape[0]), 1)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps: dict[str, list[np.ndarray]] = {method: [] for method in methods}
    cams = [placed_cam_class(method)(model=network, target_layers=target_modules, grid=model.spec.target_grid,
                                     reshape_transform=reshape) for method in methods]
    for cam in cams[1:]:  # one set of hooks: the others read the first one's recordings
        cam.activations_and_grads.release()
        cam.activations_and_grads = cams[0].activations_and_grads
    try:
        with torch.enable_grad():
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start:start + batch_size].to(device).float()
                targets = [ClassifierOutputTarget(int(class_index))] * chunk.shape[0]
                with autocast_context(device, amp):
                    first = cams[0](input_tensor=chunk, targets=targets)
                heads = head_mask(centre_slices(chunk), model.spec.input_kind) if head_only else None
                for method, cam in zip(methods, cams, strict=True):
                    chunk_maps = first if cam is cams[0] else cam.aggregate_multi_layers(
                        cam.compute_cam_per_layer(chunk, targets, False))
                    chunk_maps = _centre_slice_maps(chunk_maps, chunk.shape[0])
                    maps[method].append(_zero_outside(chunk_maps, heads) if heads is not None else chunk_maps)
    finally:
        cams[0].activations_and_grads.release()
        model.train(was_training)
    empty = np.zeros((0, *x.shape[-2:]), np.float32)
    return {method: np.concatenate(parts).astype(np.float32) if parts else empty for method, parts in maps.items()}


class PlacedCAM:
    """Mixin for a pytorch-grad-cam method: each map upsampled to where its cells look.

    The library resizes a cell map with cv2, which puts cell ``o`` of a
    stride-``s`` map at pixel ``s*(o+1/2)``: right for "centred" grids (see
    ``ModelSpec.target_grid``), but half a cell down and right of the truth for
    "padded" ones (EfficientNet, ResNet: 15.5 px at stride 32). For those, the
    map is sampled at each pixel's own cell coordinate (:func:`padded_grid_resize`).
    The method's own ``get_cam_image`` makes the cell map; only the resize is ours.
    Combine with a method through :func:`placed_cam_class`.
    """

    def __init__(self, *args: Any, grid: str = "centred", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if grid not in ("centred", "padded"):
            raise ValueError(f"target grid must be 'centred' or 'padded', got {grid!r}")
        self.grid = grid

    def compute_cam_per_layer(self, input_tensor: torch.Tensor, targets: list, eigen_smooth: bool) -> list:
        from pytorch_grad_cam.utils.image import scale_cam_image

        if self.grid == "centred":
            return super().compute_cam_per_layer(input_tensor, targets, eigen_smooth)  # type: ignore[misc]
        size = tuple(input_tensor.shape[-2:])
        recorded = zip(self.target_layers, self.activations_and_grads.activations,  # type: ignore[attr-defined]
                       self.activations_and_grads.gradients, strict=True)  # type: ignore[attr-defined]
        maps = []
        for layer, activations, grads in recorded:  # as the library's loop, with our resize
            cam = self.get_cam_image(input_tensor, layer, targets, activations.cpu().numpy(),  # type: ignore[attr-defined]
                                     grads.cpu().numpy(), eigen_smooth)
            maps.append(padded_grid_resize(scale_cam_image(np.maximum(cam, 0)), size)[:, None])
        return maps


@functools.cache
def placed_cam_class(method: str) -> type[BaseCAM]:
    """The ``CAM_METHODS[method]`` class with :class:`PlacedCAM`'s placement (takes ``grid=``)."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown map method {method!r}; choose from {', '.join(CAM_METHODS)}")
    import pytorch_grad_cam

    base = getattr(pytorch_grad_cam, CAM_METHODS[method])
    return type(f"Placed{base.__name__}", (PlacedCAM, base), {})


def centre_slices(x: torch.Tensor) -> np.ndarray:
    """The predicted slice of each raw input ``[B, K, H, W]`` (its centre channel): ``[B, H, W]``."""
    flat = x.detach().float().reshape(x.shape[0], -1, *x.shape[-2:])
    return flat[:, flat.shape[1] // 2].cpu().numpy()


def head_mask(pixels: np.ndarray, kind: str = "hu") -> np.ndarray:
    """Where the head is in raw slices ``[..., H, W]``: bool, same shape.

    Per slice: the largest connected region above the air threshold
    (``AIR_HU`` for HU, ``AIR_UINT8`` for 8-bit grey), so the table and
    headrest are left out, with its holes filled, so dark lesions inside the
    skull stay in. Hand-written: no library here computes a head mask from a slice.
    """
    pixels = np.asarray(pixels)
    tissue = pixels > (AIR_HU if kind == "hu" else AIR_UINT8)
    flat = tissue.reshape(-1, *tissue.shape[-2:])
    return np.stack([_largest_region(one) for one in flat]).reshape(tissue.shape) if len(flat) else tissue


def _largest_region(tissue: np.ndarray) -> np.ndarray:
    """The largest connected region of a 2-D boolean image, holes filled (all False when there is none)."""
    labelled, count = ndimage.label(tissue)
    if count == 0:
        return tissue
    sizes = np.bincount(labelled.ravel())[1:]
    return ndimage.binary_fill_holes(labelled == 1 + int(np.argmax(sizes)))


def mask_to_head(cams: np.ndarray, slices: np.ndarray, kind: str = "hu") -> np.ndarray:
    """Maps ``[B, H, W]`` zeroed outside each slice's head, rescaled to peak 1.

    A map with no evidence inside the head becomes empty (all zero); a slice
    with no head at all (nothing above the air threshold) keeps its map.
    """
    return _zero_outside(cams, head_mask(slices, kind))


def _zero_outside(cams: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """:func:`mask_to_head` with the head masks ``inside`` already made."""
    masked = np.where(inside, cams, 0.0)
    masked = masked / np.maximum(masked.max(axis=(1, 2), keepdims=True), 1e-7)
    return np.where(inside.any(axis=(1, 2), keepdims=True), masked, cams).astype(np.float32)


def padded_grid_resize(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cell maps ``[B, h, w]`` of a "padded" grid → ``[B, H, W]``.

    Cell ``o`` of a stride-``s`` padded map is centred on input pixel ``s*o``
    (symmetric padding at every stride-2 step), so pixel ``p`` reads the map
    bilinearly at cell coordinate ``p / s``; edges hold the nearest cell.
    """
    height, width = size
    cams = np.asarray(cams, dtype=np.float32)
    stride_y = 2.0 ** round(np.log2(height / cams.shape[1]))  # 2**k: the stride-2 steps up to the layer
    stride_x = 2.0 ** round(np.log2(width / cams.shape[2]))
    rows, cols = np.meshgrid(np.arange(height) / stride_y, np.arange(width) / stride_x, indexing="ij")
    return np.stack([ndimage.map_coordinates(cam, [rows, cols], order=1, mode="nearest") for cam in cams])


def series_stacks(series: np.ndarray, context: int, positions: Sequence[int] | None = None) -> torch.Tensor:
    """Raw neighbour stacks ``[b, 2*context+1, H, W]`` (float) of a series, as the model saw them
    (``[b, (2*context+1)*C, H, W]`` for a series of C 8-bit images per slice)."""
    index = neighbour_index(series.shape[0], context)
    if positions is not None:
        index = index[torch.as_tensor(list(positions), dtype=torch.long)]
    return flatten_channels(torch.from_numpy(np.asarray(series)[index.numpy()])).float()


def to_original(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Undo the cache's pad-to-square + resample: a model-size map → the slice's ``[H, W]``.

    Bilinear resize to the padded square's side, then the padding cropped off
    (``headct.data.resample.pad_square`` centres the slice in the square).
    """
    height, width = shape
    side = max(height, width)
    square = cv2.resize(np.float32(cam), (side, side), interpolation=cv2.INTER_LINEAR)
    top, left = (side - height) // 2, (side - width) // 2
    return np.clip(square[top:top + height, left:left + width], 0.0, 1.0)


def overlay(slice_pixels: np.ndarray, cam: np.ndarray, kind: str = "hu", image_weight: float = 0.5) -> np.ndarray:
    """Jet false colour of ``cam`` (0..1) on the slice's brain window: uint8 RGB ``[H, W, 3]``
    (a slice of C 8-bit images ``[C, H, W]`` shows its first, :func:`headct.data.cache.display_plane`)."""
    slice_pixels = display_plane(slice_pixels)
    if kind == "hu":
        grey = apply_windows(slice_pixels, ["brain"])[0]
    else:
        grey = np.asarray(slice_pixels, dtype=np.float32) / 255.0
    if cam.shape != grey.shape:
        cam = cv2.resize(np.float32(cam), grey.shape[::-1], interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(rgb, np.clip(cam, 0, 1), use_rgb=True, image_weight=image_weight)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic.write_bytes(path, data.tobytes())


# --- localisation ------------------------------------------------------------

POINTING_TOLERANCE_AT_224 = 15
"""The pointing game's usual tolerance: 15 px on a 224-px image (Zhang et al., "Top-down neural
attention by excitation backprop", 2016/2018); :func:`default_tolerance` scales it to other sizes."""


def default_tolerance(side: int) -> int:
    """Pointing-game tolerance in pixels for ``side``-pixel maps: 15 px at 224, scaled (at least 1)."""
    return max(1, round(POINTING_TOLERANCE_AT_224 * side / 224))


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance: int = 3) -> bool:
    """Whether the map's peak lies in ``mask`` dilated by ``tolerance`` pixels (pointing game)."""
    region = ndimage.binary_dilation(mask, iterations=tolerance) if tolerance > 0 else mask.astype(bool)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(region[peak])


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total energy (sum of its values) inside ``mask``; 0 for an empty map."""
    total = float(np.sum(cam, dtype=np.float64))
    return float(np.sum(cam[mask.astype(bool)], dtype=np.float64) / total) if total > 0 else 0.0


def random_maps(count: int, shape: tuple[int, int], rng: np.random.Generator, sigma: float | None = None) -> np.ndarray:
    """Smooth random maps ``[count, H, W]`` in 0..1: Gaussian-blurred white noise.

    ``sigma`` defaults to 1/16 of the side, about the blob size of a Grad-CAM
    map upsampled from a 1/32-resolution stage.
    """
    sigma = sigma if sigma is not None else max(shape) / 16
    noise = rng.standard_normal((count, *shape)).astype(np.float32)
    smooth = ndimage.gaussian_filter(noise, sigma=(0, sigma, sigma), mode="wrap")
    low = smooth.min(axis=(1, 2), keepdims=True)
    high = smooth.max(axis=(1, 2), keepdims=True)
    return (smooth - low) / np.maximum(high - low, 1e-7)


@dataclass
class LocalisationScore:
    """Mean pointing-game hit rate and energy share over slices, for maps and the random baseline.

    ``empty_maps`` counts maps with no positive evidence at all (Grad-CAM's ReLU
    left nothing, typically where the model scores the class near zero); they
    count as misses in ``pointing_game``, whose peak would be an arbitrary pixel.
    """

    n_slices: int = 0
    empty_maps: int = 0
    pointing_game: float = float("nan")
    energy_share: float = float("nan")
    random_pointing_game: float = float("nan")
    random_energy_share: float = float("nan")


def score_maps(cams: np.ndarray, masks: np.ndarray, *, tolerance: int = 3, random_per_slice: int = 8,
               seed: int = 0, within: np.ndarray | None = None) -> LocalisationScore:
    """Score maps ``[N, H, W]`` against boolean masks ``[N, H, W]``, with the random-map baseline.

    ``within`` (boolean ``[N, H, W]``, e.g. :func:`head_mask`) confines the
    random maps to those regions too, so head-masked maps meet a baseline that
    also knows where the head is.
    """
    if len(cams) == 0:
        return LocalisationScore()
    rng = np.random.default_rng(seed)
    hits, shares, random_hits, random_shares = [], [], [], []
    empty = 0
    regions = within if within is not None else [None] * len(cams)
    for cam, mask, region in zip(cams, masks, regions, strict=True):
        has_evidence = bool(np.any(cam > 0))
        empty += int(not has_evidence)
        hits.append(has_evidence and pointing_hit(cam, mask, tolerance))
        shares.append(energy_inside(cam, mask))
        noises = random_maps(random_per_slice, cam.shape, rng)
        for noise in noises if region is None or not region.any() else noises * region:
            random_hits.append(pointing_hit(noise, mask, tolerance))
            random_shares.append(energy_inside(noise, mask))
    random_pointing = float(np.mean(random_hits)) if random_hits else float("nan")  # nan: random_per_slice=0
    random_energy = float(np.mean(random_shares)) if random_shares else float("nan")
    return LocalisationScore(len(cams), empty, float(np.mean(hits)), float(np.mean(shares)),
                             random_pointing, random_energy)


@dataclass
class ExplainConfig:
    """What ``headct explain`` maps, scores and draws."""

    split: str = "test"
    limit: int = 64
    """Slices per class to map and score (spread over the split's lesion slices)."""
    tolerance: int | None = None
    """Pointing-game tolerance: the mask is dilated by this many pixels at the map's resolution
    (default: :func:`default_tolerance` of the cache size)."""
    gallery: int = 16
    """Overlays drawn per class."""
    random_per_slice: int = 8
    seed: int = 0
    batch_size: int = 16
    layers: list[str] | None = None
    """Target layers (module paths) instead of the model's defaults."""
    method: str | None = None
    """Map method (a ``CAM_METHODS`` name) instead of the model's default."""
    head_only: bool | None = None
    """Zero maps outside the head (None: the model's default, ``spec.target_head_mask``)."""
    each_layer: bool = True
    """With several target layers, score each layer alone as well."""


def score_cache(model: nn.Module, labels: Sequence[str], cache: Cache, out: Path | None,
                settings: ExplainConfig | None = None) -> dict[str, Any]:
    """Map, score and (when ``out`` is given) draw the lesion slices of one cache split.

    ``labels`` are the model's output names, in output order. For every output label that a lesion type shows (``LABEL_BITS``), up to
    ``settings.limit`` slices whose mask holds that type are explained for that
    label. With several target layers (and ``settings.each_layer``), each layer alone is scored as well.
    Returns the ``localisation.json`` content.
    """
    settings = settings or ExplainConfig()
    labels = list(labels)
    layer_names = list(settings.layers) if settings.layers else target_layer_names(model)
    variants = {"combined": layer_names}
    if len(layer_names) > 1 and settings.each_layer:
        variants.update({name: [name] for name in layer_names})
    rows = cache.rows(settings.split)
    tolerance = settings.tolerance if settings.tolerance is not None else default_tolerance(cache.size)
    result: dict[str, Any] = {
        "split": settings.split, "tolerance_px": tolerance, "map_size": cache.size,
        "target_layers": layer_names, "method": settings.method or target_method(model),
        "head_only": (head_only := _head_only(model, settings.head_only)), "target_grid": model.spec.target_grid,
        "random_maps_per_slice": settings.random_per_slice,
        "per_class": {}, "by_layer": {name: {} for name in variants if name != "combined"},
    }
    if not cache.has_masks:
        raise ValueError(f"{cache.path}: the cache has no lesion masks (masks/); make it from a phantom")
    for class_index, label in enumerate(labels):
        bits = LABEL_BITS.get(label)
        if bits is None:
            continue
        chosen = lesion_rows(cache, rows, bits, settings.limit)
        if not chosen:
            log.info("%s: no %s lesion slices in the %s split", label, label, settings.split)
            continue
        masks = lesion_masks(cache, chosen, bits)
        heads = head_mask(np.stack([np.asarray(cache.slice(r)) for r in chosen]), cache.kind) if head_only else None
        for variant, layers in variants.items():
            cams = cache_maps(model, cache, chosen, class_index, layers, settings.batch_size,
                              method=settings.method, head_only=head_only)
            score = score_maps(cams, masks, tolerance=tolerance, random_per_slice=settings.random_per_slice,
                               seed=settings.seed, within=heads).__dict__
            if variant == "combined":
                result["per_class"][label] = score
                if out is not None:
                    _draw_gallery(out / "overlays", cache, chosen[:settings.gallery], cams, masks, label)
            else:
                result["by_layer"][variant][label] = score
    result["pooled"] = pooled_score(result["per_class"])
    if not result["by_layer"]:
        del result["by_layer"]
    return result


def pooled_score(per_class: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The lesion types' scores (not unions like "any") pooled over their slices: one headline figure."""
    parts = [score for label, score in per_class.items() if label in LESION_BITS and score["n_slices"]]
    n = sum(score["n_slices"] for score in parts)
    pooled: dict[str, Any] = {"classes": [label for label in per_class if label in LESION_BITS], "n_slices": n,
                              "empty_maps": sum(score["empty_maps"] for score in parts)}
    for key in ("pointing_game", "energy_share", "random_pointing_game", "random_energy_share"):
        pooled[key] = sum(score[key] * score["n_slices"] for score in parts) / n if n else float("nan")
    return pooled


def explain_command(args: argparse.Namespace) -> int:
    """``headct explain CKPT --data CACHE --out DIR [--score] [--limit N] [--method M] [--layer L ...]``."""
    if getattr(args, "method", None):
        placed_cam_class(args.method)  # an unknown name fails here, before any loading
    model, config = load_checkpoint(args.checkpoint)
    model.eval()
    cache = Cache(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = ExplainConfig(split=args.split, limit=args.limit, tolerance=getattr(args, "tolerance", None),
                             layers=getattr(args, "layer", None), method=getattr(args, "method", None),
                             head_only=getattr(args, "head_mask", None))
    if args.score:
        result = score_cache(model, config.labels or [], cache, out, settings)
        result["checkpoint"] = str(args.checkpoint)
        atomic.write_bytes(out / "localisation.json", json.dumps(result, indent=2).encode())
        print(format_table(result))
        print(f"overlays in {out / 'overlays'}; scores in {out / 'localisation.json'}")
        return 0
    drawn = draw_split(model, config, cache, out / "overlays", settings)
    print(f"{drawn} overlays in {out / 'overlays'}")
    return 0


def draw_split(model: nn.Module, config: CheckpointConfig, cache: Cache, folder: Path,
               settings: ExplainConfig) -> int:
    """Overlays of the predicted class for the first ``settings.limit`` slices of a split (no masks needed)."""
    rows = cache.rows(settings.split)[: settings.limit]
    wanted = set(rows.tolist())
    labels = list(config.labels or [])
    drawn = 0
    for shard in tqdm(dict.fromkeys(str(cache.index["shard"][r]) for r in rows), desc="explaining", unit="series"):
        series = np.asarray(cache.series_slices(shard))
        series_rows = cache.series_rows(shard)
        positions = [i for i, r in enumerate(series_rows) if int(r) in wanted]
        logits = series_logits(model, series).slice_logits
        probs = probabilities(logits, config.label_kind, config.applied_temperature)
        by_class: dict[int, list[int]] = {}
        for position in positions:
            by_class.setdefault(int(probs[position].argmax()), []).append(position)
        for class_index, chosen in by_class.items():
            cams = series_maps(model, series, chosen, class_index, settings.layers, settings.batch_size,
                               method=settings.method, head_only=settings.head_only)
            for position, cam in zip(chosen, cams, strict=True):
                name = f"{_row_name(cache, int(series_rows[position]))}_{labels[class_index]}.png"
                write_png(folder / name, overlay(series[position], cam, cache.kind))
                drawn += 1
    return drawn


def format_table(result: dict[str, Any]) -> str:
    """The localisation scores as a fixed-width table (one row per class and layer choice)."""
    header = (f"{'class':<18} {'layers':<28} {'n':>5} {'empty':>5} {'pointing':>9} {'random':>7} "
              f"{'energy':>7} {'random':>7}")
    lines = [header, "-" * len(header)]
    sections = [("combined", result["per_class"])] + list(result.get("by_layer", {}).items())
    for layers, per_class in sections:
        pooled = pooled_score(per_class)
        rows = {**per_class, "pooled (types)": pooled} if pooled["n_slices"] else per_class
        for label, s in rows.items():
            lines.append(f"{label:<18} {layers[-28:]:<28} {s['n_slices']:>5} {s.get('empty_maps', 0):>5} "
                         f"{s['pointing_game']:>9.3f} "
                         f"{s['random_pointing_game']:>7.3f} {s['energy_share']:>7.3f} {s['random_energy_share']:>7.3f}")
    return "\n".join(lines)


# --- helpers -------------------------------------------------------------------

class _SeriesAsSlices(nn.Module):
    """Single-input view of a series-level model: ``[S, 1, H, W]`` slices → ``[S, n]`` logits.

    Grad-CAM batches images; here the batch is the series' slices, so the
    per-slice encoder's activations line up one to one with the outputs.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[:, 0][None])[0]


def _centre_slice_maps(maps: np.ndarray, images: int) -> np.ndarray:
    """One map per image: models that encode each of K stacked slices apart (effnet-lstm)
    give K maps per image at the encoder; the centre slice's is the one predicted."""
    per_image = maps.shape[0] // max(images, 1)
    if per_image <= 1:
        return maps
    return maps.reshape(images, per_image, *maps.shape[1:])[:, per_image // 2]


def _head_only(model: nn.Module, choice: bool | None) -> bool:
    """The head-mask choice: ``choice``, or the model's default (``spec.target_head_mask``)."""
    return bool(getattr(model.spec, "target_head_mask", False)) if choice is None else bool(choice)


def _to_float(t: torch.Tensor) -> torch.Tensor:
    return t.float()  # bf16/fp16 activations under AMP: numpy needs float32


def _to_float_nchw(t: torch.Tensor) -> torch.Tensor:
    return t.float().permute(0, 3, 1, 2)  # Swin stages are [B, H, W, C]


def series_maps(model: nn.Module, series: np.ndarray, positions: Sequence[int], class_index: int,
                layers: Sequence[str] | None, batch_size: int, *, method: str | None = None,
                head_only: bool | None = None) -> np.ndarray:
    """Maps ``[len(positions), H, W]`` for some slices of one series (series-level models see it whole).

    ``layers``, ``method``, ``head_only``: as :func:`gradcam_maps` (None: the model's defaults).
    """
    method = method or target_method(model)
    return series_method_maps(model, series, positions, class_index, [method], layers=layers,
                              batch_size=batch_size, head_only=head_only)[method]


def series_method_maps(model: nn.Module, series: np.ndarray, positions: Sequence[int], class_index: int,
                       methods: Sequence[str], *, layers: Sequence[str] | None = None, batch_size: int = 16,
                       head_only: bool | None = None) -> dict[str, np.ndarray]:
    """:func:`series_maps` for several methods from one pass (:func:`method_maps`)."""
    choice = {"layers": layers, "head_only": head_only}
    if model.spec.level == "series":
        cams = method_maps(model, torch.from_numpy(np.asarray(series)).float(), class_index, methods, **choice)
        return {method: maps[list(positions)] for method, maps in cams.items()}
    stacks = series_stacks(series, model.spec.context, positions)
    return method_maps(model, stacks, class_index, methods, batch_size=batch_size, **choice)


def cache_maps(model: nn.Module, cache: Cache, rows: Sequence[int], class_index: int,
               layers: Sequence[str] | None, batch_size: int, *, method: str | None = None,
               head_only: bool | None = None) -> np.ndarray:
    """Maps for cache rows, series by series, returned in the order of ``rows``."""
    method = method or target_method(model)
    return cache_method_maps(model, cache, rows, class_index, [method], layers=layers, batch_size=batch_size,
                             head_only=head_only)[method]


def cache_method_maps(model: nn.Module, cache: Cache, rows: Sequence[int], class_index: int,
                      methods: Sequence[str], *, layers: Sequence[str] | None = None, batch_size: int = 16,
                      head_only: bool | None = None) -> dict[str, np.ndarray]:
    """:func:`cache_maps` for several methods from one pass per series: ``{method: [len(rows), H, W]}``."""
    by_shard: dict[str, list[int]] = {}
    for row in rows:
        by_shard.setdefault(str(cache.index["shard"][row]), []).append(int(row))
    maps: dict[str, dict[int, np.ndarray]] = {method: {} for method in methods}
    for shard, shard_rows in by_shard.items():
        positions = [int(cache.index["offset"][r]) for r in shard_rows]
        cams = series_method_maps(model, np.asarray(cache.series_slices(shard)), positions, class_index, methods,
                                  layers=layers, batch_size=batch_size, head_only=head_only)
        for method in methods:
            maps[method].update(zip(shard_rows, cams[method], strict=True))
    return {method: np.stack([by_row[int(r)] for r in rows]) for method, by_row in maps.items()}


def lesion_masks(cache: Cache, rows: Sequence[int], bits: int) -> np.ndarray:
    """Boolean ``[N, H, W]``: where each row's mask holds any of ``bits``."""
    return np.stack([(np.asarray(cache.mask(int(r))) & bits) > 0 for r in rows])


def lesion_rows(cache: Cache, rows: np.ndarray, bits: int, limit: int) -> list[int]:
    """Up to ``limit`` rows whose mask has any of ``bits``, spread evenly over the candidates."""
    candidates = [int(r) for r in rows if (mask := cache.mask(int(r))) is not None and np.any(np.asarray(mask) & bits)]
    if len(candidates) <= limit:
        return candidates
    pick = np.linspace(0, len(candidates) - 1, limit).round().astype(int)
    return [candidates[i] for i in pick]


def _row_name(cache: Cache, row: int) -> str:
    return f"{cache.index['study'][row]}_{int(cache.index['slice_index'][row]):03d}"


def _draw_gallery(folder: Path, cache: Cache, rows: Sequence[int], cams: np.ndarray, masks: np.ndarray, label: str) -> None:
    """One overlay PNG per slice (lesion outline in white) and a montage ``gallery_<label>.png``."""
    tiles = []
    for row, cam, mask in zip(rows, cams, masks, strict=False):
        rgb = overlay(np.asarray(cache.slice(row)), cam, cache.kind)
        outline = mask & ~ndimage.binary_erosion(mask)
        rgb[outline] = 255
        write_png(folder / f"{_row_name(cache, row)}_{label}.png", rgb)
        tiles.append(rgb)
    if tiles:
        columns = min(4, len(tiles))
        blank = np.zeros_like(tiles[0])
        tiles += [blank] * (-len(tiles) % columns)
        grid = np.concatenate([np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)])
        write_png(folder / f"gallery_{label}.png", grid)
