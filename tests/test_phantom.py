"""Tests for the synthetic head-CT phantom: HU per tissue and lesion, masks vs labels, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from headct.phantom import (
    HEMORRHAGE_TYPES,
    LESION_BITS,
    RESCALES,
    PhantomConfig,
    generate_study,
    plan_studies,
    write_phantom,
)
from headct.phantom.writers import brain_window_png

SIZE = 128


IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Per-slice 1-pixel erosion: away from partial-volume edges (blur, neighbours)."""
    return ndimage.binary_erosion(mask, structure=IN_PLANE)


@pytest.fixture(scope="module")
def normal_study():
    return generate_study(3, size=256, slices=16)


@pytest.mark.parametrize("group, low, high, erosions", [
    ("scalp", 20, 60, 1), ("skull", 700, 1800, 1), ("csf", 0, 15, 2), ("gray", 35, 45, 1), ("white", 25, 32, 1),
    ("deep_gray", 30, 42, 1), ("air", -1010, -990, 1),
])
def test_tissue_hu_means_are_those_of_head_ct(normal_study, group, low, high, erosions):
    inside = normal_study.tissue_mask(group)
    for _ in range(erosions):  # the thin CSF layer under the skull is all partial volume with bone
        inside = _eroded(inside)
    inside &= normal_study.masks == 0
    assert inside.sum() > 200, group
    mean = float(normal_study.hu[inside].mean())
    assert low <= mean <= high, (group, mean)


def test_skull_has_a_lower_density_diploe_and_brain_shows_gray_white_contrast(normal_study):
    study = normal_study
    diploe = _eroded(study.tissue_mask("diploe"))
    tables = _eroded(study.tissue_mask("skull_tables"))
    assert study.hu[diploe].mean() < study.hu[tables].mean() - 300
    gray = study.hu[_eroded(study.tissue_mask("gray"))].mean()
    white = study.hu[_eroded(study.tissue_mask("white"))].mean()
    assert gray - white > 6


def test_noise_is_ct_like():
    clean = generate_study(5, size=SIZE, slices=12, noise=False)
    noisy = generate_study(5, size=SIZE, slices=12)
    brain = _eroded(_eroded(clean.tissue_mask("white")))
    residual = (noisy.hu - clean.hu)[brain]
    assert 2.0 < residual.std() < 9.0
    assert abs(residual.mean()) < 1.5


def test_anatomy_changes_from_base_to_vertex():
    study = generate_study(11, size=SIZE, slices=12, noise=False)
    per_slice = {name: study.tissue_mask(name).reshape(12, -1).sum(axis=1) for name in ("globe", "ventricle", "skull")}
    globes = np.flatnonzero(per_slice["globe"])
    ventricles = np.flatnonzero(per_slice["ventricle"] > 20)
    assert globes.size and globes.max() < 5  # orbits low
    assert ventricles.size and 3 <= np.median(ventricles) <= 8  # lateral ventricles in the middle
    head = (study.tissue != 0).reshape(12, -1).sum(axis=1)
    assert head[-1] < 0.8 * head.max()  # small vertex sections


@pytest.mark.parametrize("kind, low, high", [
    ("epidural", 50, 80), ("subdural", 50, 80), ("subarachnoid", 40, 70), ("intraparenchymal", 50, 90),
    ("intraventricular", 50, 80), ("ischemic", 15, 25),
])
def test_lesion_hu_through_its_mask(kind, low, high):
    bit = LESION_BITS[kind]
    clean = generate_study([21, bit], size=SIZE, slices=12, lesions=[kind], noise=False)
    mask = (clean.masks & bit) != 0
    assert mask.sum() > 10
    assert low <= float(clean.hu[mask].mean()) <= high
    noisy = generate_study([21, bit], size=SIZE, slices=12, lesions=[kind])
    np.testing.assert_array_equal(noisy.masks, clean.masks)
    core = _eroded(mask) if _eroded(mask).sum() > 20 else mask
    tolerance = 12 if kind == "subarachnoid" else 5  # thin sulcal blood blurs into the cortex
    assert low - tolerance <= float(noisy.hu[core].mean()) <= high + tolerance
    # only this lesion's bit is set, on at least two contiguous slices
    assert set(np.unique(clean.masks)) == {0, bit}
    on = np.flatnonzero(mask.reshape(12, -1).any(axis=1))
    assert on.size >= 2 and np.all(np.diff(on) == 1)


