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
from typing import Final

import imagecodecs
import numpy as np

from service.errors import IncompleteImage, UnsupportedImage
from service.imaging.exif import parse_exif
from service.imaging.formats import ImageFormat, ImageInfo, check_decoded, label

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Most chunks a PNG may hold. Encoders write IDAT in pieces of 8 KiB (libpng) to 64 KiB,
#: so even a 64 MiB upload has under 10 000; the bound stops a file of millions of empty
#: chunks from costing seconds of walking.
MAX_CHUNKS: Final = 100_000
#: Deflate input fed per step and output drawn per step while checking the pixel stream:
#: small input pieces keep copies of the unconsumed tail cheap, the output cap bounds
#: memory whatever the compression ratio.
_INFLATE_INPUT: Final = 16 * 1024
_INFLATE_OUTPUT: Final = 1024 * 1024
# Adam7 passes: (first column, first row, column step, row step).
_ADAM7: Final = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)

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
    interlaced: bool
    idat: tuple[tuple[int, int], ...]
    """(start, end) of each IDAT chunk's payload, in file order."""
    ended: bool
    """Whether the walk reached IEND (a cut-off file does not)."""


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
    ended = False
    idat: list[tuple[int, int]] = []
    pos = 33
    chunks = 1
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise UnsupportedImage(
                f"{label(name)}PNG has more than {MAX_CHUNKS} chunks; refusing a file"
                " crafted to be slow to parse"
            )
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        if kind == b"IEND":
            ended = True
            break
        if body + length > len(data):
            break  # a cut-off tail: check_complete reports it, with the right words
        if kind == b"IDAT":
            idat.append((body, body + length))
        elif kind == b"eXIf":
            exif = data[body : body + length]
        elif kind == b"acTL":
            animated = True
        pos = body + length + 4
    return _Chunks(
        width, height, bit_depth, colour_type, exif, animated, interlace == 1, tuple(idat), ended
    )


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
    check_decoded(pixels, info, name)
    return np.ascontiguousarray(pixels)


def _raw_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """Bytes the inflated IDAT stream must hold: each row's filter byte plus its samples."""
    if not interlaced:
        return height * (1 + (width * bits_per_pixel + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        cols = (width - x0 + dx - 1) // dx if width > x0 else 0
        rows = (height - y0 + dy - 1) // dy if height > y0 else 0
        if cols and rows:
            total += rows * (1 + (cols * bits_per_pixel + 7) // 8)
    return total


def check_complete(data: bytes, info: ImageInfo, name: str | None) -> None:
    """:class:`IncompleteImage` unless IEND is present and the IDAT stream inflates, to its
    end, to exactly the rows IHDR declares; :class:`UnsupportedImage` when it is corrupt.

    The stream is inflated piece by piece and the output thrown away, so the check costs
    time proportional to the declared image (bounded by the pixel limit checked before
    it) and a few MiB of memory, and stops as soon as the stream holds more than declared.
    """
    chunks = _walk(data, name)
    where = label(name)
    expected = _raw_size(chunks.width, chunks.height, 3 * info.bit_depth, chunks.interlaced)
    inflater = zlib.decompressobj()
    produced = 0
    view = memoryview(data)
    try:
        for start, end in chunks.idat:
            for piece in range(start, end, _INFLATE_INPUT):
                pending: bytes | memoryview = view[piece : min(end, piece + _INFLATE_INPUT)]
                while pending:
                    produced += len(inflater.decompress(pending, _INFLATE_OUTPUT))
                    if produced > expected:
                        raise UnsupportedImage(
                            f"{where}corrupt PNG: more pixel data than the header's"
                            f" {chunks.width}x{chunks.height} declares"
                        )
                    pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise UnsupportedImage(f"{where}corrupt PNG: damaged pixel data ({exc})") from exc
    if not chunks.ended:
        raise IncompleteImage(f"{where}truncated PNG: no IEND chunk (the file is cut short)")
    if not inflater.eof or produced < expected:
        raise IncompleteImage(
            f"{where}truncated PNG: the pixel data holds {produced} of the {expected} bytes"
            f" that {chunks.width}x{chunks.height} pixels need"
        )
