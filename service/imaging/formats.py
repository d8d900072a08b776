"""What an upload is: its container format, its header facts, its decoded pixels.

The format is sniffed from the bytes' magic numbers and never from a file name or a
``Content-Type``: clients name files carelessly, and the decoder that runs must be the one
that matches the bytes, or a crafted upload reaches a parser it was not meant for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from service.errors import UnsupportedImage
from service.imaging.exif import ExifExposure


class ImageFormat(str, Enum):
    """The container formats accepted as exposures."""

    PNG = "png"
    """Portable Network Graphics, 8 or 16 bits per sample."""
    JPEG = "jpeg"
    """JPEG (baseline or progressive), 8 bits per sample."""
    TIFF = "tiff"
    """TIFF (classic or BigTIFF), 8 or 16 bits per sample, the official data's format."""
    HEIF = "heif"
    """HEIF with HEVC-coded images (HEIC, what iPhones write), 8, 10 or 12 bits per sample."""


# (prefix, format): every prefix that opens a file of that format.
_MAGIC: tuple[tuple[bytes, ImageFormat], ...] = (
    (b"\x89PNG\r\n\x1a\n", ImageFormat.PNG),
    (b"\xff\xd8\xff", ImageFormat.JPEG),
    (b"II*\x00", ImageFormat.TIFF),
    (b"MM\x00*", ImageFormat.TIFF),
    (b"II+\x00", ImageFormat.TIFF),  # BigTIFF
    (b"MM\x00+", ImageFormat.TIFF),
)

# ISO base media files (HEIF, AVIF, MP4, QuickTime) open with an ``ftyp`` box naming brands;
# these brands mark a HEIF file (still images or sequences, HEVC- or AV1-coded). Which of
# them is decodable is service.imaging.heif's to judge, with a message naming the reason.
_HEIF_BRANDS = frozenset(
    {b"mif1", b"msf1", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
    | {b"avif", b"avis"}
)
_MAX_BRANDS = 64  # compatible brands read; real files list a handful


def iso_brands(data: bytes) -> frozenset[bytes]:
    """The major and compatible brands of the ``ftyp`` box opening ``data``; empty if none."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return frozenset()
    # A huge declared ftyp box must not make sniffing slow: read at most _MAX_BRANDS.
    size = min(int.from_bytes(data[:4], "big"), len(data), 16 + 4 * _MAX_BRANDS)
    compatible = (data[at : at + 4] for at in range(16, size - 3, 4))
    return frozenset({data[8:12], *compatible})


def label(name: str | None) -> str:
    """The ``"name: "`` prefix of an error message, empty when the upload has no name."""
    return f"{name}: " if name else ""


def check_decoded(pixels: np.ndarray, info: ImageInfo, name: str | None) -> None:
    """:class:`UnsupportedImage` unless a decoder's output is what the header declared:
    ``H x W x 3`` in uint8 for 8-bit files, uint16 for deeper ones (the decoder, not the
    header, is what a corrupt file fools)."""
    expected = np.uint8 if info.bit_depth == 8 else np.uint16
    if pixels.shape != (info.height, info.width, 3) or pixels.dtype != expected:
        raise UnsupportedImage(
            f"{label(name)}corrupt {info.format.name}: decoded {pixels.shape} {pixels.dtype}"
            f" pixels where the header declares {info.height}x{info.width}x3"
            f" {info.bit_depth}-bit"
        )


def sniff_format(data: bytes, name: str | None = None) -> ImageFormat:
    """The format whose magic number opens ``data``; :class:`UnsupportedImage` if none."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if iso_brands(data) & _HEIF_BRANDS:
        return ImageFormat.HEIF
    if not data:
        raise UnsupportedImage(f"{label(name)}empty file; expected a PNG, JPEG, TIFF or HEIC image")
    raise UnsupportedImage(
        f"{label(name)}not a PNG, JPEG, TIFF or HEIC image (unrecognised file signature)"
    )


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says, read without decoding a single pixel.

    The API answers bombs (a few kilobytes declaring gigapixels), wrong formats and
    mismatched sizes from this alone, before anything is queued or allocated.
    """

    format: ImageFormat
    width: int
    height: int
    channels: int
    """Always 3 for an image that probed successfully: only RGB is accepted."""
    bit_depth: int
    """8 or 16 bits per sample as stored; HEIC also 10 or 12 (decoded to 16-bit samples)."""
    exposure: ExifExposure | None = None
    """The EXIF exposure settings, or None when the file carries no EXIF block."""
    coded_pixels: int = 0
    """What decoding costs before cropping, when the container stores images coded larger
    than they show (HEIF: the largest ``ispe`` or HEVC SPS size of a frame, tile or
    thumbnail, or all of a grid's tiles together; see :mod:`service.imaging.heif`): the
    decoder allocates that much, so a few-pixel crop of a gigapixel frame is a bomb too."""

    @property
    def pixels(self) -> int:
        """width x height, the number the pixel limits are checked against."""
        return self.width * self.height


@dataclass(frozen=True)
class DecodedImage:
    """An exposure's pixels exactly as stored, with its header facts."""

    pixels: np.ndarray
    """H x W x 3, uint8 for 8-bit files and uint16 for 16-bit ones, never rescaled.

    10- and 12-bit HEIC samples, which no numpy type holds, are the one exception: they
    are widened to uint16 by bit replication (see :func:`service.imaging.heif.widen`)."""
    info: ImageInfo
