"""JPEG-lossless and JPEG 2000 pixel data decoded on the GPU by NVIDIA nvImageCodec, where it imports.

Optional extra ``gpu-decode`` (``nvidia-nvimgcodec-cu12``). The decoder is
registered as a pydicom decoding plugin (pydicom's own extension point, the
way MONAI Deploy does it), and :func:`decode_on_gpu` asks pydicom for that
plugin by name, so pydicom keeps doing what it does around the codec
(encapsulated frames, bit depth, signedness). Where nvImageCodec does not
import, no CUDA device is there, ``HEADCT_GPU_DECODE=0`` is set, or the
syntax is another one, :func:`decode_on_gpu` returns None and the caller
decodes with pylibjpeg as before. A frame nvImageCodec fails on is logged
and returned as None as well, so the CPU path still reads it.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PLUGIN = "nvimgcodec"
GPU_SYNTAXES = {
    "1.2.840.10008.1.2.4.57": "JPEGLosslessDecoder",      # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70": "JPEGLosslessSV1Decoder",   # JPEG lossless, selection value 1
    "1.2.840.10008.1.2.4.90": "JPEG2000LosslessDecoder",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "JPEG2000Decoder",          # JPEG 2000
}
DECODER_DEPENDENCIES = {uid: ("nvidia-nvimgcodec-cu12 (pip install 'headct[gpu-decode]')", "a CUDA device")
                        for uid in GPU_SYNTAXES}
"""What pydicom names when the plugin is unavailable (its plugin contract)."""


def decode_on_gpu(ds: Any) -> np.ndarray | None:
    """Stored pixel values ``[H, W]`` of ``ds`` decoded by nvImageCodec, or None to decode on the CPU."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if syntax not in GPU_SYNTAXES or not register_plugin():
        return None
    from pydicom.pixels import get_decoder

    try:
        array, _ = get_decoder(syntax).as_array(ds, decoding_plugin=PLUGIN)
    except Exception as exc:  # noqa: BLE001 - any codec failure: the CPU path reads it instead
        log.warning("nvImageCodec could not decode a frame (%s: %s); decoding on the CPU", type(exc).__name__, exc)
        return None
    return array


@functools.cache
def register_plugin() -> bool:
    """Add the nvImageCodec plugin to pydicom's JPEG-lossless and JPEG 2000 decoders (once); True if usable."""
    if os.environ.get("HEADCT_GPU_DECODE", "1") == "0" or _nvimgcodec() is None or not _cuda():
        return False
    from pydicom.pixels import decoders

    for name in GPU_SYNTAXES.values():
        decoder = getattr(decoders, name)
        if PLUGIN not in decoder.available_plugins:
            decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
    log.info("JPEG-lossless and JPEG 2000 pixel data are decoded on the GPU (nvImageCodec)")
    return True


# --- pydicom's plugin contract: is_available(uid), DECODER_DEPENDENCIES, a frame decoder -----------

def is_available(uid: Any) -> bool:
    """pydicom asks this when the plugin is added: is ``uid`` one we decode, with nvImageCodec and CUDA there?"""
    return str(uid) in GPU_SYNTAXES and _nvimgcodec() is not None and _cuda()


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One encoded frame → its decoded samples as bytes (pydicom turns them into the array)."""
    nvimgcodec = _nvimgcodec()
    if runner.samples_per_pixel != 1:
        raise ValueError("only single-sample (grey) frames are decoded on the GPU")
    if str(runner.transfer_syntax) in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"):
        precision = runner.get_option("j2k_precision", runner.bits_stored)
        runner.set_option("bits_allocated", 8 if precision <= 8 else 16)
    params = nvimgcodec.DecodeParams(allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.UNCHANGED)
    image = _decoder().decode(src, params=params)
    if not image:
        raise RuntimeError("nvImageCodec returned no image")
    return np.ascontiguousarray(np.asarray(image.cpu())).tobytes()


# --- helpers ---------------------------------------------------------------------------------------

@functools.cache
def _nvimgcodec() -> Any:
    try:
        from nvidia import nvimgcodec
    except ImportError:
        return None
    return nvimgcodec


@functools.cache
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def _decoder() -> Any:
    return _nvimgcodec().Decoder()
