"""Uncompressed little-endian DICOM files parsed without pydicom's reader, for :func:`read_slice`'s common case.

Why by hand: ``pydicom.dcmread`` walks every element through Python-level
generators and file reads; on a 512² CT slice that parse is most of the CPU
time of a cache build (issue 17), while read_slice needs a few dozen top-level
elements and the pixel bytes. :func:`plain_dataset` walks the bytes once with
``struct`` and hands back a real ``pydicom.Dataset`` holding the same
``RawDataElement`` objects that dcmread would hold (pydicom still converts each
value when it is read), so every reader downstream is unchanged.

It answers only the plain case and returns None for anything else, which then
goes through ``pydicom.dcmread`` as before, with its own fault messages: no
``DICM`` preamble, a transfer syntax other than Implicit/Explicit VR Little
Endian (compressed, deflated, big endian), an element or item that runs past
the end of the file (truncation), encapsulated or undefined-length pixel data,
a repeated tag, a Modality LUT Sequence (its values need pydicom's sequence
reader), or a malformed meta group. Sequences are skipped (read_slice reads
none of them), so the returned dataset holds no SQ elements.
"""

from __future__ import annotations

import struct

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

PREAMBLE = 128
_MAGIC = b"DICM"
_META_GROUP = 0x0002
_TRANSFER_SYNTAX = 0x00020010
_CHARACTER_SET = 0x00080005
_MODALITY_LUT_SEQUENCE = 0x00283000
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)  # pydicom's: 32-bit lengths
_KNOWN_VRS = _LONG_VRS | frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_16)  # pydicom refuses others
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (the long VRs: 32-bit length at +8)
_IMPLICIT = struct.Struct("<HHI")
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_VR_LIKE = frozenset(bytes((a, b)) for a in range(65, 91) for b in range(65, 91))
"""Two upper-case letters: how pydicom tells an explicit from an implicit VR file at its first element."""
_SYNTAXES = {str(ExplicitVRLittleEndian): False, str(ImplicitVRLittleEndian): True}  # UID → implicit VR
_MAX_DEPTH = 16  # nested sequences deeper than this: not a plain CT header, leave it to pydicom


class _NotPlain(Exception):
    """The bytes are not the plain case (or are broken): pydicom reads them instead."""


def plain_dataset(data: bytes) -> Dataset | None:
    """A ``Dataset`` of the file's top-level non-sequence elements (raw), with ``file_meta``; None if not plain.

    PixelData's value is a ``memoryview`` of ``data`` (read_slice reads it with ``np.frombuffer``).
    """
    try:
        return _parse(data)
    except Exception:  # noqa: BLE001 - any doubt about the bytes: pydicom reads them, with its own messages
        return None


def plain_header(prefix: bytes) -> Dataset | None:
    """As :func:`plain_dataset` on the first bytes of a file, without the pixels: the elements before
    PixelData. None unless ``prefix`` reaches PixelData (or the file's end) through plain elements."""
    try:
        return _parse(prefix, header_only=True)
    except Exception:  # noqa: BLE001 - as plain_dataset: the caller asks pydicom instead
        return None


def _parse(data: bytes, header_only: bool = False) -> Dataset:
    if len(data) < PREAMBLE + 4 or data[PREAMBLE:PREAMBLE + 4] != _MAGIC:
        raise _NotPlain
    meta, position = _read_meta(data, PREAMBLE + 4)
    implicit = _SYNTAXES.get(meta.get(_TRANSFER_SYNTAX, b"").decode("ascii").strip("\0 "))
    if implicit is None:
        raise _NotPlain
    if implicit and data[position + 4:position + 6] in _VR_LIKE:
        raise _NotPlain  # a file that says implicit VR but is written explicit: pydicom notices and copes
    elements: dict[BaseTag, RawDataElement] = {}
    end = len(data)
    while position < end:
        if header_only and _tag_at(data, position) >= _PIXEL_DATA:
            break  # PixelData (or what follows it): the prefix may end anywhere inside it
        tag, vr, length, value_at = _element_header(data, position, implicit)
        if tag in elements or tag >> 16 in (_META_GROUP, 0xFFFE) or tag == _MODALITY_LUT_SEQUENCE:
            raise _NotPlain
        if vr == b"UN" and length == _UNDEFINED:
            raise _NotPlain  # its items are implicit VR inside an explicit file: pydicom's case
        if vr == b"SQ" or (length == _UNDEFINED and tag != _PIXEL_DATA) or (implicit and _is_sequence(tag)):
            position = _skip_value(data, value_at, length, implicit, depth=1)
            continue
        if length == _UNDEFINED or value_at + length > end:
            raise _NotPlain  # encapsulated pixel data, or a value cut short by the end of the file
        value = (memoryview(data)[value_at:value_at + length] if tag == _PIXEL_DATA  # no copy of the pixels
                 else data[value_at:value_at + length])
        elements[BaseTag(tag)] = RawDataElement(BaseTag(tag), None if implicit else vr.decode("ascii"), length,
                                                value, value_at, implicit, True, True, False)
        position = value_at + length
    dataset = Dataset(elements)
    dataset.file_meta = _file_meta(meta[_TRANSFER_SYNTAX])
    charset = elements.get(BaseTag(_CHARACTER_SET))  # as pydicom's read_dataset sets it
    encoding = convert_encodings(convert_raw_data_element(charset).value) if charset else default_encoding
    dataset.set_original_encoding(implicit, True, encoding)
    return dataset


