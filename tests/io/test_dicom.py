"""headct.io.dicom: HU as pydicom defines them, series order, header faults, bad input."""

from __future__ import annotations

import logging
import random
import shutil

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from headct.errors import InputError
from headct.io.dicom import (
    MONOCHROME1_WARNING,
    DicomSlice,
    assemble_series,
    fix_rsna_header,
    read_dicom,
    read_slice,
)
from headct.io.privacy import patient_key

PATIENT_VALUES = ("Doe^Jane", "Doe", "Jane", "PID-7731-SECRET", "19500101", "ACC-99812")
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _pydicom_hu(path) -> np.ndarray:
    """The reference: pydicom's pixel_array and modality LUT, rounded and clipped to int16."""
    ds = pydicom.dcmread(path)
    return np.clip(np.rint(apply_modality_lut(ds.pixel_array, ds)), -32768, 32767).astype(np.int16)


def _constant_slice(value: int, shape=(64, 64)) -> np.ndarray:
    return np.full(shape, value, dtype=np.int16)


# --- HU ---------------------------------------------------------------------------


def test_ct_small_matches_pydicom_lut() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    reference = apply_modality_lut(ds.pixel_array, ds)
    sl = read_slice(path)
    assert sl.hu.dtype == np.int16 and sl.hu.shape == (128, 128)
    for r, c in [(0, 0), (64, 64), (10, 100), (127, 127), (77, 31)]:
        assert sl.hu[r, c] == reference[r, c]
    np.testing.assert_array_equal(sl.hu, reference)
    np.testing.assert_allclose(sl.position, [-158.135803, -179.035797, -75.699997])
    np.testing.assert_allclose(sl.orientation, AXIAL)
    assert sl.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert sl.slice_thickness == pytest.approx(5.0)
    assert sl.instance_number == 1
    assert sl.sop_uid == ds.SOPInstanceUID and sl.series_uid == ds.SeriesInstanceUID
    assert sl.study_uid == ds.StudyInstanceUID


@pytest.mark.parametrize(
    ("bits_stored", "pixel_representation", "slope", "intercept"),
    [
        (16, 1, 1.0, -1024.0),
        (16, 0, 1.0, -1024.0),
        (12, 0, 1.0, -1024.0),
        (12, 1, 1.0, -1024.0),
        (16, 1, 2.0, -3.0),
        (16, 1, 0.5, -1024.5),
        (16, 1, 1.0, 0.0),
        (16, 1, 25.0, 1000.0),
    ],
)
def test_fast_path_equals_pydicom_lut(
    write_ct, make_ct, bits_stored, pixel_representation, slope, intercept
) -> None:
    rng = np.random.default_rng(bits_stored + pixel_representation)
    if pixel_representation:
        stored = rng.integers(-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1), (64, 64))
    else:
        stored = rng.integers(0, 2**bits_stored, (64, 64))
    stored = stored.astype(np.int16 if pixel_representation else np.uint16)
    if bits_stored < 16:
        # garbage in the unused high bits: pydicom ignores them, so must we
        stored = stored ^ (rng.integers(0, 2, (64, 64)) << 13).astype(stored.dtype)
    ds = make_ct(
        stored,
        bits_stored=bits_stored,
        pixel_representation=pixel_representation,
        slope=slope,
        intercept=intercept,
    )
    path = write_ct("a.dcm", ds)
    sl = read_slice(path)
    np.testing.assert_array_equal(sl.hu, _pydicom_hu(path))
    ds = pydicom.dcmread(path)
    exact = apply_modality_lut(ds.pixel_array, ds)
    outside = int(np.count_nonzero((exact < -32768) | (exact > 32767)))
    clipped = [w for w in sl.warnings if "clipped" in w]
    assert clipped == ([f"{outside} pixels outside the int16 range were clipped"] if outside else [])