def test_ischemia_erases_gray_white_difference_and_oedema_rings_a_haematoma():
    study = generate_study(8, size=256, slices=16, lesions=["ischemic"], noise=False)
    region = (study.masks & LESION_BITS["ischemic"]) != 0
    gray = study.hu[region & study.tissue_mask("gray")].mean()
    white = study.hu[region & study.tissue_mask("white")].mean()
    assert abs(gray - white) < 3
    bleed = generate_study(9, size=256, slices=16, lesions=["intraparenchymal"], noise=False)
    haematoma = (bleed.masks & LESION_BITS["intraparenchymal"]) != 0
    ring = ndimage.binary_dilation(haematoma, structure=IN_PLANE, iterations=2) & ~haematoma & bleed.tissue_mask("white")
    assert ring.sum() > 5 and bleed.hu[ring].mean() < 24


def test_slice_labels_follow_the_masks_exactly():
    study = generate_study(4, size=SIZE, slices=12, lesions=["epidural", "subdural", "intraventricular"])
    labels = study.slice_labels()
    for name, bit in LESION_BITS.items():
        expected = ((study.masks & bit) != 0).reshape(12, -1).any(axis=1)
        np.testing.assert_array_equal(labels[name], expected.astype(np.uint8))
    bleed = np.zeros(12, dtype=bool)
    for name in HEMORRHAGE_TYPES:
        bleed |= labels[name].astype(bool)
    np.testing.assert_array_equal(labels["any"], bleed.astype(np.uint8))
    assert labels["any"].any()


def test_difficulty_shrinks_lesions_and_contrast():
    easy = generate_study(30, size=SIZE, slices=12, lesions=["intraparenchymal"], difficulty=0.0, noise=False)
    hard = generate_study(30, size=SIZE, slices=12, lesions=["intraparenchymal"], difficulty=2.0, noise=False)
    bit = LESION_BITS["intraparenchymal"]
    assert ((easy.masks & bit) != 0).sum() > ((hard.masks & bit) != 0).sum()
    assert easy.hu[(easy.masks & bit) != 0].mean() > hard.hu[(hard.masks & bit) != 0].mean()


