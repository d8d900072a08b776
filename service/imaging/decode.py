"""Reading uploads: probe the header, then decode the pixels, through one path per format.

Every entry point goes through :func:`_guarded`, so a damaged upload surfaces as
:class:`UnsupportedImage` (415) whatever the underlying library raised, and never as a
500 with some decoder's internal exception.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from service.errors import ImageTooLarge, ServiceError, UnsupportedImage
from service.imaging import heif, jpeg, png, tiff
from service.imaging.exif import ExifExposure, parse_exif
from service.imaging.formats import DecodedImage, ImageFormat, ImageInfo, label, sniff_format


class _Reader(NamedTuple):
    """The three things every format module provides."""

    header: Callable[[bytes, str | None], ImageInfo]
    pixels: Callable[[bytes, ImageInfo, str | None], np.ndarray]
    exif: Callable[[bytes], bytes | None]
    complete: Callable[[bytes, ImageInfo, str | None], None]


_READERS: dict[ImageFormat, _Reader] = {
    ImageFormat.PNG: _Reader(png.read_header, png.read_pixels, png.read_exif, png.check_complete),
    ImageFormat.JPEG: _Reader(
        jpeg.read_header, jpeg.read_pixels, jpeg.read_exif, jpeg.check_complete
    ),
    ImageFormat.TIFF: _Reader(
        tiff.read_header, tiff.read_pixels, tiff.read_exif, tiff.check_complete
    ),
    ImageFormat.HEIF: _Reader(
        heif.read_header, heif.read_pixels, heif.read_exif, heif.check_complete
    ),
}

_T = TypeVar("_T")


def _guarded(fmt: ImageFormat, name: str | None, step: Callable[[], _T]) -> _T:
    """Run ``step``, turning any decoder failure into :class:`UnsupportedImage`."""
    try:
        return step()
    except (ServiceError, MemoryError):
        raise
    except Exception as exc:  # decoders raise anything on hostile bytes; all mean "corrupt"
        detail = str(exc) or type(exc).__name__
        if len(detail) > 200:
            detail = detail[:200] + "..."
        raise UnsupportedImage(
            f"{label(name)}truncated or corrupt {fmt.name} file ({detail})"
        ) from exc


def check_pixel_limit(info: ImageInfo, max_pixels: int | None, name: str | None = None) -> None:
    """Raise :class:`ImageTooLarge` when ``info`` declares more than ``max_pixels`` pixels.

    Both the image's size and any larger coded size it is cropped from count: the decoder
    allocates the coded image before cropping it.
    """
    if max_pixels is None:
        return
    if info.pixels > max_pixels:
        raise ImageTooLarge(
            f"{label(name)}image is {info.width}x{info.height} ({info.pixels} pixels), "
            f"over the limit of {max_pixels} pixels"
        )
    if info.coded_pixels > max_pixels:
        raise ImageTooLarge(
            f"{label(name)}image is {info.width}x{info.height}, cropped from a coded image of "
            f"{info.coded_pixels} pixels, over the limit of {max_pixels} pixels"
        )


def probe(data: bytes, name: str | None = None, max_pixels: int | None = None) -> ImageInfo:
    """Read the header only: format, size, bit depth, EXIF exposure.

    No pixel is decoded or allocated, so the caller can refuse decompression bombs (a few
    kilobytes declaring gigapixels) by ``width * height`` first; ``max_pixels`` does that
    here. Raises :class:`UnsupportedImage` for anything but a single 8/16-bit RGB image.
    """
    fmt = sniff_format(data, name)
    info = _guarded(fmt, name, lambda: _READERS[fmt].header(data, name))
    check_pixel_limit(info, max_pixels, name)
    return info


def verify(data: bytes, name: str | None = None, max_pixels: int | None = None) -> ImageInfo:
    """:func:`probe`, then check that the pixel data is all there, still without decoding.

    What the API runs before it queues a job, so that a 202 means the worker's decode
    will find every pixel: a cut-off file is :class:`IncompleteImage` (422) here instead
    of a failed job later. PNG: IEND present and the IDAT stream inflates (output thrown
    away) to exactly the declared rows; JPEG: an EOI marker after the scan; TIFF: every
    strip or tile inside the file. CPU-bound on big PNGs (an inflate of the declared
    size): callers on an event loop run it in a thread.
    """
    info = probe(data, name, max_pixels)
    _guarded(info.format, name, lambda: _READERS[info.format].complete(data, info, name))
    return info


def decode(data: bytes, name: str | None = None, max_pixels: int | None = None) -> DecodedImage:
    """Decode an upload to its H x W x 3 samples exactly as stored (uint8 or uint16).

    The header is probed and ``max_pixels`` checked before any pixel is decoded; without
    ``max_pixels`` nothing bounds the allocation, so untrusted uploads must pass one.
    ``name`` (the upload's file name) only labels error messages; the format always comes
    from the bytes. No colour management, orientation or gamma is applied: the model
    wants the camera's stored values.
    """
    info = probe(data, name, max_pixels)
    pixels = _guarded(info.format, name, lambda: _READERS[info.format].pixels(data, info, name))
    return DecodedImage(pixels=pixels, info=info)


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> DecodedImage:
    """:func:`decode` a file, its name labelling error messages."""
    path = Path(path)
    return decode(path.read_bytes(), name=path.name, max_pixels=max_pixels)


def exif_exposure(data: bytes, name: str | None = None) -> ExifExposure | None:
    """The EXIF exposure settings of a PNG, JPEG, TIFF or HEIC file; None if it records none.

    Unlike :func:`probe` this does not judge the image (a grayscale JPEG still yields its
    EXIF); a file that is no image of ours at all raises :class:`UnsupportedImage`.
    """
    fmt = sniff_format(data, name)
    return parse_exif(_guarded(fmt, name, lambda: _READERS[fmt].exif(data)))
