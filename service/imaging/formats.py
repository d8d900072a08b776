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


# (prefix, format): every prefix that opens a file of that format.
_MAGIC: tuple[tuple[bytes, ImageFormat], ...] = (
    (b"\x89PNG\r\n\x1a\n", ImageFormat.PNG),
    (b"\xff\xd8\xff", ImageFormat.JPEG),
    (b"II*\x00", ImageFormat.TIFF),
    (b"MM\x00*", ImageFormat.TIFF),
    (b"II+\x00", ImageFormat.TIFF),  # BigTIFF
    (b"MM\x00+", ImageFormat.TIFF),
)


def label(name: str | None) -> str:
    """The ``"name: "`` prefix of an error message, empty when the upload has no name."""
    return f"{name}: " if name else ""


def sniff_format(data: bytes, name: str | None = None) -> ImageFormat:
    """The format whose magic number opens ``data``; :class:`UnsupportedImage` if none."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if not data:
        raise UnsupportedImage(f"{label(name)}empty file; expected a PNG, JPEG or TIFF image")
    raise UnsupportedImage(
        f"{label(name)}not a PNG, JPEG or TIFF image (unrecognised file signature)"
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
    """8 or 16 bits per sample."""
    exposure: ExifExposure | None = None
    """The EXIF exposure settings, or None when the file carries no EXIF block."""

    @property
    def pixels(self) -> int:
        """width x height, the number the pixel limits are checked against."""
        return self.width * self.height


@dataclass(frozen=True)
class DecodedImage:
    """An exposure's pixels exactly as stored, with its header facts."""

    pixels: np.ndarray
    """H x W x 3, uint8 for 8-bit files and uint16 for 16-bit ones, never rescaled."""
    info: ImageInfo