def test_layer_codes_count_the_surfaces_each_cell_lies_inside():
    # the shell's banded construction must equal six comparisons per cell, whatever the
    # columns (ties included), the bounds (nested or not) and the row estimates
    from headct.phantom.anatomy import _layer_codes

    rng = np.random.default_rng(0)
    for trial in range(300):
        angles, width = int(rng.integers(1, 20)), int(rng.integers(0, 40))
        radius = np.sort(rng.uniform(0, 10, (width, angles)).astype(np.float32), axis=0)
        if trial % 3 == 0 and width:
            radius[width // 2:] = radius[[width // 2]]  # ties
        bounds = rng.uniform(-1, 11, (6, angles)).astype(np.float32)
        if trial % 2:
            bounds = -np.sort(-bounds, axis=0)  # nested, outermost first, as the head's surfaces
        if width and trial % 5 == 0:
            bounds[2] = radius[min(3, width - 1)]  # a bound exactly on a cell
        estimates = rng.uniform(-5, width + 5, (6, angles)).astype(np.float32)
        codes = np.full((width, angles), 99, dtype=np.uint8)
        _layer_codes(radius, bounds, estimates, codes)
        np.testing.assert_array_equal(codes, (radius[None] < bounds[:, None]).sum(axis=0))


def test_a_blob_section_from_its_stencil_is_the_section_computed_at_that_height():
    from headct.phantom.anatomy import _blob_section, blob_section_mask, make_grid, sample_anatomy

    anatomy = sample_anatomy(np.random.default_rng(5))
    grid = make_grid(anatomy, 192, 230.0, (2.0, -3.0), 0.1)
    checked = 0
    for blob in anatomy.blobs:
        for frac in (-0.95, -0.6, -0.2, 0.0, 0.3, 0.7, 0.99):
            z = blob.center[2] + frac * blob.axes[2]
            direct, fast = blob_section_mask(blob, z, grid), _blob_section(blob, z, grid)
            if direct is None:
                assert fast is None or not fast[1].any()
                continue
            canvas_direct = np.zeros((192, 192), dtype=bool)
            canvas_direct[direct[0]] = direct[1]
            canvas_fast = np.zeros((192, 192), dtype=bool)
            canvas_fast[fast[0]] = fast[1]
            np.testing.assert_array_equal(canvas_fast, canvas_direct)
            within = tuple(slice(d.start - f.start, d.stop - f.start) for d, f in zip(direct[0], fast[0], strict=True))
            np.testing.assert_allclose(fast[2]()[within], direct[2], rtol=1e-4, atol=1e-5)  # the folia's q
            checked += int(direct[1].sum())
    assert checked > 10000


def test_a_study_rendered_into_reused_buffers_equals_one_in_fresh_arrays():
    from headct.phantom.generator import StudyBuffers

    buffers = StudyBuffers()
    first = generate_study(4, size=64, slices=6, lesions=["subdural", "intraventricular"], buffers=buffers)
    assert first.masks.any()  # the next study must not inherit these bits
    reused = generate_study(5, size=64, slices=6, buffers=buffers)
    assert np.shares_memory(reused.hu, first.hu)
    fresh = generate_study(5, size=64, slices=6)
    for name in ("hu", "masks", "tissue"):
        np.testing.assert_array_equal(getattr(reused, name), getattr(fresh, name))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rsna_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rsna")
    write_phantom(PhantomConfig(out=out, studies=5, layout="rsna", seed=7, size=64, slices=8))
    return out


def test_same_seed_gives_identical_bytes(rsna_dir, tmp_path):
    write_phantom(PhantomConfig(out=tmp_path / "again", studies=5, layout="rsna", seed=7, size=64, slices=8))
    first, second = _files(rsna_dir), _files(tmp_path / "again")
    assert first.keys() == second.keys() and len(first) > 40
    assert all(first[name] == second[name] for name in first)
    write_phantom(PhantomConfig(out=tmp_path / "other", studies=5, layout="rsna", seed=8, size=64, slices=8))
    other = _files(tmp_path / "other")
    assert not {n for n in first if n.startswith("dicom/")} & set(other)  # other seed, other UIDs


def test_workers_write_the_same_bytes_as_one_process(rsna_dir, tmp_path):
    write_phantom(PhantomConfig(out=tmp_path / "pooled", studies=5, layout="rsna", seed=7, size=64, slices=8,
                                workers=2))
    first, pooled = _files(rsna_dir), _files(tmp_path / "pooled")
    assert first.keys() == pooled.keys() and len(first) > 40
    assert [name for name in first if first[name] != pooled[name]] == []
    with pytest.raises(ValueError, match="workers"):
        PhantomConfig(out=tmp_path / "none", workers=0)


def test_dicoms_round_trip_through_plain_pydicom(rsna_dir):
    config = PhantomConfig(out=rsna_dir, studies=5, layout="rsna", seed=7, size=64, slices=8)
    seen_rescales = set()
    for plan in plan_studies(config):
        study = generate_study(plan.seed(config), patient_seed=plan.patient_seed(config), size=64, slices=8,
                               lesions=plan.lesions)
        files = sorted((rsna_dir / "dicom" / plan.study_uid).glob("*.dcm"))
        assert len(files) == 8
        datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
        for k, ds in enumerate(datasets):
            assert ds.Modality == "CT" and ds.PatientID == plan.patient_id and ds.StudyInstanceUID == plan.study_uid
            assert not (ds.BitsStored == 12 and ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) > -100)
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            hu = ds.pixel_array.astype(np.float64) * slope + intercept
            np.testing.assert_allclose(hu, study.hu[k], atol=slope / 2 + 1e-3)
            assert float(ds.PixelSpacing[0]) == pytest.approx(study.pixel_spacing, rel=1e-5)
            seen_rescales.add((int(ds.BitsStored), int(ds.PixelRepresentation), intercept, slope))
        positions = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        assert np.allclose(np.diff(positions), study.slice_thickness, atol=1e-3)
    assert len(seen_rescales) == len(RESCALES)