def test_implicit_vr_file_reads_the_same(write_ct, make_ct) -> None:
    explicit = write_ct("explicit.dcm", make_ct(seed=3))
    ds = make_ct(seed=3)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = write_ct("implicit.dcm", ds)
    a, b = read_slice(explicit), read_slice(implicit)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.position, b.position)
    assert (a.pixel_spacing, a.slice_thickness, a.instance_number) == (
        b.pixel_spacing,
        b.slice_thickness,
        b.instance_number,
    )
    np.testing.assert_array_equal(b.hu, _pydicom_hu(implicit))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_compressed_equals_uncompressed(write_ct, make_ct, compress, syntax) -> None:
    stored = np.random.default_rng(5).integers(-2000, 3000, (64, 64)).astype(np.int16)
    stored[0, :3] = [-32768, 32767, 0]
    plain = read_slice(write_ct("plain.dcm", make_ct(stored)))
    packed_path = write_ct("packed.dcm", compress(make_ct(stored), syntax))
    assert pydicom.dcmread(packed_path).file_meta.TransferSyntaxUID == syntax
    packed = read_slice(packed_path)
    np.testing.assert_array_equal(packed.hu, plain.hu)
    np.testing.assert_array_equal(packed.hu, _pydicom_hu(packed_path))
    assert plain.hu[0, 0] == -32768 and plain.hu[0, 2] == -1024  # -32768 - 1024 clipped


# --- the RSNA header fault -----------------------------------------------------------


def test_fix_rsna_header_known_values() -> None:
    stored = np.array([0, 24, 3095, 3096, 4000, 4095], dtype=np.uint16)
    fixed, intercept, did = fix_rsna_header(stored, 12, 0, 1.0)
    assert did and intercept == -1000
    np.testing.assert_array_equal(fixed + intercept, [0, 24, 3095, -1000, -96, -1])


@pytest.mark.parametrize(
    ("bits_stored", "pixel_representation", "intercept"),
    [(16, 0, 0.0), (12, 1, 0.0), (12, 0, -1024.0), (12, 0, -100.0)],
)
def test_fix_rsna_header_leaves_healthy_headers(bits_stored, pixel_representation, intercept) -> None:
    stored = np.array([0, 3096, 4000], dtype=np.uint16)
    out, out_intercept, did = fix_rsna_header(stored, bits_stored, pixel_representation, intercept)
    assert not did and out is stored and out_intercept == intercept


@given(st.lists(st.integers(-1000, 3095), min_size=1, max_size=50))
def test_fix_rsna_header_recovers_signed_12_bit(hu: list[int]) -> None:
    # The fault: signed 12-bit HU written as unsigned 12-bit with intercept 0.
    stored = (np.array(hu) % 4096).astype(np.uint16)
    fixed, intercept, did = fix_rsna_header(stored, 12, 0, 0.0)
    assert did
    np.testing.assert_array_equal(fixed + intercept, hu)


def test_rsna_fault_in_a_file(write_ct) -> None:
    stored = np.full((64, 64), 24, dtype=np.uint16)
    stored[0, 0], stored[0, 1] = 3096, 4000
    path = write_ct("rsna.dcm", stored=stored, bits_stored=12, pixel_representation=0, intercept=1.0)
    sl = read_slice(path)
    assert sl.hu[5, 5] == 24 and sl.hu[0, 0] == -1000 and sl.hu[0, 1] == -96
    assert any("RSNA header fault" in w for w in sl.warnings)


