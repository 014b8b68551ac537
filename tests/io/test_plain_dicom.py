"""headct.io.plain_dicom: the hand parse of plain files reads what pydicom reads, and refuses everything else.

The strongest check is parity: for every file (valid, with sequences and
private tags, implicit or explicit VR, other character sets, and every
truncation or bit flip of a slice), ``read_slice`` through the hand parse gives
exactly what it gives through ``pydicom.dcmread``: the same HU, header and
warnings, or the same one-line fault.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from headct.errors import InputError
from headct.io import dicom as dicom_module
from headct.io.dicom import read_slice
from headct.io.plain_dicom import plain_dataset


def _bytes(ds: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()


def _with_sequences(ds: Dataset, undefined: bool) -> Dataset:
    """Nested sequences (defined or undefined lengths) and a private block, as vendors write them."""
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "113691", "DCM"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.ConceptNameCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.ProcedureCodeSequence = Sequence([])
    for sequence in (ds.ReferencedImageSequence, ds.ProcedureCodeSequence, item.ConceptNameCodeSequence):
        sequence.is_undefined_length = undefined
    for entry in (item, inner):
        entry.is_undefined_length_sequence_item = undefined
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x10, "LO", "scan options")
    block.add_new(0x11, "DS", "0.5")
    return ds


def _read_both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    """read_slice's outcome (a comparable tuple, or the fault line) with the hand parse, then without it."""
    outcomes = []
    for use_plain in (True, False):
        with monkeypatch.context() as patch:
            if not use_plain:
                patch.setattr(dicom_module, "plain_dataset", lambda data: None)
            outcomes.append(_outcome(path))
    return outcomes[0], outcomes[1]


def _outcome(path: Path) -> object:
    try:
        item = read_slice(path)
    except InputError as err:
        return ("fault", str(err))
    header = item.header
    return ("read", item.hu.tobytes(), item.hu.shape, item.sop_uid, item.series_uid, item.study_uid,
            item.patient_key, None if item.position is None else item.position.tolist(),
            None if item.orientation is None else item.orientation.tolist(), item.instance_number,
            item.pixel_spacing, item.slice_thickness, tuple(item.warnings), header)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [False, True])
def test_a_vendor_like_header_reads_as_pydicom_reads_it(syntax, undefined: bool, tmp_path: Path, make_ct,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _with_sequences(make_ct(size=(16, 16)), undefined)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID = "Müller-4711"  # Latin-1: the patient key must hash the same text either way
    ds.ConvolutionKernel = ["FC64", "SOFT"]
    data = _bytes(ds, syntax)
    plain = plain_dataset(data)
    assert plain is not None
    reference = pydicom.dcmread(io.BytesIO(data))
    flat = {tag for tag in reference.keys() if reference[tag].VR != "SQ"}
    assert set(plain.keys()) == flat
    for tag in flat:
        assert plain[tag].value == reference[tag].value, tag
    assert plain.PatientID == "Müller-4711"
    path = tmp_path / "slice.dcm"
    path.write_bytes(data)
    fast, slow = _read_both(path, monkeypatch)
    assert fast == slow and fast[0] == "read"
    assert np.array_equal(read_slice(path).hu, ds.pixel_array.astype(np.int16) - 1024)


def test_what_is_not_plain_is_left_to_pydicom(make_ct) -> None:
    assert plain_dataset(b"") is None
    assert plain_dataset(b"\x89PNG" + bytes(600)) is None
    assert plain_dataset(_bytes(make_ct(size=(16, 16)), DeflatedExplicitVRLittleEndian)) is None
    compressed = make_ct(size=(16, 16))
    compressed.compress(RLELossless)
    assert plain_dataset(_bytes(compressed, RLELossless)) is None
    with_lut = make_ct(size=(16, 16))
    lut = Dataset()
    lut.LUTDescriptor, lut.ModalityLUTType = [2, 0, 16], "HU"
    lut.LUTData = np.array([0, 1], np.uint16).tobytes()
    with_lut.ModalityLUTSequence = Sequence([lut])
    assert plain_dataset(_bytes(with_lut)) is None
    data = _bytes(make_ct(size=(16, 16)))
    assert plain_dataset(data[:-1]) is None  # pixel data cut short
    says_implicit = data.replace(ExplicitVRLittleEndian.encode(), ImplicitVRLittleEndian.encode() + b"\0" * 2)
    assert plain_dataset(says_implicit) is None  # explicit body under an implicit meta: pydicom copes


@pytest.fixture
def small_slice(make_ct) -> bytes:
    return _bytes(_with_sequences(make_ct(size=(8, 8)), undefined=True))


def test_every_truncation_reads_or_fails_as_through_pydicom(small_slice: bytes, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cut.dcm"
    differences = []
    for end in range(0, len(small_slice), 3):
        path.write_bytes(small_slice[:end])
        fast, slow = _read_both(path, monkeypatch)
        if fast != slow:
            differences.append((end, fast, slow))
    assert differences == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=4))
def test_bit_flips_read_or_fail_as_through_pydicom(small_slice: bytes, flips, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(small_slice)
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    path = tmp_path / "flipped.dcm"
    path.write_bytes(bytes(data))
    fast, slow = _read_both(path, monkeypatch)
    assert fast == slow


def test_a_header_prefix_reads_the_elements_before_the_pixels(make_ct) -> None:
    from headct.io.plain_dicom import plain_header

    data = _bytes(make_ct(size=(16, 16)))
    pixels_at = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010)
    header = plain_header(data[:pixels_at + 4])  # cut inside the PixelData element
    assert header is not None and "PixelData" not in header
    assert header.StudyInstanceUID == pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID
    assert plain_header(data[:pixels_at - 20]) is None  # an element before the pixels cut short


@pytest.mark.parametrize("bits", [8, 32])
def test_other_bit_depths_read_as_through_pydicom(bits: int, make_ct, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_ct(size=(8, 8))
    stored = np.arange(64, dtype=np.uint8 if bits == 8 else np.int32).reshape(8, 8)
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, int(bits == 32)
    ds.PixelData = stored.tobytes()  # pydicom's pixel handlers decode these from plain_dataset's memoryview
    path = tmp_path / "slice.dcm"
    path.write_bytes(_bytes(ds))
    fast, slow = _read_both(path, monkeypatch)
    assert fast == slow and fast[0] == "read"
    assert np.array_equal(read_slice(path).hu, stored.astype(np.int16) - 1024)
