"""File formats the phantom writes: CT DICOM slices, brain-window PNGs, masks, RSNA labels.

Every writer is deterministic (fixed dates, UIDs from the seed, zip entries
with a fixed timestamp) and atomic (``headct.atomic``: temp file in the same
folder, then a rename), so the same seed gives the same bytes and an interrupted run
never leaves a half-written file that loads.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import math
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from headct import atomic
from headct.labels import RSNA_LABELS

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO


@dataclass(frozen=True)
class Rescale:
    """How stored pixel values map to HU: HU = stored * slope + intercept."""

    name: str
    bits_stored: int
    signed: bool
    intercept: float
    slope: float

    @property
    def dtype(self) -> np.dtype:
        """The stored integers' type: int16 or uint16."""
        return np.dtype(np.int16 if self.signed else np.uint16)

    def encode(self, hu: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """HU slice [H, W] → stored integers (rounded half to even, clipped to what the bits can hold).

        One cv2 pass (``hu / slope - intercept / slope``, rounded and saturated to
        int16/uint16) instead of numpy's four (subtract, rint, clip, cast). With
        ``out`` (:attr:`dtype`, [H, W]) the integers go there: a series reuses one
        buffer instead of faulting in fresh pages for every slice.
        """
        scale, offset = 1.0 / self.slope, -self.intercept / self.slope
        depth = cv2.CV_16S if self.signed else cv2.CV_16U
        stored = cv2.addWeighted(hu, scale, hu, 0.0, offset, dst=out, dtype=depth)
        if out is not None and not np.may_share_memory(stored, out):
            out[...] = stored
            stored = out
        if self.bits_stored < 16:
            if self.signed:
                low, high = -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
            else:
                low, high = 0, 2**self.bits_stored - 1
            np.clip(stored, stored.dtype.type(low), stored.dtype.type(high), out=stored)
        return stored


RESCALES: tuple[Rescale, ...] = (
    Rescale("int16", 16, True, 0.0, 1.0),
    Rescale("int16-intercept", 16, True, -1024.0, 1.0),
    Rescale("uint12", 12, False, -1024.0, 1.0),
    Rescale("uint16", 16, False, -1024.0, 1.0),
    Rescale("int16-half-hu", 16, True, -1024.0, 0.5),
)
"""The stored-value conventions studies rotate through (none triggers the RSNA 12-bit fault)."""


@dataclass(frozen=True)
class SeriesInfo:
    """Identifiers and geometry of one written series."""

    patient_id: str
    study_uid: str
    series_uid: str
    frame_uid: str
    sop_uids: Sequence[str]
    pixel_spacing: float
    slice_thickness: float
    table_z: Sequence[float]  # patient z (mm) of each slice, scan order
    rescale: Rescale
    descending_instances: bool = False
    tilt: float = 0.0  # gantry tilt (degrees): planes lean about the left-right axis through each slice centre
    tags: tuple[tuple[str, object], ...] = ()  # (keyword, value) set on every slice after the defaults
    positions: Sequence[Sequence[float]] | None = None  # ImagePositionPatient per slice, overriding the axial stack
    orientation: Sequence[float] | None = None  # ImageOrientationPatient, overriding the axial (tilted) one


def write_dicom_series(folder: Path, hu: np.ndarray, info: SeriesInfo) -> list[Path]:
    """One CT DICOM file per slice, ``<folder>/<SOPInstanceUID>.dcm``; returns the paths.

    Every file is what ``Dataset.save_as(enforce_file_format=True)`` writes
    for the series header plus that slice's elements (tests/test_phantom.py
    checks the bytes), but the ~50 header elements all slices share, and the
    file meta group bar its SOP instance UID, are encoded by pydicom once per
    series (:class:`_SeriesEncoder`) instead of once per slice, and the pixels
    go from the array to the file without copies.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = hu.shape
    encoder = _SeriesEncoder(_series_header(info, rows, cols), _file_meta(info.sop_uids[0]),
                             _slice_elements(info, 0, n, rows, cols, b""))
    stored = np.empty((rows, cols), dtype=info.rescale.dtype)  # each slice's integers, written before the next
    paths = []
    for k in range(n):
        chunks = encoder.encode(info.sop_uids[k], _slice_elements(info, k, n, rows, cols, b""),
                                info.rescale.encode(hu[k], out=stored))
        path = folder / f"{info.sop_uids[k]}.dcm"
        with atomic.opened(path) as handle:
            handle.writelines(chunks)
        paths.append(path)
    return paths


def _file_meta(sop_uid: str) -> FileMetaDataset:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["headct-phantom-implementation"])
    meta.ImplementationVersionName = "HEADCT_PHANTOM"
    return meta


def _series_header(info: SeriesInfo, rows: int, cols: int) -> Dataset:
    """The elements every slice of the series shares (``info.tags`` applied last, bar per-slice ones)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage

    cos, sin = math.cos(math.radians(info.tilt)), math.sin(math.radians(info.tilt))
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.Modality = "CT"
    ds.Manufacturer = "headct phantom"
    ds.StudyDescription = "HEAD WO CONTRAST (synthetic)"
    ds.SeriesDescription = "AXIAL BRAIN (synthetic)"
    ds.PatientName = ""
    ds.PatientID = info.patient_id
    ds.KVP = "120"
    ds.SliceThickness = _ds(info.slice_thickness)
    ds.SpacingBetweenSlices = _ds(info.slice_thickness)
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.FrameOfReferenceUID = info.frame_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", _ds(cos), _ds(sin)]
    if info.tilt:
        ds.GantryDetectorTilt = _ds(info.tilt)
    if info.orientation is not None:
        ds.ImageOrientationPatient = [_ds(v) for v in info.orientation]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = [_ds(info.pixel_spacing), _ds(info.pixel_spacing)]
    ds.BitsAllocated = 16
    ds.BitsStored = info.rescale.bits_stored
    ds.HighBit = info.rescale.bits_stored - 1
    ds.PixelRepresentation = 1 if info.rescale.signed else 0
    ds.WindowCenter, ds.WindowWidth = "40", "80"
    ds.RescaleIntercept = _ds(info.rescale.intercept)
    ds.RescaleSlope = _ds(info.rescale.slope)
    ds.RescaleType = "HU"
    for keyword, value in info.tags:
        if keyword not in _SLICE_KEYWORDS:
            setattr(ds, keyword, value)
    return ds


_SLICE_KEYWORDS = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData")
"""What :func:`_slice_elements` sets, in tag order; every other element is the series header's."""


def _slice_elements(info: SeriesInfo, k: int, n: int, rows: int, cols: int, pixels: bytes) -> list[DataElement]:
    """The elements that differ between slices, in tag order (``info.tags`` naming one of them still wins).

    Made as pydicom elements directly: a Dataset and five attribute assignments cost twice as much.
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement

    origin = -(cols / 2 - 0.5) * info.pixel_spacing, -(rows / 2 - 0.5) * info.pixel_spacing
    # a tilted gantry leans the planes, the column direction gains a z part, and the
    # table still steps along z: positions step along z, not along the slice normal
    cos, sin = math.cos(math.radians(info.tilt)), math.sin(math.radians(info.tilt))
    position = info.positions[k] if info.positions is not None else (
        origin[0], origin[1] * cos, info.table_z[k] + origin[1] * sin)
    values = {
        "SOPInstanceUID": info.sop_uids[k],
        "InstanceNumber": (n - k) if info.descending_instances else (k + 1),
        "ImagePositionPatient": [_ds(v) for v in position],
        "SliceLocation": _ds(info.table_z[k]),
        "PixelData": pixels,
    }
    for keyword, value in info.tags:
        if keyword in values:
            values[keyword] = value
    elements = []
    for keyword in _SLICE_KEYWORDS:
        tag = tag_for_keyword(keyword)
        vr = "OW" if tag == _PIXEL_DATA else dictionary_VR(tag)  # OW: what pydicom's writer picks for 16 bits
        elements.append(DataElement(tag, vr, values[keyword]))
    return elements


class _SeriesEncoder:
    """Explicit VR little-endian files from a series header encoded once and per-slice elements.

    pydicom encodes every element; only the joining is ours: a file is the
    preamble, the file meta group (its length first), then the data set's
    elements in tag order. The elements shared by every file (the meta group's
    bar its length and SOP instance UID, the header's) are pre-encoded in runs
    that fall between the per-file tags, and each file's own elements are
    encoded into the gaps. Pixel Data is written from the array itself.
    """

    def __init__(self, header: Dataset, meta: FileMetaDataset, slice_example: Sequence[DataElement]) -> None:
        from pydicom.dataset import validate_file_meta

        tags = [element.tag for element in slice_example]
        overlap = set(header.keys()) & set(tags)
        if overlap:
            raise ValueError(f"header and slice elements overlap: {sorted(overlap)}")
        if tags != sorted(tags) or tags[-1:] != [_PIXEL_DATA]:
            raise ValueError("slice elements must be in tag order, Pixel Data last")
        self.encoding = header.get("SpecificCharacterSet", "ISO_IR 100")
        meta = copy.deepcopy(meta)
        validate_file_meta(meta, enforce_standard=True)  # what save_as adds: version, implementation
        self.meta_runs = _runs(meta, [_MEDIA_SOP_INSTANCE], self.encoding, skip=frozenset({_GROUP_LENGTH}))
        self.slice_tags = tags
        self.runs = _runs(header, self.slice_tags, self.encoding)
        self.pixel_header = _encoded(_data_element(_PIXEL_DATA, "OW", b""), self.encoding)[:-4]  # less its length

    def encode(self, sop_uid: str, elements: Sequence[DataElement], pixels: np.ndarray) -> list[bytes | memoryview]:
        """One file as byte chunks: preamble, meta group for ``sop_uid``, header and ``elements``, ``pixels``.

        ``elements`` are this file's, in tag order; its Pixel Data value is ignored for ``pixels``
        (a contiguous little-endian array of 16-bit stored values).
        """
        from pydicom.filewriter import write_data_element

        if [element.tag for element in elements] != self.slice_tags:
            raise ValueError("slice elements differ from the series' first slice")
        meta = _explicit_little_buffer()
        meta.write(self.meta_runs[0])
        write_data_element(meta, _data_element(_MEDIA_SOP_INSTANCE, "UI", sop_uid), self.encoding)
        meta.write(self.meta_runs[1])
        head = _explicit_little_buffer()
        head.write(b"\x00" * 128 + b"DICM")
        write_data_element(head, _data_element(_GROUP_LENGTH, "UL", meta.tell()), self.encoding)
        head.write(meta.getvalue())
        for run, element in zip(self.runs, elements, strict=False):
            head.write(run)
            if element.tag != _PIXEL_DATA:
                write_data_element(head, element, self.encoding)
        data = memoryview(np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))).cast("B")
        # the 4-byte length that pydicom writes after tag and VR (a pixel array has an even byte count)
        head.write(self.pixel_header + len(data).to_bytes(4, "little"))
        return [head.getvalue(), data, self.runs[-1]]  # the last run: header elements after Pixel Data


_GROUP_LENGTH, _MEDIA_SOP_INSTANCE, _PIXEL_DATA = 0x00020000, 0x00020003, 0x7FE00010


def _runs(template: Dataset, own_tags: Sequence[int], encoding: str, skip: frozenset[int] = frozenset()) -> list[bytes]:
    """``template``'s encoded elements split around ``own_tags``: run i holds those before own tag i.

    The last run holds those after every own tag; tags in ``skip`` are left out.
    """
    from pydicom.filewriter import write_dataset

    bounds = [*own_tags, None]
    runs = []
    tags = sorted(tag for tag in template.keys() if tag not in skip and tag not in own_tags)
    for i, bound in enumerate(bounds):
        low = own_tags[i - 1] if i else None
        run = template.__class__()
        for tag in tags:
            if (low is None or tag > low) and (bound is None or tag < bound):
                run.add(template.get_item(tag))
        buffer = _explicit_little_buffer()
        write_dataset(buffer, run, encoding)
        runs.append(buffer.getvalue())
    return runs


def _data_element(tag: int, vr: str, value: object) -> DataElement:
    from pydicom.dataelem import DataElement

    return DataElement(tag, vr, value)


def _encoded(element: DataElement | RawDataElement, encoding: str) -> bytes:
    """One element as pydicom writes it (explicit VR little endian)."""
    from pydicom.filewriter import write_data_element

    buffer = _explicit_little_buffer()
    write_data_element(buffer, element, encoding)
    return buffer.getvalue()


def _explicit_little_buffer() -> DicomBytesIO:
    from pydicom.filebase import DicomBytesIO

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    return buffer


def brain_window_png(hu: np.ndarray) -> np.ndarray:
    """HU slice → 8-bit brain window (40/80), the TEKNOFEST images' look."""
    # imported here: headct.windows imports torch, which only the PNG layout needs (pool workers start faster)
    from headct.windows import apply_windows

    return np.rint(apply_windows(hu, ["brain"])[0] * 255.0).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    """An 8-bit grey (or RGB) PNG, atomically; cv2's encoder (~5x faster than PIL's at 512²)."""
    pixels = image if image.ndim == 2 else np.ascontiguousarray(image[..., ::-1])  # cv2 takes BGR
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"cv2 could not encode a {image.shape} {image.dtype} image as PNG")
    with atomic.opened(path) as handle:
        handle.write(encoded)


MASK_ZLIB_LEVEL = 1
"""Masks are mostly zeros: deflate level 1 takes half the time of the default 6 for files ~3x larger."""


def write_masks(path: Path, uids: Sequence[str], masks: np.ndarray) -> None:
    """``masks/<study>.npz``: ``uids`` (str [S]) and ``masks`` (uint8 [S, H, W]), compressed.

    Written by hand rather than with ``np.savez_compressed``, which stamps the
    current time into each zip entry; a fixed stamp keeps outputs byte-identical.
    Each array streams into its zip entry after its .npy header (what
    ``np.save`` writes), without the two whole-array copies ``np.save`` into a
    buffer would make (~10 MB per study at 512²); the masks go slice by slice
    through :class:`_SliceDeflate`, which spends nothing on all-zero slices.
    """
    arrays = {"uids": np.asarray(list(uids), dtype=str), "masks": np.ascontiguousarray(masks, dtype=np.uint8)}
    with atomic.opened(path) as handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry._compresslevel = MASK_ZLIB_LEVEL  # what writestr(compresslevel=) sets; open() takes none
            entry.external_attr = 0o644 << 16
            entry.file_size = header.tell() + array.nbytes
            with archive.open(entry, "w") as stream:
                if name == "masks" and array.ndim == 3 and hasattr(stream, "_compressor"):
                    stream._compressor = _SliceDeflate(array[0].nbytes)  # zipfile's deflate object, swapped
                stream.write(header.getbuffer())
                for plane in array if array.ndim == 3 else [array]:
                    stream.write(memoryview(plane).cast("B"))


class _SliceDeflate:
    """Raw deflate (what a zip entry holds) of a mask stack, written a slice per call.

    Most slices of a study have no lesion; deflating their zeros cost ~0.4 ms per
    512² slice. An all-zero slice is instead the compressed bytes of one zero
    slice, made once per size: deflate streams may be joined at a full flush,
    after which no block refers back, so the stream stays valid and the same
    for the same masks. Other data goes through zlib as usual (run-length
    strategy: masks are runs of a few bit values, and files come out smaller).
    """

    def __init__(self, slice_bytes: int) -> None:
        self._deflate = zlib.compressobj(MASK_ZLIB_LEVEL, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
        self._slice_bytes = slice_bytes
        self._pending = False  # data given to zlib since its last flush

    def compress(self, data: bytes | memoryview) -> bytes:
        if len(data) != self._slice_bytes or np.frombuffer(data, dtype=np.uint8).any():
            self._pending = True
            return self._deflate.compress(data)
        head = self._deflate.flush(zlib.Z_FULL_FLUSH) if self._pending else b""
        self._pending = False
        return head + _deflated_zero_slice(self._slice_bytes)

    def flush(self, mode: int = zlib.Z_FINISH) -> bytes:
        return self._deflate.flush(mode)


@functools.lru_cache(maxsize=4)
def _deflated_zero_slice(slice_bytes: int) -> bytes:
    """``slice_bytes`` zeros as raw deflate blocks ending in a full flush (no final block): a joinable piece."""
    deflate = zlib.compressobj(MASK_ZLIB_LEVEL, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    return deflate.compress(bytes(slice_bytes)) + deflate.flush(zlib.Z_FULL_FLUSH)


def write_rsna_labels(path: Path, rows: Sequence[tuple[str, dict[str, int]]]) -> None:
    """RSNA ``ID,Label`` CSV: six rows ``ID_<SOPInstanceUID>_<subtype>`` per slice."""
    with atomic.opened(path) as handle, io.TextIOWrapper(handle, encoding="utf-8", newline="") as text:
        out = csv.writer(text, lineterminator="\n")
        out.writerow(["ID", "Label"])
        for sop_uid, labels in rows:
            for name in RSNA_LABELS:
                out.writerow([f"ID_{sop_uid}_{name}", int(labels[name])])


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for a float."""
    text = f"{float(value):.6g}"
    return "0" if text == "-0" else text


# --- JPEG lossless (tests and benchmarks of the compressed read path) ------------------

def compress_jpeg_lossless(ds) -> None:
    """Re-encode a dataset's uncompressed 16-bit frame as JPEG lossless SV1, in place."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    image = np.frombuffer(ds.PixelData, dtype="<i2" if ds.PixelRepresentation else "<u2")
    frame = encode_jpeg_lossless(image.reshape(ds.Rows, ds.Columns))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def encode_jpeg_lossless(image: np.ndarray) -> bytes:
    """One 16-bit grey frame as JPEG lossless, process 14, selection value 1 (ITU T.81 H).

    Hand-written because nothing installed encodes it (pydicom has no encoder
    for it; pylibjpeg-libjpeg only decodes), and the readers' JPEG lossless
    paths (pylibjpeg, nvImageCodec) deserve tests and benchmarks on CT-like data.
    One Huffman table gives every difference category 0..16 a 5-bit code equal
    to the category. Pure Python: about 0.1 s per 256x256 frame.
    """
    rows, cols = image.shape
    x = image.astype(np.uint16).astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << 15  # 2**(P-1): first sample of the scan
    pred[0, 1:] = x[0, :-1]  # first line: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the sample above
    pred[1:, 1:] = x[1:, :-1]  # selection value 1: left neighbour
    diffs = (x - pred) & 0xFFFF
    diffs = np.where(diffs >= 1 << 15, diffs - (1 << 16), diffs)
    acc, nbits, out = 0, 0, bytearray()
    for d in diffs.ravel().tolist():
        size = 16 if d == -(1 << 15) else abs(d).bit_length()
        acc, nbits = (acc << 5) | size, nbits + 5
        if 0 < size < 16:
            acc, nbits = (acc << size) | (d if d > 0 else d + (1 << size) - 1), nbits + size
        while nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
            if out[-1] == 0xFF:
                out.append(0)  # byte stuffing
        acc &= (1 << nbits) - 1
    if nbits:
        out.append(((acc << (8 - nbits)) | ((1 << (8 - nbits)) - 1)) & 0xFF)  # pad with 1s
        if out[-1] == 0xFF:
            out.append(0)
    size = rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    sof3 = b"\xff\xc3\x00\x0b\x10" + size + b"\x01\x01\x11\x00"
    dht = b"\xff\xc4\x00\x24\x00" + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + sof3 + dht + sos + bytes(out) + b"\xff\xd9"