def _read_meta(data: bytes, position: int) -> tuple[dict[int, bytes], int]:
    """The file meta group (always explicit VR little endian): ``({tag: value}, where the dataset starts)``."""
    meta: dict[int, bytes] = {}
    end = len(data)
    while position + 4 <= end and _U16.unpack_from(data, position)[0] == _META_GROUP:
        tag, vr, length, value_at = _element_header(data, position, implicit=False)
        if length == _UNDEFINED or value_at + length > end or tag in meta:
            raise _NotPlain
        meta[tag] = data[value_at:value_at + length]
        position = value_at + length
    if _TRANSFER_SYNTAX not in meta:
        raise _NotPlain
    return meta, position


def _element_header(data: bytes, position: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """``(tag, VR or None, value length, where the value starts)`` of the element at ``position``."""
    if implicit:
        group, element, length = _IMPLICIT.unpack_from(data, position)
        return group << 16 | element, None, length, position + 8
    group, element, vr, length = _EXPLICIT.unpack_from(data, position)
    tag = group << 16 | element
    if group == 0xFFFE:  # items and delimiters carry no VR in any syntax
        return tag, None, _U32.unpack_from(data, position + 4)[0], position + 8
    if vr not in _KNOWN_VRS:
        raise _NotPlain
    if vr in _LONG_VRS:
        return tag, vr, _U32.unpack_from(data, position + 8)[0], position + 12
    return tag, vr, length, position + 8


def _tag_at(data: bytes, position: int) -> int:
    group, element = _TAG.unpack_from(data, position)
    return group << 16 | element


def _is_sequence(tag: int) -> bool:
    """A sequence by the data dictionary (implicit VR files do not say)."""
    entry = DicomDictionary.get(tag)
    return entry is not None and entry[0] == "SQ"


def _skip_value(data: bytes, position: int, length: int, implicit: bool, depth: int) -> int:
    """Where a sequence's (or an undefined-length value's) value ends, starting at ``position``."""
    if length != _UNDEFINED:
        if position + length > len(data):
            raise _NotPlain
        return position + length
    if depth > _MAX_DEPTH:
        raise _NotPlain
    while True:  # items until the sequence delimiter; every step moves forward or raises
        tag, _, item_length, value_at = _element_header(data, position, implicit)
        if tag == _SEQUENCE_END:
            return value_at
        if tag != _ITEM:
            raise _NotPlain
        position = value_at + item_length if item_length != _UNDEFINED else _skip_item(data, value_at, implicit, depth)
        if position > len(data):
            raise _NotPlain


def _skip_item(data: bytes, position: int, implicit: bool, depth: int) -> int:
    """Where an undefined-length item ends: its elements (sequences recursively) up to the item delimiter."""
    while True:
        tag, vr, length, value_at = _element_header(data, position, implicit)
        if tag == _ITEM_END:
            return value_at
        if vr == b"SQ" or length == _UNDEFINED:
            position = _skip_value(data, value_at, length, implicit, depth + 1)
        else:
            position = value_at + length
        if position > len(data):
            raise _NotPlain


_FILE_META: dict[bytes, FileMetaDataset] = {}


def _file_meta(syntax: bytes) -> FileMetaDataset:
    """One shared, read-only meta per transfer syntax: read_slice reads only its TransferSyntaxUID."""
    if syntax not in _FILE_META:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = syntax.decode("ascii").strip("\0 ")
        _FILE_META[syntax] = meta
    return _FILE_META[syntax]
