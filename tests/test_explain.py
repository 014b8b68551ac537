"""Grad-CAM maps (per class, batched, hooks released, AMP), overlays and the localisation scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from headct.explain import (
    CAM_METHODS,
    LABEL_BITS,
    ExplainConfig,
    default_tolerance,
    energy_inside,
    format_table,
    gradcam_maps,
    head_mask,
    method_maps,
    overlay,
    pointing_hit,
    pooled_score,
    random_maps,
    score_cache,
    score_maps,
    to_original,
)
from headct.models import ModelSpec, build_model

SIDE = 32


class BlobModel(nn.Module):
    """Class 0 rises with bright tissue (a blood-like blob), class 1 falls with it.

    Its target layer's activation is the input's brightness, so a correct
    Grad-CAM of class 0 peaks on the blob, and class 1's map (negative weights,
    ReLU'd away) is empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        nn.init.constant_(self.features.weight, 1.0 / 9)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
        self.spec = ModelSpec(name="blob", target_layers=["features"], context=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.features(x / 100.0))
        return self.head(a.mean(dim=(2, 3)))


def _blob_slices(centres: list[tuple[int, int]], radius: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU slices (brain 30 HU, a 70 HU blob per slice) and the blob masks."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    slices, masks = [], []
    for cy, cx in centres:
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        slices.append(np.where(blob, 70, 30).astype(np.int16))
        masks.append(blob)
    return np.stack(slices), np.stack(masks)


def test_class_maps_peak_on_the_evidence_and_hooks_are_released() -> None:
    model = BlobModel()
    hu, masks = _blob_slices([(8, 8), (20, 24), (25, 5)])
    x = torch.from_numpy(hu).float()[:, None]
    cams = gradcam_maps(model, x, class_index=0, batch_size=2)  # two batches
    assert cams.shape == (3, SIDE, SIDE) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() == pytest.approx(1.0, abs=1e-5)
    for cam, mask in zip(cams, masks, strict=True):
        assert mask[np.unravel_index(cam.argmax(), cam.shape)]
        assert energy_inside(cam, mask) > mask.mean()  # more than a uniform map would put there
    against = gradcam_maps(model, x, class_index=1)
    assert against.max() < 1e-3  # class 1 has no positive evidence anywhere
    assert not model.features._forward_hooks and not model.features._backward_hooks


def test_maps_under_bf16_autocast_on_cpu() -> None:
    model = BlobModel()
    hu, masks = _blob_slices([(10, 20)])
    x = torch.from_numpy(hu).float()[:, None]
    full = gradcam_maps(model, x, 0)
    mixed = gradcam_maps(model, x, 0, amp="bf16")
    assert mixed.dtype == np.float32
    assert np.unravel_index(mixed[0].argmax(), mixed[0].shape) == np.unravel_index(full[0].argmax(), full[0].shape)
    assert np.abs(mixed - full).max() < 0.1


class StridedBlobModel(BlobModel):
    """Blob evidence through three 3x3 stride-2 convs with symmetric padding: a stride-8 "padded" grid."""

    def __init__(self, grid: str) -> None:
        super().__init__()
        convs = [nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False) for _ in range(2)]
        self.features = nn.Sequential(*convs, nn.Conv2d(1, 2, 3, stride=2, padding=1, bias=False))
        for conv in self.features:
            nn.init.constant_(conv.weight, 1.0 / 9)
        self.spec = ModelSpec(name="strided", target_layers=["features"], target_grid=grid)


def test_padded_grid_maps_are_placed_on_the_evidence_not_half_a_cell_off() -> None:
    yy, xx = np.mgrid[:64, :64]
    hu = np.where((yy - 24) ** 2 + (xx - 24) ** 2 <= 9, 70, 30).astype(np.float32)  # cell 3 looks at pixel 24
    x = torch.from_numpy(hu)[None, None]
    placed = gradcam_maps(StridedBlobModel("padded"), x, 0)[0]
    naive = gradcam_maps(StridedBlobModel("centred"), x, 0)[0]  # the library's resize: cell 3 at pixel 28
    assert np.abs(np.subtract(np.unravel_index(placed.argmax(), placed.shape), (24, 24))).max() <= 1
    assert np.abs(np.subtract(np.unravel_index(naive.argmax(), naive.shape), (24, 24))).min() >= 3
    assert placed.min() >= 0 and placed.max() == pytest.approx(1.0, abs=1e-5)


