"""Exposure settings from an EXIF block: exposure time, f-number, ISO.

Without ``exposure_values`` or ``exposure_times`` in a request, EXIF decides the bracket's
exposure ratios, so these three numbers matter. The block is parsed here with a small,
bounds-checked TIFF-structure reader instead of Pillow's: Pillow warns (and tests run with
warnings as errors) on the slightly broken EXIF that cameras and editors write, and its
PNG path decodes every pixel just to find an ``eXIf`` chunk. A damaged block never fails
an otherwise good image: what cannot be read is reported as absent.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class ExifExposure:
    """The exposure settings a camera recorded; each is None when the file omits it."""

    exposure_time: float | None = None
    """ExposureTime in seconds (1/100 s is 0.01)."""
    f_number: float | None = None
    """FNumber, the aperture's f-stop (f/2.8 is 2.8)."""
    iso: float | None = None
    """ISOSpeedRatings, called PhotographicSensitivity since EXIF 2.3."""


_EXIF_HEADER = b"Exif\x00\x00"

_EXIF_IFD_POINTER = 0x8769
_EXPOSURE_TIME = 0x829A
_F_NUMBER = 0x829D
_PHOTOGRAPHIC_SENSITIVITY = 0x8827  # ISOSpeedRatings before EXIF 2.3
_ISO_SPEED = 0x8833  # the exact value when PhotographicSensitivity saturates at 65535

# TIFF field type -> (struct code, size in bytes); rationals are two codes.
_TYPES: dict[int, tuple[str, int]] = {
    1: ("B", 1),  # BYTE
    3: ("H", 2),  # SHORT
    4: ("I", 4),  # LONG
    5: ("II", 8),  # RATIONAL
    6: ("b", 1),  # SBYTE
    8: ("h", 2),  # SSHORT
    9: ("i", 4),  # SLONG
    10: ("ii", 8),  # SRATIONAL
    11: ("f", 4),  # FLOAT
    12: ("d", 8),  # DOUBLE
    13: ("I", 4),  # IFD
    16: ("Q", 8),  # LONG8 (BigTIFF)
    17: ("q", 8),  # SLONG8 (BigTIFF)
    18: ("Q", 8),  # IFD8 (BigTIFF)
}


class _Layout:
    """Byte order and offset widths of a classic TIFF or a BigTIFF structure."""

    def __init__(self, data: bytes) -> None:
        if data[:2] == b"II":
            self.order = "<"
        elif data[:2] == b"MM":
            self.order = ">"
        else:
            raise ValueError("no TIFF byte-order mark")
        (magic,) = struct.unpack_from(self.order + "H", data, 2)
        if magic == 42:
            self.big = False
            (self.first_ifd,) = struct.unpack_from(self.order + "I", data, 4)
        elif magic == 43:
            self.big = True
            (self.first_ifd,) = struct.unpack_from(self.order + "Q", data, 8)
        else:
            raise ValueError("not a TIFF structure")
        self.count_code = "Q" if self.big else "H"
        self.count_size = 8 if self.big else 2
        self.entry_size = 20 if self.big else 12
        self.inline_size = 8 if self.big else 4


def _read_ifd(data: bytes, layout: _Layout, offset: int, wanted: set[int]) -> dict[int, float]:
    """The first value of each ``wanted`` tag in the IFD at ``offset``; unreadable ones left out."""
    order = layout.order
    found: dict[int, float] = {}
    if offset <= 0 or offset + layout.count_size > len(data):
        return found
    (count,) = struct.unpack_from(order + layout.count_code, data, offset)
    start = offset + layout.count_size
    count = min(count, (len(data) - start) // layout.entry_size)
    for i in range(count):
        entry = start + i * layout.entry_size
        tag, ftype = struct.unpack_from(order + "HH", data, entry)
        if tag not in wanted or ftype not in _TYPES:
            continue
        code, size = _TYPES[ftype]
        if layout.big:
            (n,) = struct.unpack_from(order + "Q", data, entry + 4)
            value_at = entry + 12
        else:
            (n,) = struct.unpack_from(order + "I", data, entry + 4)
            value_at = entry + 8
        if n < 1:
            continue
        if size * n > layout.inline_size:  # the value lives elsewhere; this is its offset
            (value_at,) = struct.unpack_from(order + ("Q" if layout.big else "I"), data, value_at)
        if value_at + size > len(data):
            continue
        parts = struct.unpack_from(order + code, data, value_at)
        if len(parts) == 2:  # a rational: numerator / denominator, 0 denominators unusable
            if parts[1] == 0:
                continue
            found[tag] = parts[0] / parts[1]
        else:
            found[tag] = float(parts[0])
    return found


def _positive(value: float | None) -> float | None:
    """``value`` when it is a usable setting; zero, negative or non-finite ones mean 'unknown'."""
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return value


def parse_exif(block: bytes | None) -> ExifExposure | None:
    """The exposure settings in an EXIF block, or None when it holds none of them.

    ``block`` is TIFF-structured EXIF data: a JPEG APP1 payload (with or without its
    ``Exif\\0\\0`` header), a PNG ``eXIf`` chunk, or a whole TIFF file. The tags are looked
    up in the EXIF sub-IFD first and in IFD0 second, where some TIFF writers put them.
    """
    if not block:
        return None
    if block.startswith(_EXIF_HEADER):
        block = block[len(_EXIF_HEADER) :]
    wanted = {_EXPOSURE_TIME, _F_NUMBER, _PHOTOGRAPHIC_SENSITIVITY, _ISO_SPEED}
    try:
        layout = _Layout(block)
        ifd0 = _read_ifd(block, layout, layout.first_ifd, wanted | {_EXIF_IFD_POINTER})
        values = dict(ifd0)
        if _EXIF_IFD_POINTER in ifd0:
            values.update(_read_ifd(block, layout, int(ifd0[_EXIF_IFD_POINTER]), wanted))
    except (ValueError, struct.error):
        return None

    iso = values.get(_PHOTOGRAPHIC_SENSITIVITY)
    if (iso is None or iso >= 65535) and _ISO_SPEED in values:
        iso = values[_ISO_SPEED]
    exposure = ExifExposure(
        exposure_time=_positive(values.get(_EXPOSURE_TIME)),
        f_number=_positive(values.get(_F_NUMBER)),
        iso=_positive(iso),
    )
    if exposure == ExifExposure():
        return None
    return exposure
