"""JPEG: header facts and pixels through Pillow's JPEG plugin, EXIF from the APP1 segment.

The plugin class is used directly rather than ``PIL.Image.open``: ``open`` applies Pillow's
own decompression-bomb limits (a global, ``Image.MAX_IMAGE_PIXELS``) and may warn; this
service checks pixel counts against its own settings instead, and changing Pillow's global
would change it for every other user of Pillow in the process. The plugin class also
reads only the header until pixels are asked for.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import Final

import numpy as np
from PIL import JpegImagePlugin

from service.errors import IncompleteImage, UnsupportedImage
from service.imaging.exif import parse_exif
from service.imaging.formats import ImageFormat, ImageInfo, label

_MODES: dict[str, str] = {
    "L": "image has 1 channel (grayscale); expected RGB",
    "CMYK": "image has 4 channels (CMYK); expected RGB",
}

_SOS, _EOI, _APP1 = 0xDA, 0xD9, 0xE1
_EXIF_HEADER = b"Exif\x00\x00"
# Markers that stand alone, without a length: TEM, the restart markers RST0..RST7 and SOI
# (skipped where it repeats, as Pillow skips it, so both walks see the same segments).
_STANDALONE = {0x01, *range(0xD0, 0xD9)}
#: Most markers, segments and fill bytes a header may hold before its first scan. Real
#: files have a few dozen (APPn, DQT, DHT, SOF, DRI; ICC profiles split over a few APP2);
#: the bound stops a file of a million empty comments from costing seconds of parsing,
#: here and in Pillow's walk of the same markers.
MAX_HEADER_MARKERS: Final = 1024
_EOI_MARKER = b"\xff\xd9"


def _segments(data: bytes, name: str | None = None) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each length-carrying segment up to and including the first
    scan's header (SOS); :class:`UnsupportedImage` past :data:`MAX_HEADER_MARKERS`."""
    pos = 2  # after SOI
    steps = 0
    while pos + 4 <= len(data):
        steps += 1
        if steps > MAX_HEADER_MARKERS:
            raise UnsupportedImage(
                f"{label(name)}JPEG header has more than {MAX_HEADER_MARKERS} markers before"
                " the image data; refusing a file crafted to be slow to parse"
            )
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == _EOI:
            return
        (length,) = struct.unpack_from(">H", data, pos + 2)
        yield marker, pos, pos + 2 + length
        if marker == _SOS:
            return
        pos += 2 + length


def _is_exif(data: bytes, marker: int, start: int) -> bool:
    return marker == _APP1 and data[start + 4 : start + 10] == _EXIF_HEADER


def read_exif(data: bytes) -> bytes | None:
    """The payload of the first ``Exif`` APP1 segment before the image data, or None."""
    for marker, start, end in _segments(data):
        if _is_exif(data, marker, start):
            return data[start + 4 : end]
    return None


def _without_exif(data: bytes, name: str | None) -> bytes:
    """``data`` minus its EXIF segments, which Pillow would otherwise parse and warn about.

    Pillow reads EXIF while opening a JPEG (to find a DPI) and emits ``UserWarning`` on the
    damaged EXIF blocks real cameras and editors write. EXIF is parsed by :mod:`exif` here,
    so Pillow never needs it; removing it keeps warnings out without touching the
    process-wide warning filters from a request thread.
    """
    kept: list[bytes] = []
    copied = 0
    for marker, start, end in _segments(data, name):
        if _is_exif(data, marker, start):
            kept.append(data[copied:start])
            copied = end
    if not kept:
        return data
    kept.append(data[copied:])
    return b"".join(kept)


def _open(data: bytes, name: str | None) -> JpegImagePlugin.JpegImageFile:
    stripped = _without_exif(data, name)  # first: it bounds the markers Pillow will walk
    try:
        return JpegImagePlugin.JpegImageFile(io.BytesIO(stripped))
    except (OSError, SyntaxError, ValueError, struct.error, IndexError, TypeError) as exc:
        raise UnsupportedImage(f"{label(name)}truncated or corrupt JPEG header ({exc})") from exc


def read_header(data: bytes, name: str | None) -> ImageInfo:
    """The JPEG's :class:`ImageInfo`; :class:`UnsupportedImage` unless it is 8-bit RGB."""
    with _open(data, name) as image:
        if image.mode in _MODES:
            raise UnsupportedImage(f"{label(name)}{_MODES[image.mode]}")
        if image.mode != "RGB":
            raise UnsupportedImage(f"{label(name)}JPEG in mode {image.mode}; expected RGB")
        bits = getattr(image, "bits", 8)
        if bits != 8:
            raise UnsupportedImage(f"{label(name)}{bits}-bit JPEG; expected 8-bit")
        width, height = image.size
    return ImageInfo(
        format=ImageFormat.JPEG,
        width=width,
        height=height,
        channels=3,
        bit_depth=8,
        exposure=parse_exif(read_exif(data)),
    )


def read_pixels(data: bytes, info: ImageInfo, name: str | None) -> np.ndarray:
    """The H x W x 3 uint8 samples as libjpeg decodes them (Pillow refuses cut-off files)."""
    with _open(data, name) as image:
        image.load()
        pixels = np.asarray(image, dtype=np.uint8)
    return np.ascontiguousarray(pixels)


def check_complete(data: bytes, info: ImageInfo, name: str | None) -> None:
    """:class:`IncompleteImage` unless an end-of-image marker follows the first scan.

    Inside entropy-coded data every 0xFF byte is followed by 0x00 or a restart marker, so
    the first ``FF D9`` after the scan header is the EOI (an EXIF thumbnail's own EOI sits
    before it, in APP1). A cut-off upload lacks it; libjpeg would stop mid-image and
    Pillow refuse the file in the worker, long after the 202.
    """
    scan_end = None
    for marker, _start, end in _segments(data, name):
        if marker == _SOS:
            scan_end = end
    if scan_end is None or scan_end > len(data):
        raise IncompleteImage(f"{label(name)}truncated JPEG: the image data is missing")
    if data.find(_EOI_MARKER, scan_end) < 0:
        raise IncompleteImage(
            f"{label(name)}truncated JPEG: no end-of-image marker after the image data"
        )