class RegionModel(nn.Module):
    """Class 0 is the mean of stride-8 features inside a known window (pixels 8..31 of 64); class 1 its negative.

    The features are local brightness through three 3x3 stride-2 convs with
    symmetric padding (a "padded" grid), so only evidence inside the window
    moves the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*[nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False) for _ in range(2)],
                                      nn.Conv2d(1, 2, 3, stride=2, padding=1, bias=False))
        for conv in self.features:
            nn.init.constant_(conv.weight, 1.0 / 9)
        window = torch.zeros(8, 8)
        window[1:4, 1:4] = 1.0  # cells 1..3 look at pixels 8, 16, 24 (cell o at 8*o)
        self.register_buffer("window", window)
        self.spec = ModelSpec(name="region", target_layers=["features"], target_grid="padded")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (torch.relu(self.features(x / 100.0)) * self.window).sum(dim=(1, 2, 3)) / self.window.sum()
        return torch.stack([inside, -inside], dim=1)


def _two_blobs(outside_hu: float = 70.0) -> tuple[torch.Tensor, np.ndarray]:
    """A 64-px HU slice with a 70 HU blob in RegionModel's window, another blob out of it (first in raster
    order, so an arg-max tie would land there); the window's mask."""
    yy, xx = np.mgrid[:64, :64]
    hu = np.full((64, 64), 30.0, np.float32)
    for (cy, cx), value in (((16, 16), 70.0), ((8, 52), outside_hu)):
        hu[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = value
    window = (yy >= 4) & (yy <= 28) & (xx >= 4) & (xx <= 28)  # the window's cells, half a cell either side
    return torch.from_numpy(hu)[None, None], window


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_method_peaks_inside_the_region_the_output_reads(method: str) -> None:
    x, window = _two_blobs(outside_hu=55.0)  # fainter outside: even channel-weighted Grad-CAM must prefer the read blob
    cams = gradcam_maps(RegionModel(), x.repeat(2, 1, 1, 1), 0, method=method)
    assert cams.shape == (2, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() == pytest.approx(1.0, abs=1e-5)
    peak = np.unravel_index(cams[0].argmax(), cams[0].shape)
    assert window[peak] and np.abs(np.subtract(peak, (16, 16))).max() <= 2  # on the blob the output reads
    assert gradcam_maps(RegionModel(), x, 1, method=method).max() < 1e-3  # no positive evidence for class 1


def test_elementwise_methods_leave_out_evidence_the_output_ignores() -> None:
    """Grad-CAM weighs whole channels, so the ignored blob lights up as much as the read one; HiResCAM and
    LayerCAM weigh each cell by its own gradient, so it stays dark: the method choice reaches the maps."""
    x, _ = _two_blobs()
    model = RegionModel()
    channel = gradcam_maps(model, x, 0, method="gradcam")[0]
    assert channel[8, 52] > 0.8 * channel[16, 16]
    for method in ("hirescam", "layercam"):
        cell = gradcam_maps(model, x, 0, method=method)[0]
        assert cell[8, 52] < 0.05 and cell[16, 16] > 0.9


def test_several_methods_from_one_pass_equal_each_method_alone() -> None:
    x, _ = _two_blobs()
    x = x.repeat(3, 1, 1, 1)
    together = method_maps(RegionModel(), x, 0, list(CAM_METHODS), batch_size=2, head_only=True)
    assert list(together) == list(CAM_METHODS)
    for method, maps in together.items():
        np.testing.assert_allclose(maps, gradcam_maps(RegionModel(), x, 0, method=method, head_only=True), atol=1e-6)
    assert not np.allclose(together["gradcam"], together["hirescam"])


def test_unknown_method_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown map method 'scorecam'.*hirescam"):
        gradcam_maps(BlobModel(), torch.zeros(1, 1, 8, 8), 0, method="scorecam")


def _head_slice() -> np.ndarray:
    """64-px HU slice: air, a head disk (30 HU) holding a dark hole (-600 HU), a bright table strip (70 HU) apart."""
    yy, xx = np.mgrid[:64, :64]
    hu = np.full((64, 64), -1000, np.int16)
    hu[(yy - 28) ** 2 + (xx - 32) ** 2 <= 20**2] = 30
    hu[(yy - 28) ** 2 + (xx - 32) ** 2 <= 3**2] = -600  # air-dark, but inside the skull
    hu[58:62, 4:60] = 70  # the table: tissue-bright, outside the head
    return hu


def test_head_mask_is_the_head_with_its_holes_not_the_air_or_the_table() -> None:
    hu = _head_slice()
    inside = head_mask(hu)
    assert inside[28, 32] and inside[28, 14]  # the hole and the brain
    assert not inside[0, 0] and not inside[60, 10] and not inside[28, 55]  # air, table, air beside the head
    assert head_mask(np.stack([hu, hu])).shape == (2, 64, 64)
    grey = np.where(hu > 0, 120, 0).astype(np.uint8)  # an 8-bit slice: air and the hole at 0
    assert head_mask(grey, "uint8")[28, 32] and not head_mask(grey, "uint8")[0, 0]
    assert not head_mask(np.full((8, 8), -1000, np.int16)).any()


def test_head_mask_zeroes_the_map_in_air() -> None:
    """BlobModel's evidence is brightness: the table is the brightest thing, so the bare map peaks there;
    the head-masked map is zero outside the head and peaks inside it."""
    hu = _head_slice()
    x = torch.from_numpy(hu).float()[None, None]
    bare = gradcam_maps(BlobModel(), x, 0, head_only=False)[0]
    assert not head_mask(hu)[np.unravel_index(bare.argmax(), bare.shape)]
    masked = gradcam_maps(BlobModel(), x, 0, head_only=True)[0]
    assert masked[~head_mask(hu)].max() == 0.0 and masked.max() == pytest.approx(1.0, abs=1e-5)
    assert head_mask(hu)[np.unravel_index(masked.argmax(), masked.shape)]


def test_model_defaults_choose_the_method_and_the_head_mask() -> None:
    hu = _head_slice()
    x = torch.from_numpy(hu).float()[None, None]
    model = BlobModel()
    model.spec = ModelSpec(name="blob", target_layers=["features"], target_method="hirescam", target_head_mask=True)
    assert np.array_equal(gradcam_maps(model, x, 0), gradcam_maps(model, x, 0, method="hirescam", head_only=True))


class NhwcModel(BlobModel):
    """Same evidence, but the target layer hands out [B, H, W, C] like a Swin stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = nn.Identity()
        self.spec = ModelSpec(name="nhwc", target_layers=["stage"], target_layout="nhwc")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stage(torch.relu(self.features(x / 100.0)).permute(0, 2, 3, 1))
        return self.head(a.mean(dim=(1, 2)))


def test_nhwc_target_layers_are_reshaped() -> None:
    hu, masks = _blob_slices([(6, 26)])
    cam = gradcam_maps(NhwcModel(), torch.from_numpy(hu).float()[:, None], 0)[0]
    assert masks[0][np.unravel_index(cam.argmax(), cam.shape)]


@pytest.mark.parametrize("name, kwargs, shape", [
    ("effnet-2d", {}, (2, 1)),
    ("strokenext-atto", {}, (2, 1)),       # both encoders, combined
])
def test_every_kind_of_registered_model_gives_one_map_per_image(name: str, kwargs: dict, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, 2, **kwargs).eval()
    side = 64  # the last stage is 2x2 here (1x1 at 32 px would leave nothing to locate)
    x = torch.from_numpy(np.random.default_rng(0).integers(-100, 200, (*shape, side, side))).float()
    cams = gradcam_maps(model, x, 1)
    assert cams.shape == (shape[0], side, side)
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() == pytest.approx(1.0, abs=1e-5)
    if name.startswith("strokenext"):
        alone = [gradcam_maps(model, x, 1, layers=[layer]) for layer in model.spec.target_layers]
        assert all(a.shape == cams.shape for a in alone)
        assert not np.allclose(alone[0], alone[1])  # the two encoders look at different things


class PerSliceModel(BlobModel):
    """effnet-lstm's shape: each of the K stacked slices goes through the encoder on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = ModelSpec(name="per-slice", target_layers=["features"], context=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, k = x.shape[:2]
        a = torch.relu(self.features(x.reshape(batch * k, 1, *x.shape[2:]) / 100.0))  # [B*K, C, H, W]
        return self.head(a.mean(dim=(2, 3)).reshape(batch, k, -1).mean(dim=1))


def test_per_slice_encoders_give_the_centre_slice_map() -> None:
    hu, masks = _blob_slices([(5, 5), (16, 16), (27, 27)])  # the centre slice's blob is in the middle
    x = torch.from_numpy(np.stack([hu, hu[::-1]])).float()  # two stacks [2, 3, H, W]; both centres (16, 16)
    cams = gradcam_maps(PerSliceModel(), x, 0)
    assert cams.shape == (2, SIDE, SIDE)
    for cam in cams:
        assert masks[1][np.unravel_index(cam.argmax(), cam.shape)]


def test_series_model_is_explained_per_slice() -> None:
    torch.manual_seed(0)
    model = build_model("study-seq", 2, encoder="mobilenetv2", hidden=8, layers=1).eval()
    series = torch.from_numpy(np.random.default_rng(1).integers(-100, 200, (5, SIDE, SIDE))).float()
    cams = gradcam_maps(model, series, 0)
    assert cams.shape == (5, SIDE, SIDE) and np.isfinite(cams).all()


def test_to_original_undoes_padding_and_resampling() -> None:
    cam = np.zeros((SIDE, SIDE), np.float32)
    cam[:, : SIDE // 4] = 1.0  # left quarter of the padded square
    original = to_original(cam, (20, 40))  # wide slice: padded above and below, not at the sides
    assert original.shape == (20, 40)
    assert original[:, :8].min() > 0.9 and original[:, 12:].max() < 0.1
    tall = to_original(cam, (40, 20))  # tall slice: 10 columns of padding on the left are cropped
    assert tall.shape == (40, 20) and tall[:, 2:].max() < 0.1


def test_overlay_is_jet_on_the_brain_window() -> None:
    hu, masks = _blob_slices([(16, 16)])
    cam = masks[0].astype(np.float32)
    rgb = overlay(hu[0], cam)
    assert rgb.shape == (SIDE, SIDE, 3) and rgb.dtype == np.uint8
    assert rgb[16, 16, 0] > rgb[16, 16, 2]  # hot spot red
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # cold background blue


def test_pointing_game_tolerance() -> None:
    cam = np.zeros((20, 20))
    cam[5, 5] = 1
    mask = np.zeros((20, 20), bool)
    mask[5, 8] = True
    assert not pointing_hit(cam, mask, tolerance=0)
    assert not pointing_hit(cam, mask, tolerance=2)
    assert pointing_hit(cam, mask, tolerance=3)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 19), st.integers(1, 19), st.integers(1, 10))
def test_energy_share_of_a_uniform_map_is_the_mask_area(h: int, w: int, seed: int) -> None:
    mask = np.zeros((20, 20), bool)
    mask[:h, :w] = True
    assert energy_inside(np.ones((20, 20)), mask) == pytest.approx(h * w / 400)
    noise = np.random.default_rng(seed).random((20, 20))
    assert 0 <= energy_inside(noise, mask) <= 1


def test_random_maps_are_smooth_and_normalised() -> None:
    maps = random_maps(4, (64, 64), np.random.default_rng(0))
    assert maps.shape == (4, 64, 64)
    assert maps.min(axis=(1, 2)) == pytest.approx([0] * 4) and maps.max(axis=(1, 2)) == pytest.approx([1] * 4)
    assert np.abs(np.diff(maps, axis=2)).mean() < 0.05  # neighbours agree: not white noise


class ToyCache:
    """The slice of ``headct.data.cache.Cache``'s reading API that scoring uses."""

    def __init__(self, slices: np.ndarray, masks: np.ndarray) -> None:
        self.slices, self.masks = slices, masks
        n = len(slices)
        self.size, self.kind, self.has_masks, self.path = SIDE, "hu", True, Path("toy")
        self.index = {"row": np.arange(n), "shard": np.array(["s0"] * n), "offset": np.arange(n),
                      "study": np.array(["study1"] * n), "slice_index": np.arange(n)}

    def rows(self, split: str) -> np.ndarray:
        return self.index["row"]

    def mask(self, row: int) -> np.ndarray:
        return self.masks[row]

    def slice(self, row: int) -> np.ndarray:
        return self.slices[row]

    def series_slices(self, shard: str) -> np.ndarray:
        return self.slices


def test_score_cache_beats_the_random_baseline_and_draws(tmp_path: Path) -> None:
    centres = [(6 + 4 * i, 26 - 4 * i) for i in range(5)]
    hu, masks = _blob_slices(centres)
    bits = np.where(masks, LABEL_BITS["intraparenchymal"], 0).astype(np.uint8)
    labels = ["intraparenchymal", "subdural"]
    result = score_cache(BlobModel(), labels, ToyCache(hu, bits), tmp_path, ExplainConfig(limit=4, tolerance=1))
    scores = result["per_class"]["intraparenchymal"]
    assert scores["n_slices"] == 4  # limit: 4 of the 5 lesion slices
    assert scores["pointing_game"] == 1.0
    assert scores["random_pointing_game"] < 0.5
    assert scores["energy_share"] > 2 * scores["random_energy_share"]
    assert "subdural" not in result["per_class"]  # no subdural lesions: not scored
    gallery = Image.open(tmp_path / "overlays" / "gallery_intraparenchymal.png")
    assert gallery.size == (4 * SIDE, SIDE)
    assert len(list((tmp_path / "overlays").glob("study1_*_intraparenchymal.png"))) == 4
    table = format_table(result)
    assert "intraparenchymal" in table and "1.000" in table


def test_random_baseline_confined_to_a_region_and_left_out() -> None:
    masks = np.zeros((3, 32, 32), bool)
    masks[:, 10:20, 5:15] = True
    cams = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    free = score_maps(cams, masks, tolerance=0)
    assert free.random_energy_share == pytest.approx(0.1, abs=0.05)  # the mask is a tenth of the slice
    confined = score_maps(cams, masks, tolerance=0, within=masks)  # random maps only where the lesion is
    assert confined.random_energy_share == pytest.approx(1.0) and confined.random_pointing_game == 1.0
    assert confined.pointing_game == free.pointing_game  # the maps' own scores do not move
    skipped = score_maps(cams, masks, tolerance=0, random_per_slice=0)
    assert np.isnan(skipped.random_pointing_game) and skipped.pointing_game == free.pointing_game


def test_score_maps_empty_is_nan() -> None:
    score = score_maps(np.zeros((0, 4, 4)), np.zeros((0, 4, 4), bool))
    assert score.n_slices == 0 and np.isnan(score.pointing_game)


def test_pooled_score_weights_lesion_types_by_slices_and_leaves_out_unions() -> None:
    def score(n: int, hit: float) -> dict:
        return {"n_slices": n, "empty_maps": 1, "pointing_game": hit, "energy_share": hit / 10,
                "random_pointing_game": 0.1, "random_energy_share": 0.01}

    pooled = pooled_score({"subdural": score(30, 0.8), "epidural": score(10, 0.4), "any": score(40, 0.0)})
    assert pooled["n_slices"] == 40 and pooled["empty_maps"] == 2
    assert pooled["pointing_game"] == pytest.approx(0.7)  # (30 * 0.8 + 10 * 0.4) / 40; "any" left out
    assert pooled["random_pointing_game"] == pytest.approx(0.1)
    assert "pooled (types)" in format_table({"per_class": {"subdural": score(30, 0.8)}})


def test_default_tolerance_is_15_px_at_224_scaled() -> None:
    assert default_tolerance(224) == 15
    assert default_tolerance(96) == 6 and default_tolerance(192) == 13
    assert default_tolerance(8) == 1  # never zero


def test_all_zero_map_is_counted_empty_and_a_miss() -> None:
    mask = np.zeros((2, 8, 8), bool)
    mask[:, 0:2, 0:2] = True  # a lesion at pixel (0, 0), where an all-zero map's arg-max falls
    cams = np.zeros((2, 8, 8), np.float32)
    cams[1, 1, 1] = 1.0
    score = score_maps(cams, mask, tolerance=0)
    assert score.empty_maps == 1
    assert score.pointing_game == 0.5  # the empty map is a miss even though argmax lands in the lesion


def test_spec_without_target_layers_is_refused() -> None:
    model = BlobModel()
    model.spec = ModelSpec(name="bare", target_layers=[], level="slice")
    with pytest.raises(ValueError, match="no Grad-CAM target layers"):
        gradcam_maps(model, torch.zeros(1, 1, 8, 8), 0)


def test_explain_command_on_a_phantom_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from headct.checkpoint import save_checkpoint
    from headct.cli import main
    from headct.data.prepare import PrepareConfig, prepare
    from headct.data.splits import SplitConfig
    from headct.phantom.dataset import PhantomConfig, write_phantom
    from headct.tasks import RSNA_LABELS

    write_phantom(PhantomConfig(out=tmp_path / "phantom", studies=4, size=64, slices=6, seed=3, difficulty=0.2))
    prepare(PrepareConfig(input=str(tmp_path / "phantom"), format="rsna", out=str(tmp_path / "cache"), size=64,
                          split=SplitConfig(seed=0, fractions=(0.0, 0.0, 1.0))))
    torch.manual_seed(0)
    save_checkpoint(build_model("mobilenetv2", len(RSNA_LABELS)), tmp_path / "ckpt", size=64, task="rsna",
                    labels=list(RSNA_LABELS), label_kind="multilabel")
    out = tmp_path / "explain"
    assert main(["explain", str(tmp_path / "ckpt"), "--data", str(tmp_path / "cache"), "--out", str(out),
                 "--score", "--limit", "2"]) == 0
    result = json.loads((out / "localisation.json").read_text())
    assert result["target_layers"] == ["encoder.conv_head"] and result["split"] == "test"
    assert result["method"] == "gradcam" and result["head_only"] is False  # mobilenetv2's defaults
    assert "any" in result["per_class"]  # the phantom puts a bleed in most studies
    for scores in result["per_class"].values():
        assert 1 <= scores["n_slices"] <= 2
        assert 0 <= scores["pointing_game"] <= 1 and 0 <= scores["random_energy_share"] <= 1
    assert "pointing" in capsys.readouterr().out
    assert list((out / "overlays").glob("gallery_*.png"))
    plain = tmp_path / "plain"  # without --score: overlays of the predicted class, no masks needed
    assert main(["explain", str(tmp_path / "ckpt"), "--data", str(tmp_path / "cache"), "--out", str(plain),
                 "--limit", "3", "--method", "layercam", "--head-mask"]) == 0
    assert len(list((plain / "overlays").glob("*.png"))) == 3
    capsys.readouterr()
    assert main(["explain", str(tmp_path / "ckpt"), "--data", str(tmp_path / "cache"), "--out", str(tmp_path / "bad"),
                 "--method", "scorecam"]) != 0
    error = capsys.readouterr().err.strip()
    assert "unknown map method 'scorecam'" in error and "\n" not in error


def test_slices_of_two_8bit_images_are_explained_and_drawn_on_the_first() -> None:
    from headct.explain import series_maps

    torch.manual_seed(0)
    model = build_model("effnet-2.5d", 2, input_kind="uint8", image_channels=2, context=1).eval()
    series = np.random.default_rng(2).integers(0, 256, (4, 2, 96, 96)).astype(np.uint8)  # [S, C, H, W], 3x3 cells
    cams = series_maps(model, series, [0, 3], 1, None, 8)
    by_hand = np.stack([np.concatenate([series[0], series[0], series[1]]),  # slice-major (brain, bone) planes,
                        np.concatenate([series[2], series[3], series[3]])])  # the end slice repeated
    expected = gradcam_maps(model, torch.from_numpy(by_hand).float(), 1)
    assert cams.shape == (2, 96, 96) and cams.max() > 0
    np.testing.assert_allclose(cams, expected, atol=1e-5)
    cam = np.zeros((96, 96), np.float32)
    np.testing.assert_array_equal(overlay(series[1], cam, "uint8"), overlay(series[1, 0], cam, "uint8"))
