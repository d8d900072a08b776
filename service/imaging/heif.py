"""HEIF/HEIC (what iPhones write): header facts from the container, pixels from libheif.

The pixels come from libheif through ``pillow_heif``, used directly rather than as a Pillow
plugin: registering the plugin changes Pillow for the whole process, and Pillow's own path
reduces 10-bit images to 8 bits. ``pillow_heif.open_heif`` parses the container only and
decodes nothing until the pixels are asked for, so the header is read without allocating
the frame.

Before libheif sees the bytes, the top-level boxes are walked by their lengths: a file cut
off anywhere (an interrupted upload usually loses the end of ``mdat``, which libheif would
only notice while decoding, on the worker) is refused at admission. The same walk reads
every ``ispe`` (image spatial extent) property, the sizes of the coded images the file
holds: a clean-aperture box may crop a huge coded frame to a few pixels, and the decoder
allocates the coded frame, so the largest of them counts against the pixel limit too.

HEIF's own transforms (``irot`` rotation, ``imir`` mirror, ``clap`` crop) are part of the
image the container defines and libheif applies them; the reported size is the size after
them. EXIF Orientation is not applied, as for every other format.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pillow_heif

from service.errors import IncompleteImage, UnsupportedImage
from service.imaging.exif import parse_exif
from service.imaging.formats import ImageFormat, ImageInfo, iso_brands, label

#: Brands that promise still images (items), HEVC- or AV1-coded.
_STILL_BRANDS = frozenset({b"mif1", b"heic", b"heix", b"heim", b"heis", b"avif"})
#: Brands of HEVC coding: HEIC stills and HEVC sequences.
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AV1_BRANDS = frozenset({b"avif", b"avis"})

#: Bits per sample accepted; 10 and 12 are widened to 16 on decode.
BIT_DEPTHS = (8, 10, 12)

#: pillow_heif mode (before any ``;bits`` suffix) -> (channels, what it is), for refusals.
_OTHER_MODES: dict[str, tuple[int, str]] = {
    "RGBA": (4, "RGBA"),
    "BGRA": (4, "RGBA"),
    "LA": (2, "grayscale+alpha"),
    "L": (1, "grayscale"),
    "I": (1, "grayscale"),
}

_FULL_BOX_HEADER = 4  # version (1 byte) and flags (3 bytes) of a FullBox
#: Boxes one container may hold before the file counts as hostile: real files have a
#: handful at the top level and a few dozen properties (an iPhone grid shares them), while
#: 64 MiB of empty 8-byte boxes would keep the API's walk busy for seconds.
MAX_BOXES = 10_000


def _boxes(data: bytes, start: int, end: int, name: str | None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in ``data[start:end]``.

    Raises :class:`UnsupportedImage` for a box that runs past ``end`` or a box header cut
    short, which is what a truncated upload looks like.
    """
    pos = start
    for _ in range(MAX_BOXES):
        if pos >= end:
            return
        if pos + 8 > end:
            raise UnsupportedImage(f"{label(name)}truncated HEIF: a box header is cut short")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:  # a 64-bit size follows the type
            if pos + 16 > end:
                raise UnsupportedImage(f"{label(name)}truncated HEIF: a box header is cut short")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:  # the box extends to the end of its container
            size = end - pos
        if size < header:
            raise UnsupportedImage(
                f"{label(name)}corrupt HEIF: box {kind.decode('latin-1')!r} has size {size}"
            )
        if pos + size > end:
            where = "the file" if end == len(data) else "its parent box"
            raise UnsupportedImage(
                f"{label(name)}truncated HEIF: box {kind.decode('latin-1')!r} runs "
                f"{pos + size - end} bytes past the end of {where}"
            )
        yield kind, pos + header, pos + size
        pos += size
    if pos < end:
        raise UnsupportedImage(
            f"{label(name)}corrupt HEIF: more than {MAX_BOXES} boxes in one container"
        )


def _children(boxes: Iterator[tuple[bytes, int, int]], kind: bytes) -> Iterator[tuple[int, int]]:
    """(payload start, end) of each box of type ``kind`` among ``boxes``."""
    for found, start, end in boxes:
        if found == kind:
            yield start, end


def _largest_extent(data: bytes, name: str | None) -> int:
    """Check the whole box structure is present and return the largest ``ispe`` area.

    Every top-level box must end inside the file; the ``ispe`` properties (each image's
    coded width and height) are read from ``meta > iprp > ipco``.
    """
    largest = 0
    top = list(_boxes(data, 0, len(data), name))
    for meta_start, meta_end in _children(iter(top), b"meta"):
        items = _boxes(data, meta_start + _FULL_BOX_HEADER, meta_end, name)
        for iprp_start, iprp_end in _children(items, b"iprp"):
            properties = _boxes(data, iprp_start, iprp_end, name)
            for ipco_start, ipco_end in _children(properties, b"ipco"):
                ipco = _boxes(data, ipco_start, ipco_end, name)
                for ispe_start, ispe_end in _children(ipco, b"ispe"):
                    if ispe_end - ispe_start < _FULL_BOX_HEADER + 8:
                        raise UnsupportedImage(f"{label(name)}corrupt HEIF: short ispe property")
                    width, height = struct.unpack_from(">II", data, ispe_start + _FULL_BOX_HEADER)
                    largest = max(largest, width * height)
    return largest