@pytest.mark.parametrize("tilt, tags, descending, uids", [
    (0.0, (), False, ["1.2.3.3.1", "1.2.3.3.2", "1.2.3.3.3"]),
    (12.0, (("ConvolutionKernel", "H30s"), ("InstanceNumber", 7), ("ImageType", ["DERIVED", "SECONDARY"])), True,
     ["1.2.3.3.1", "1.2.3.3.22", "1.2.3.3.3"]),  # UIDs of odd and even length: the meta group's length differs
])
def test_dicom_files_are_the_bytes_pydicom_itself_writes(tmp_path, tilt, tags, descending, uids):
    # the series header is encoded once and joined with each slice's elements: the result
    # must be byte for byte what Dataset.save_as writes for the whole data set
    from headct.phantom.writers import (
        SeriesInfo,
        _file_meta,
        _series_header,
        _slice_elements,
        write_dicom_series,
    )

    hu = np.random.default_rng(0).normal(0, 400, (3, 16, 20)).astype(np.float32)
    info = SeriesInfo("PHANTOM-0009", "1.2.3", "1.2.3.1", "1.2.3.2", uids,
                      0.5, 5.0, [1.0, 6.0, 11.0], RESCALES[4], descending, tilt, tags)
    paths = write_dicom_series(tmp_path / "fast", hu, info)
    for k, path in enumerate(paths):
        ds = _series_header(info, 16, 20)
        for element in _slice_elements(info, k, 3, 16, 20, info.rescale.encode(hu[k]).tobytes()):
            ds.add(element)
        ds.file_meta = _file_meta(info.sop_uids[k])
        reference = tmp_path / f"reference{k}.dcm"
        ds.save_as(reference, enforce_file_format=True)
        assert path.read_bytes() == reference.read_bytes()
    read = pydicom.dcmread(paths[2])
    assert read.InstanceNumber == 7 if tags else read.InstanceNumber == 3
    assert float(read.SliceLocation) == 11.0 and read.SOPInstanceUID == "1.2.3.3.3"
    assert pydicom.dcmread(paths[1]).file_meta.MediaStorageSOPInstanceUID == uids[1]


def test_labels_csv_and_masks_agree_on_every_slice(rsna_dir):
    with open(rsna_dir / "labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["ID", "Label"]
    labels = {r[0]: int(r[1]) for r in rows[1:]}
    summary = json.loads((rsna_dir / "phantom.json").read_text())
    checked = 0
    for record in summary["studies"]:
        with np.load(rsna_dir / "masks" / f"{record['study']}.npz") as npz:
            uids, masks = list(npz["uids"]), npz["masks"]
        assert masks.dtype == np.uint8 and masks.shape == (8, 64, 64)
        z = [float(pydicom.dcmread(rsna_dir / "dicom" / record["study"] / f"{u}.dcm", stop_before_pixels=True)
                   .ImagePositionPatient[2]) for u in uids]
        assert z == sorted(z)  # masks are in scan order
        for k, uid in enumerate(uids):
            for name in HEMORRHAGE_TYPES:
                assert labels[f"ID_{uid}_{name}"] == int(bool((masks[k] & LESION_BITS[name]).any()))
            assert labels[f"ID_{uid}_any"] == int(bool((masks[k] & 31).any()))
            checked += 1
    assert checked * 6 == len(rows) - 1 == 5 * 8 * 6
    assert len({r["patient"] for r in summary["studies"]}) <= 5


def test_png_folders_layout(tmp_path):
    write_phantom(PhantomConfig(out=tmp_path, studies=3, layout="png-folders", seed=2, size=64, slices=8))
    from PIL import Image

    summary = json.loads((tmp_path / "phantom.json").read_text())
    config = PhantomConfig(out=tmp_path, studies=3, layout="png-folders", seed=2, size=64, slices=8)
    for plan, record in zip(plan_studies(config), summary["studies"], strict=True):
        kinds = {les["type"] for les in record["lesions"]}
        assert kinds == {"ischemic"} or (kinds and kinds <= set(HEMORRHAGE_TYPES))
        study = generate_study(plan.seed(config), patient_seed=plan.patient_seed(config), size=64, slices=8,
                               lesions=plan.lesions)
        with np.load(tmp_path / "masks" / f"{plan.name}.npz") as npz:
            assert list(npz["uids"]) == [f"{plan.name}_{k:03d}" for k in range(8)]
        for k in range(8):
            m = study.masks[k]
            expected = "ischemic" if (m & 32).any() else "hemorrhagic" if (m & 31).any() else "non-stroke"
            path = tmp_path / expected / f"{plan.name}_{k:03d}.png"
            np.testing.assert_array_equal(np.asarray(Image.open(path)), brain_window_png(study.hu[k]))


def test_png_writer_keeps_grey_and_rgb_pixels(tmp_path):
    from PIL import Image

    from headct.phantom.writers import write_png

    rng = np.random.default_rng(0)
    for name, image in (("grey", rng.integers(0, 256, (20, 30), dtype=np.uint8)),
                        ("rgb", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))):
        write_png(tmp_path / f"{name}.png", image)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"{name}.png")), image)  # channel order too


