"""nvImageCodec decode path: parity with pylibjpeg where it runs, the CPU fallback everywhere."""

from __future__ import annotations

import importlib.util

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1

from headct.io import gpu_decode
from headct.io.dicom import read_slice

SYNTAXES = [JPEGLosslessSV1, JPEG2000Lossless]


def _gpu_decode_usable() -> tuple[bool, str]:
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.nvimgcodec") is None:
        return False, "nvidia.nvimgcodec does not import (pip install 'headct[gpu-decode]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return False, "nvImageCodec is installed but no CUDA device is visible"
    return True, ""


GPU, WHY_NOT = _gpu_decode_usable()


def _ct(stored: np.ndarray, make_ct, compress, syntax):
    ds = make_ct(stored)
    return compress(ds, syntax) if syntax != ExplicitVRLittleEndian else ds


@pytest.fixture(autouse=True)
def _fresh_registration():
    gpu_decode.register_plugin.cache_clear()
    yield
    gpu_decode.register_plugin.cache_clear()


@pytest.mark.skipif(not GPU, reason=WHY_NOT)
@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_gpu_decode_equals_pylibjpeg(syntax, signed, make_ct, compress, write_ct) -> None:
    rng = np.random.default_rng(3)
    stored = rng.integers(-2000 if signed else 0, 3000 if signed else 4095, (64, 64)).astype(
        np.int16 if signed else np.uint16)
    ds = make_ct(stored, pixel_representation=int(signed), bits_stored=16 if signed else 12)
    path = write_ct("packed.dcm", compress(ds, syntax))
    on_gpu = gpu_decode.decode_on_gpu(pydicom.dcmread(path))
    assert on_gpu is not None, "the GPU path declined a syntax it claims"
    on_cpu = pydicom.pixels.get_decoder(syntax).as_array(pydicom.dcmread(path), decoding_plugin="pylibjpeg")[0]
    np.testing.assert_array_equal(on_gpu, on_cpu)
    np.testing.assert_array_equal(on_gpu, stored)
    assert on_gpu.dtype == on_cpu.dtype
    np.testing.assert_array_equal(read_slice(path).hu, read_slice(write_ct("plain.dcm", make_ct(
        stored, pixel_representation=int(signed), bits_stored=16 if signed else 12))).hu)


@pytest.mark.skipif(GPU, reason="checks the fallback where nvImageCodec cannot run")
@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
def test_without_nvimgcodec_the_cpu_decodes(syntax, make_ct, compress, write_ct) -> None:
    stored = np.random.default_rng(4).integers(-1500, 2500, (64, 64)).astype(np.int16)
    path = write_ct("packed.dcm", compress(make_ct(stored), syntax))
    assert gpu_decode.decode_on_gpu(pydicom.dcmread(path)) is None
    assert not gpu_decode.register_plugin()
    np.testing.assert_array_equal(read_slice(path).hu, stored.astype(np.int32) - 1024)  # intercept -1024


def test_other_syntaxes_and_the_off_switch_never_reach_the_gpu(make_ct, write_ct, monkeypatch) -> None:
    plain = pydicom.dcmread(write_ct("plain.dcm", make_ct()))
    assert gpu_decode.decode_on_gpu(plain) is None  # uncompressed: not ours, whatever is installed
    monkeypatch.setenv("HEADCT_GPU_DECODE", "0")
    assert not gpu_decode.register_plugin()
    assert not gpu_decode.is_available("1.2.840.10008.1.2.1")


class _FakeImage:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def cpu(self) -> _FakeImage:
        return self

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.array


class _FakeNvImageCodec:
    """nvImageCodec's Python surface that the plugin uses, decoding with pylibjpeg's codecs on the CPU."""

    class ColorSpec:
        UNCHANGED = "unchanged"

    class DecodeParams:
        def __init__(self, *, allow_any_depth: bool, color_spec: str) -> None:
            assert allow_any_depth and color_spec == "unchanged"

    class Decoder:
        def decode(self, data: bytes, params=None) -> _FakeImage:
            import libjpeg
            import openjpeg

            codec = openjpeg if bytes(data[:2]) == b"\xff\x4f" else libjpeg  # J2K codestream or JPEG
            return _FakeImage(np.asarray(codec.decode(bytes(data)))[..., None])  # nvImageCodec's HWC


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_plugin_glue_gives_pydicoms_array(syntax, signed, make_ct, compress, write_ct, monkeypatch) -> None:
    """Registration and frame decoding, with nvImageCodec replaced by a CPU double (its API as the plugin uses it)."""
    from pydicom.pixels import decoders

    monkeypatch.setattr(gpu_decode, "_nvimgcodec", lambda: _FakeNvImageCodec)
    monkeypatch.setattr(gpu_decode, "_cuda", lambda: True)
    monkeypatch.setattr(gpu_decode, "_decoder", lambda: _FakeNvImageCodec.Decoder())
    stored = np.random.default_rng(6).integers(-2000 if signed else 0, 3000 if signed else 4095, (64, 64)).astype(
        np.int16 if signed else np.uint16)
    path = write_ct("packed.dcm", compress(make_ct(stored, pixel_representation=int(signed),
                                                   bits_stored=16 if signed else 12), syntax))
    try:
        decoded = gpu_decode.decode_on_gpu(pydicom.dcmread(path))
        assert gpu_decode.PLUGIN in decoders.JPEGLosslessSV1Decoder.available_plugins
    finally:
        for name in gpu_decode.GPU_SYNTAXES.values():
            if gpu_decode.PLUGIN in getattr(decoders, name).available_plugins:
                getattr(decoders, name).remove_plugin(gpu_decode.PLUGIN)
    assert decoded is not None
    assert decoded.dtype == (np.int16 if signed else np.uint16)
    np.testing.assert_array_equal(decoded, stored)
