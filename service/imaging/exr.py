"""OpenEXR results: the linear HDR image as scanline, ZIP-compressed R, G, B channels.

OpenEXR 3.x's Python binding reads and writes streams, so no temporary file is involved.
ZIP (deflate over 16 scanlines) is lossless and what most tools read fastest.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import OpenEXR

from service.errors import UnsupportedImage

ExrDtype = Literal["float16", "float32"]

HALF_MAX = 65504.0
"""The largest finite half-precision value."""

_CHANNELS = ("R", "G", "B")


def _check_hdr(hdr: np.ndarray) -> None:
    if hdr.ndim != 3 or hdr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {hdr.shape}")
    if hdr.shape[0] == 0 or hdr.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {hdr.shape}")


def encode_exr(hdr: np.ndarray, dtype: ExrDtype = "float32") -> bytes:
    """The bytes of a single-part scanline EXR with channels R, G, B (ZIP compression).

    ``float16`` halves the file at about three decimal digits of precision; values beyond
    the half range (|x| > 65504, infinities included) are clamped to +-65504 instead of
    becoming infinities that poison every later average. AFUNet outputs lie in [0, 1], so
    only the classical fallback model can reach the clamp. NaNs are written as NaNs.
    """
    _check_hdr(hdr)
    if dtype == "float32":
        samples = hdr.astype(np.float32, copy=False)
    elif dtype == "float16":
        samples = np.clip(hdr.astype(np.float32, copy=False), -HALF_MAX, HALF_MAX)
        samples = samples.astype(np.float16)
    else:
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    channels = {
        channel: np.ascontiguousarray(samples[:, :, i]) for i, channel in enumerate(_CHANNELS)
    }
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    stream = io.BytesIO()
    OpenEXR.File(header, channels).write(stream)
    return stream.getvalue()


def decode_exr(data: bytes) -> np.ndarray:
    """The R, G, B channels of an EXR file as H x W x 3 float32 (half samples widened)."""
    try:
        exr = OpenEXR.File(io.BytesIO(data), separate_channels=True)
        channels = exr.channels()
    except Exception as exc:  # the binding reports every unreadable file as RuntimeError
        raise UnsupportedImage(f"not a readable OpenEXR file ({exc})") from exc
    missing = [name for name in _CHANNELS if name not in channels]
    if missing:
        raise UnsupportedImage(
            f"OpenEXR file lacks channel(s) {', '.join(missing)}; has {', '.join(channels)}"
        )
    return np.stack([channels[name].pixels for name in _CHANNELS], axis=-1).astype(np.float32)