def test_monochrome1_gives_the_same_hu_as_its_monochrome2_twin(write_ct) -> None:
    mono2 = read_slice(write_ct("m2.dcm", seed=7, photometric="MONOCHROME2"))
    mono1 = read_slice(write_ct("m1.dcm", seed=7, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1.hu, mono2.hu)
    assert MONOCHROME1_WARNING in mono1.warnings and MONOCHROME1_WARNING not in mono2.warnings


# --- series ------------------------------------------------------------------------


def test_shuffled_files_are_sorted_by_position(write_ct, tmp_path) -> None:
    order = [3, 0, 5, 1, 4, 2]
    for name_index, k in enumerate(order):
        # file names and instance numbers disagree with the true order
        write_ct(
            f"series/f{name_index}.dcm", stored=_constant_slice(k), z=10.0 + 5.0 * k, instance=9 - k
        )
    (vol,) = read_dicom(tmp_path / "series")
    np.testing.assert_array_equal(vol.pixels[:, 0, 0], np.arange(6) - 1024)
    assert vol.slice_spacing == pytest.approx(5.0)
    assert vol.pixel_spacing == (0.5, 0.6)
    assert vol.kind == "hu" and vol.pixels.dtype == np.int16
    assert len(set(vol.slice_uids)) == 6
    assert not any("InstanceNumber" in w for w in vol.warnings)


@pytest.mark.parametrize(
    "orientation",
    [
        [1.0, 0.0, 0.0, 0.0, np.cos(0.5), np.sin(0.5)],  # gantry tilt
        [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],  # coronal: z is the same on every slice
        [0.0, 1.0, 0.0, 0.6, 0.0, -0.8],  # oblique sagittal-ish
    ],
)
def test_oblique_series_sorted_along_normal(write_ct, tmp_path, orientation) -> None:
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    origin = np.array([-20.0, 30.0, 7.0])
    for name_index, k in enumerate([2, 4, 0, 3, 1]):
        position = origin + 2.5 * k * normal + 3.0 * col  # in-plane offsets do not matter
        write_ct(
            f"obl/{name_index}.dcm",
            stored=_constant_slice(k),
            position=[float(v) for v in position],
            orientation=[float(v) for v in orientation],
        )
    (vol,) = read_dicom(tmp_path / "obl")
    np.testing.assert_array_equal(vol.pixels[:, 0, 0], np.arange(5) - 1024)
    assert vol.slice_spacing == pytest.approx(2.5)


def test_instance_number_fallback_warns(write_ct, tmp_path) -> None:
    for name_index, k in enumerate([2, 0, 1]):
        write_ct(
            f"s/{name_index}.dcm",
            stored=_constant_slice(k),
            instance=k + 1,
            omit=("ImagePositionPatient",),
        )
    (vol,) = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(vol.pixels[:, 0, 0], np.arange(3) - 1024)
    assert any("sorted by InstanceNumber" in w for w in vol.warnings)
    assert vol.slice_spacing == 5.0  # SliceThickness, said so
    assert any("SliceThickness" in w for w in vol.warnings)


def test_mixed_orientations_warn(write_ct, tmp_path) -> None:
    for k in range(3):
        write_ct(f"s/{k}.dcm", stored=_constant_slice(k), z=float(k))
    write_ct("s/scout.dcm", z=9.0, orientation=[1.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    (vol,) = read_dicom(tmp_path / "s")
    assert "1 slices have another ImageOrientationPatient than the first" in vol.warnings


def test_non_uniform_spacing_warns(write_ct, tmp_path) -> None:
    for k, z in enumerate([0.0, 5.0, 10.0, 20.0, 25.0]):
        write_ct(f"s/{k}.dcm", stored=_constant_slice(k), z=z)
    (vol,) = read_dicom(tmp_path / "s")
    assert vol.slice_spacing == pytest.approx(5.0)
    assert any("not uniform" in w for w in vol.warnings)


def _memory_slice(k: int, position: np.ndarray, orientation: np.ndarray) -> DicomSlice:
    return DicomSlice(
        hu=_constant_slice(k, (4, 4)),
        sop_uid=f"1.2.3.{k}",
        series_uid="1.2.3",
        study_uid="1.2",
        patient_key=None,
        position=position,
        orientation=orientation,
        instance_number=None,
        pixel_spacing=(1.0, 1.0),
        slice_thickness=1.0,
        path=f"/x/{k}.dcm",
    )


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(2, 12),
    tilt=st.floats(-1.2, 1.2),
    spacing=st.floats(0.5, 6.0),
    seed=st.integers(0, 10_000),
)
def test_any_permutation_gives_the_same_volume(n, tilt, spacing, seed) -> None:
    orientation = np.array([1.0, 0.0, 0.0, 0.0, np.cos(tilt), np.sin(tilt)])
    normal = np.cross(orientation[:3], orientation[3:])
    slices = [_memory_slice(k, np.array([1.0, -2.0, 3.0]) + spacing * k * normal, orientation) for k in range(n)]
    shuffled = slices[:]
    random.Random(seed).shuffle(shuffled)
    vol = assemble_series(shuffled)
    np.testing.assert_array_equal(vol.pixels[:, 0, 0], np.arange(n))
    assert vol.slice_uids == [f"1.2.3.{k}" for k in range(n)]
    assert vol.slice_spacing == pytest.approx(spacing)


def test_two_series_in_nested_folders_give_two_volumes(write_ct, tmp_path) -> None:
    for k in range(3):
        write_ct(f"study/b/{k}.dcm", series_uid="1.2.9.2", stored=_constant_slice(20 + k), z=k)
        write_ct(f"study/a/deeper/{k}.dcm", series_uid="1.2.9.1", stored=_constant_slice(k), z=k)
    (tmp_path / "study" / "notes.txt").write_text("not dicom")
    errors: list[InputError] = []
    vols = read_dicom(tmp_path / "study", errors=errors)
    assert [v.series_uid for v in vols] == ["1.2.9.1", "1.2.9.2"]
    assert [v.num_slices for v in vols] == [3, 3]
    assert vols[1].pixels[0, 0, 0] == 20 - 1024
    assert errors == []  # a text file beside DICOM files is not a DICOM fault


def test_read_dicom_on_one_file(write_ct) -> None:
    (vol,) = read_dicom(write_ct("one.dcm", seed=2))
    assert vol.num_slices == 1 and vol.slice_spacing is None


# --- bad input -----------------------------------------------------------------------


def _truncated(write_ct, make_ct, tmp_path):
    path = write_ct("bad/slice.dcm", make_ct())
    path.write_bytes(path.read_bytes()[:-3000])
    return path


def _not_dicom(write_ct, make_ct, tmp_path):
    path = tmp_path / "bad" / "slice.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(600))
    return path


def _no_pixels(write_ct, make_ct, tmp_path):
    return write_ct("bad/slice.dcm", make_ct(omit=("PixelData",)))


def _no_slope(write_ct, make_ct, tmp_path):
    return write_ct("bad/slice.dcm", make_ct(omit=("RescaleSlope",)))


def _no_intercept(write_ct, make_ct, tmp_path):
    return write_ct("bad/slice.dcm", make_ct(omit=("RescaleIntercept",)))


def _mr(write_ct, make_ct, tmp_path):
    return write_ct("bad/slice.dcm", make_ct(modality="MR"))


def _short_pixels(write_ct, make_ct, tmp_path):
    ds = make_ct()
    ds.PixelData = ds.PixelData[: 64 * 60 * 2]
    return write_ct("bad/slice.dcm", ds)


def _other_size(write_ct, make_ct, tmp_path):
    return write_ct("bad/slice.dcm", make_ct(size=(32, 32), z=99.0))


BAD_INPUTS = {
    "truncated": (_truncated, "truncated file: PixelData"),
    "not dicom": (_not_dicom, "not a DICOM file"),
    "no pixel data": (_no_pixels, "no pixel data"),
    "no slope": (_no_slope, "missing RescaleSlope/RescaleIntercept"),
    "no intercept": (_no_intercept, "missing RescaleSlope/RescaleIntercept"),
    "not CT": (_mr, "modality MR is not CT"),
    "short pixel data": (_short_pixels, "pixel data is 7680 bytes, Rows x Columns (64x64)"),
    "other size": (_other_size, "size 32x32 differs from the series' 64x64; slice dropped"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_file_is_named_and_the_rest_is_read(write_ct, make_ct, tmp_path, kind) -> None:
    make_bad, fault = BAD_INPUTS[kind]
    bad = make_bad(write_ct, make_ct, tmp_path)
    for k in range(3):
        write_ct(f"bad/good{k}.dcm", stored=_constant_slice(k), z=float(k))
    errors: list[InputError] = []
    (vol,) = read_dicom(tmp_path / "bad", errors=errors)
    assert vol.num_slices == 3
    np.testing.assert_array_equal(vol.pixels[:, 0, 0], np.arange(3) - 1024)
    assert len(errors) == 1
    message = str(errors[0])
    assert "\n" not in message
    assert message.startswith(f"{bad}: ") and fault in message
    if kind != "other size":  # a size mismatch is a fault of the series, not of the file alone
        with pytest.raises(InputError, match=f"^{bad}: ") as info:
            read_slice(bad)
        assert fault in str(info.value)


def test_folder_with_nothing_usable_raises_for_the_folder(write_ct, make_ct, tmp_path) -> None:
    write_ct("mr/a.dcm", make_ct(modality="MR"))
    errors: list[InputError] = []
    with pytest.raises(InputError, match="no usable CT DICOM slices") as info:
        read_dicom(tmp_path / "mr", errors=errors)
    assert info.value.path == str(tmp_path / "mr")
    assert len(errors) == 1


def test_missing_path_raises(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_dicom(tmp_path / "nowhere")


# --- privacy -------------------------------------------------------------------------


def test_no_patient_identifiers_in_volumes_warnings_or_errors(write_ct, make_ct, tmp_path) -> None:
    for k in range(3):
        write_ct(f"p/{k}.dcm", stored=_constant_slice(k), z=float(k), photometric="MONOCHROME1")
    write_ct("p/mr.dcm", make_ct(modality="MR"))
    write_ct("p/odd.dcm", make_ct(size=(32, 32)))
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "p" / "ct_small.dcm")
    errors: list[InputError] = []
    vols = read_dicom(tmp_path / "p", errors=errors, salt="site-salt")
    assert len(vols) == 2 and len(errors) == 2
    text = " ".join([repr(v) for v in vols] + [w for v in vols for w in v.warnings])
    text += " ".join(str(e) for e in errors)
    text += repr(read_slice(tmp_path / "p" / "0.dcm", salt="site-salt"))
    for value in PATIENT_VALUES + ("CompressedSamples", "1CT1"):
        assert value not in text
    keys = {v.patient_key for v in vols}
    assert patient_key("PID-7731-SECRET", "site-salt") in keys
    assert patient_key("PID-7731-SECRET", "other-salt") not in keys


# --- issue 12: faults that used to escape or give silently wrong HU -----------------

NAMED_FAULTS = {
    "slope_1e308": "RescaleSlope 1e+308 is beyond +-1e+06; HU would overflow",
    "intercept_1e308": "RescaleIntercept 1e+308 is beyond +-1e+06; HU would overflow",
    "slope_nan": "RescaleSlope is nan; HU would be undefined",
    "intercept_nan": "RescaleIntercept is nan; HU would be undefined",
    "slope_inf": "RescaleSlope is inf; HU would be undefined",
    "slope_zero": "RescaleSlope is 0; every pixel would get the intercept",
    "frames_inf": "NumberOfFrames is malformed (not a finite integer)",
    "frames_nan": "NumberOfFrames is malformed (not a finite integer)",
    "pixel_representation_2": "PixelRepresentation 2 is neither 0 (unsigned) nor 1 (signed)",
    "empty_pixel_data": "pixel data is 0 bytes, Rows x Columns (64x64) x 2 bytes needs 8192",
    "empty_fragment": "cannot decode pixel data (JPEG Lossless",
    "jpeg_garbage": "cannot decode pixel data (JPEG Lossless",
    "deflate_on_plain": "truncated or corrupt DICOM (zlib.error: Error -3 while decompressing data",
    "empty_transfer_syntax": "no TransferSyntaxUID in the file meta; the pixel encoding is unknown",
    "meta_bit_flip": "cannot decode pixel data (1.2.840.10008.1.2.0): NotImplementedError",
    "fifo": "named pipe, not a regular file; skipped without opening it",
    "symlink_loop": "symbolic link loop; skipped",
}


@pytest.mark.parametrize("kind", sorted(NAMED_FAULTS))
def test_named_fault_is_refused_in_one_line(write_ct, tmp_path, bad_dicom, kind) -> None:
    template = write_ct("template.dcm", seed=3)
    bad = bad_dicom(tmp_path / "bad", kind, template)
    with pytest.raises(InputError) as info:
        read_slice(bad)
    assert info.value.path == str(bad) and "\n" not in str(info.value)
    assert info.value.fault.startswith(NAMED_FAULTS[kind])


@pytest.mark.parametrize("kind", ["instance_inf", "instance_nan"])
def test_malformed_instance_number_is_ignored_with_a_warning(write_ct, tmp_path, bad_dicom, kind) -> None:
    template = write_ct("template.dcm", seed=3)
    read = read_slice(bad_dicom(tmp_path / "bad", kind, template))
    assert read.instance_number is None
    assert read.warnings == ["InstanceNumber is malformed (not a finite integer); ignored"]
    np.testing.assert_array_equal(read.hu, read_slice(template).hu)


def test_undecodable_pixels_log_no_traceback_unless_debug(write_ct, tmp_path, bad_dicom, caplog) -> None:
    bad = bad_dicom(tmp_path / "bad", "jpeg_garbage", write_ct("template.dcm"))
    caplog.set_level(logging.INFO)
    with pytest.raises(InputError):
        read_slice(bad)
    assert [r for r in caplog.records if r.exc_info] == []
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InputError):
        read_slice(bad)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert tracebacks and all(r.levelno == logging.DEBUG for r in tracebacks)


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        ({"BitsStored": 17}, "BitsStored 17 does not fit BitsAllocated 16"),
        ({"BitsAllocated": 12}, "BitsAllocated 12; CT pixels are 8, 16 or 32 bits"),
        ({"PixelRepresentation": 3}, "PixelRepresentation 3 is neither 0 (unsigned) nor 1 (signed)"),
        ({"Rows": 9000}, "9000x64 pixels is beyond the 8192x8192 of any CT slice"),
    ],
)
def test_impossible_pixel_formats_are_refused(write_ct, make_ct, change, fault) -> None:
    ds = make_ct()
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    path = write_ct("odd.dcm", ds)
    with pytest.raises(InputError) as info:
        read_slice(path)
    assert str(info.value) == f"{path}: {fault}"


def test_files_are_grouped_by_study_from_their_headers_alone(write_ct, make_ct, tmp_path) -> None:
    from pydicom.uid import ImplicitVRLittleEndian

    from headct.io.dicom import HEADER_PREFIX_BYTES, dicom_studies, study_uid_of

    a = [write_ct(f"a{i}.dcm", z=float(i), study_uid="1.2.3.1") for i in range(2)]
    implicit = make_ct(study_uid="1.2.3.2")
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    b = [write_ct("b0.dcm", implicit)]
    long_header = make_ct(study_uid="1.2.3.2")
    long_header.ImageComments = "x" * HEADER_PREFIX_BYTES  # past the prefix read: pydicom reads the header
    b.append(write_ct("b1.dcm", long_header))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    files = [*a, *b, junk]
    assert study_uid_of(b[1]) == "1.2.3.2"
    assert dicom_studies(files) == {"1.2.3.1": a, "1.2.3.2": b, None: [junk]}
