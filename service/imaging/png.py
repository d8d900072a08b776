"""PNG: header facts from the chunk list, pixels from libpng (through ``imagecodecs``).

Pillow cannot be used for the pixels: it reduces 16-bit RGB PNGs to 8 bits, and 16-bit
exposures are what carry the information AFUNet was trained on. libpng keeps every bit.
The header is read by walking the chunks directly (lengths only, nothing inflated), so a
few bytes declaring 100000 x 100000 pixels are measured without allocating any.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import imagecodecs
import numpy as np

from service.errors import UnsupportedImage
from service.imaging.exif import parse_exif
from service.imaging.formats import ImageFormat, ImageInfo, label

_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# PNG colour type -> (what it is, channels it stores)
_COLOUR_TYPES: dict[int, tuple[str, int]] = {
    0: ("grayscale", 1),
    2: ("RGB", 3),
    3: ("palette-indexed", 1),
    4: ("grayscale+alpha", 2),
    6: ("RGBA", 4),
}


@dataclass(frozen=True)
class _Chunks:
    """What the chunk walk found: IHDR's fields and the chunks that change the verdict."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    exif: bytes | None
    animated: bool


def _walk(data: bytes, name: str | None) -> _Chunks:
    """Read IHDR and note ``eXIf`` and ``acTL``, skipping every other chunk by its length."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise UnsupportedImage(f"{label(name)}truncated or corrupt PNG: no IHDR header")
    (length,) = struct.unpack_from(">I", data, 8)
    ihdr = data[16:29]
    (crc,) = struct.unpack_from(">I", data, 29)
    if length != 13 or zlib.crc32(b"IHDR" + ihdr) != crc:
        raise UnsupportedImage(f"{label(name)}corrupt PNG: damaged IHDR header")
    width, height, bit_depth, colour_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", ihdr
    )
    if (
        width == 0
        or height == 0
        or colour_type not in _COLOUR_TYPES
        or bit_depth not in (1, 2, 4, 8, 16)
        or (compression, filtering) != (0, 0)
        or interlace not in (0, 1)
    ):
        raise UnsupportedImage(f"{label(name)}corrupt PNG: invalid IHDR header")

    exif: bytes | None = None
    animated = False
    pos = 33
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        if kind == b"IEND" or body + length > len(data):
            break  # a cut-off tail is the pixel decoder's to report, with the right words
        if kind == b"eXIf":
            exif = data[body : body + length]
        elif kind == b"acTL":
            animated = True
        pos = body + length + 4
    return _Chunks(width, height, bit_depth, colour_type, exif, animated)


def read_header(data: bytes, name: str | None) -> ImageInfo:
    """The PNG's :class:`ImageInfo`; :class:`UnsupportedImage` unless it is a still RGB image."""
    chunks = _walk(data, name)
    what, channels = _COLOUR_TYPES[chunks.colour_type]
    if chunks.colour_type == 3:
        raise UnsupportedImage(f"{label(name)}PNG image is palette-indexed; expected RGB")
    if chunks.colour_type != 2:
        plural = "channel" if channels == 1 else "channels"
        raise UnsupportedImage(f"{label(name)}image has {channels} {plural} ({what}); expected RGB")
    if chunks.animated:
        raise UnsupportedImage(f"{label(name)}animated PNG (APNG); expected a still image")
    return ImageInfo(
        format=ImageFormat.PNG,
        width=chunks.width,
        height=chunks.height,
        channels=3,
        bit_depth=chunks.bit_depth,  # RGB PNGs are 8 or 16 bits by the standard
        exposure=parse_exif(chunks.exif),
    )


def read_exif(data: bytes) -> bytes | None:
    """The ``eXIf`` chunk's payload, or None."""
    return _walk(data, None).exif


def read_pixels(data: bytes, info: ImageInfo, name: str | None) -> np.ndarray:
    """The H x W x 3 samples exactly as stored (uint8 or uint16)."""
    pixels = np.asarray(imagecodecs.png_decode(data))
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        # libpng turns an RGB image's tRNS colour key into an alpha channel; the colour
        # samples are untouched, and a colour key is not an alpha channel worth refusing.
        pixels = pixels[:, :, :3]
    expected = np.uint16 if info.bit_depth == 16 else np.uint8
    if pixels.shape != (info.height, info.width, 3) or pixels.dtype != expected:
        raise UnsupportedImage(
            f"{label(name)}corrupt PNG: decoded {pixels.shape} {pixels.dtype} pixels "
            f"where the header declares {info.height}x{info.width}x3 {info.bit_depth}-bit"
        )
    return np.ascontiguousarray(pixels)