def test_cli_writes_and_says_where(tmp_path, capsys):
    from headct.cli import main

    assert main(["phantom", "--out", str(tmp_path / "ds"), "--studies", "2", "--size", "64", "--slices", "6",
                 "--preview", str(tmp_path / "p.png")]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "ds") in printed and "p.png" in printed
    assert (tmp_path / "ds" / "labels.csv").is_file() and (tmp_path / "p.png").stat().st_size > 1000
    assert main(["phantom"]) == 2


def test_read_dicom_gives_the_generator_hu(rsna_dir):
    dicom = pytest.importorskip("headct.io.dicom")
    config = PhantomConfig(out=rsna_dir, studies=5, layout="rsna", seed=7, size=64, slices=8)
    plans = {p.study_uid: p for p in plan_studies(config)}
    volumes = dicom.read_dicom(rsna_dir / "dicom")
    assert len(volumes) == 5
    for volume in volumes:
        plan = plans[volume.study_uid]
        study = generate_study(plan.seed(config), patient_seed=plan.patient_seed(config), size=64, slices=8,
                               lesions=plan.lesions)
        assert not volume.warnings
        assert np.abs(volume.pixels.astype(np.float32) - study.hu).max() <= 1.0
        with np.load(rsna_dir / "masks" / f"{plan.study_uid}.npz") as npz:
            assert list(npz["uids"]) == list(volume.slice_uids)
        assert volume.slice_spacing == pytest.approx(study.slice_thickness, abs=1e-3)


def test_rsna_reader_parses_the_labels(rsna_dir):
    rsna = pytest.importorskip("headct.data.rsna")
    labels, bad = rsna.read_rsna_labels(rsna_dir / "labels.csv")
    assert bad == [] and len(labels) == 5 * 8
    for record in json.loads((rsna_dir / "phantom.json").read_text())["studies"]:
        with np.load(rsna_dir / "masks" / f"{record['study']}.npz") as npz:
            for uid, mask in zip(npz["uids"], npz["masks"], strict=True):
                row = labels[rsna.lookup_rsna(labels, str(uid))]
                assert row == [int(bool((mask & LESION_BITS[n]).any())) for n in HEMORRHAGE_TYPES] + [int(bool((mask & 31).any()))]


def test_cli_tilt_writes_tilted_headers_and_the_same_labels(tmp_path):
    from headct.cli import main

    args = ["phantom", "--studies", "1", "--size", "32", "--slices", "6", "--seed", "4"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    assert main([*args, "--out", str(tmp_path / "tilted"), "--tilt", "12"]) == 0
    straight = sorted((tmp_path / "straight" / "dicom").rglob("*.dcm"))
    tilted = sorted((tmp_path / "tilted" / "dicom").rglob("*.dcm"))
    assert [p.name for p in straight] == [p.name for p in tilted]  # same UIDs: the same study, tilted
    ds = pydicom.dcmread(tilted[0])
    assert float(ds.GantryDetectorTilt) == 12.0
    assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(
        [1, 0, 0, 0, np.cos(np.radians(12)), np.sin(np.radians(12))], abs=1e-5)
    assert "GantryDetectorTilt" not in pydicom.dcmread(straight[0])
    summary = json.loads((tmp_path / "tilted" / "phantom.json").read_text())
    assert summary["arguments"]["tilt"] == 12.0


def test_tilt_needs_the_dicom_layout(tmp_path):
    with pytest.raises(ValueError, match="tilt needs the rsna"):
        PhantomConfig(out=tmp_path, layout="png-folders", tilt=10)
    with pytest.raises(ValueError, match="tilt must be within"):
        generate_study(1, size=32, slices=4, tilt=50)