def _check_brands(data: bytes, name: str | None) -> None:
    """Refuse image sequences and AV1-coded files by their ``ftyp`` brands."""
    brands = iso_brands(data)
    if not brands & _STILL_BRANDS:
        raise UnsupportedImage(
            f"{label(name)}HEIF image sequence (no still-image brand); expected a still image"
        )
    if brands & _AV1_BRANDS and not brands & _HEVC_BRANDS:
        raise UnsupportedImage(
            f"{label(name)}AVIF (AV1-coded) image; only HEVC-coded HEIF (HEIC) is accepted"
        )


def _primary(data: bytes, name: str | None) -> pillow_heif.HeifImage:
    """The primary image of the file, its container parsed and nothing decoded yet."""
    heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=False, hdr_to_16bit=False)
    if len(heif) == 0:
        raise UnsupportedImage(f"{label(name)}HEIF file holds no image")
    return heif[heif.primary_index]


def read_header(data: bytes, name: str | None) -> ImageInfo:
    """The primary image's :class:`ImageInfo`; :class:`UnsupportedImage` unless it is a
    complete, still, 8/10/12-bit RGB HEIC image."""
    where = label(name)
    _check_brands(data, name)
    coded = _largest_extent(data, name)
    image = _primary(data, name)
    mode = image.mode.split(";")[0]
    if mode in _OTHER_MODES:
        channels, what = _OTHER_MODES[mode]
        plural = "channel" if channels == 1 else "channels"
        raise UnsupportedImage(f"{where}image has {channels} {plural} ({what}); expected RGB")
    if mode != "RGB":
        raise UnsupportedImage(f"{where}HEIF image in mode {image.mode}; expected RGB")
    bits = int(image.info.get("bit_depth", 8))
    if bits not in BIT_DEPTHS:
        raise UnsupportedImage(f"{where}{bits}-bit HEIF image; expected 8, 10 or 12 bits")
    width, height = image.size
    return ImageInfo(
        format=ImageFormat.HEIF,
        width=width,
        height=height,
        channels=3,
        bit_depth=bits,
        exposure=parse_exif(image.info.get("exif")),
        coded_pixels=coded,
    )


def check_complete(data: bytes, info: ImageInfo, name: str | None) -> None:
    """:class:`IncompleteImage` unless the coded image data (an ``mdat`` box) is there.

    :func:`read_header` already walked every top-level box and refused one that runs past
    the end of the file; what it cannot tell is a file cut exactly at a box boundary, after
    the metadata and before the image data, which libheif would only notice while decoding
    in the worker.
    """
    if not any(kind == b"mdat" for kind, _, _ in _boxes(data, 0, len(data), name)):
        raise IncompleteImage(f"{label(name)}truncated HEIF: the image data (mdat) is missing")


def read_exif(data: bytes) -> bytes | None:
    """The primary image's EXIF block (TIFF-structured, as ``parse_exif`` reads), or None."""
    exif = _primary(data, None).info.get("exif")
    return bytes(exif) if exif else None


def widen(pixels: np.ndarray, bits: int) -> np.ndarray:
    """``bits``-bit samples (in uint16) as 16-bit values, by bit replication.

    ``v << (16 - bits) | v >> (2 * bits - 16)`` repeats the sample's top bits below it: 0
    stays 0 and full scale (1023 for 10 bits) becomes 65535, the exact analogue of the
    ``x 257`` that widens 8-bit samples (see :mod:`service.imaging.normalize`), and within
    one level of ``round(v * 65535 / (2**bits - 1))``. A plain shift (libheif's own 16-bit
    output) would leave a saturated pixel at 65472, below where saturated 8- and 16-bit
    pixels land.
    """
    if not 8 < bits < 16:
        raise ValueError(f"expected 9 to 15 bits per sample, got {bits}")
    top = (1 << bits) - 1
    samples = np.minimum(pixels.astype(np.uint16, copy=False), np.uint16(top))
    return (samples << np.uint16(16 - bits)) | (samples >> np.uint16(2 * bits - 16))


def read_pixels(data: bytes, info: ImageInfo, name: str | None) -> np.ndarray:
    """The H x W x 3 samples: uint8 for 8-bit files, uint16 (widened) for 10/12-bit ones."""
    pixels = np.asarray(_primary(data, name))
    expected = np.uint8 if info.bit_depth == 8 else np.uint16
    if pixels.shape != (info.height, info.width, 3) or pixels.dtype != expected:
        raise UnsupportedImage(
            f"{label(name)}corrupt HEIF: decoded {pixels.shape} {pixels.dtype} pixels "
            f"where the header declares {info.height}x{info.width}x3 {info.bit_depth}-bit"
        )
    if info.bit_depth > 8:
        pixels = widen(pixels, info.bit_depth)
    return np.ascontiguousarray(pixels)
