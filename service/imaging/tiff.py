"""TIFF: header facts and pixels through ``tifffile``, the official data's own format.

tifffile reads 16-bit RGB exactly (Pillow would reduce it to 8 bits), decodes LZW, deflate
and JPEG strips through ``imagecodecs``, and reads the IFD without touching strip data, so
the header alone answers width, height and sample layout.
"""

from __future__ import annotations

import io
import itertools
from typing import Final

import numpy as np
import tifffile

from service.errors import IncompleteImage, UnsupportedImage
from service.imaging.exif import parse_exif
from service.imaging.formats import ImageFormat, ImageInfo, label

#: Pages counted before a multi-page file is refused without counting the rest.
MAX_PAGES_COUNTED: Final = 16

_PHOTOMETRIC_NAMES: dict[int, str] = {
    tifffile.PHOTOMETRIC.MINISWHITE: "grayscale",
    tifffile.PHOTOMETRIC.MINISBLACK: "grayscale",
    tifffile.PHOTOMETRIC.PALETTE: "palette-indexed",
    tifffile.PHOTOMETRIC.SEPARATED: "CMYK",
    tifffile.PHOTOMETRIC.CIELAB: "CIELab",
    tifffile.PHOTOMETRIC.CFA: "raw sensor data (CFA)",
}

_CHANNEL_NAMES: dict[int, str] = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}

_SAMPLE_FORMAT_NAMES: dict[int, str] = {
    tifffile.SAMPLEFORMAT.INT: "signed integer",
    tifffile.SAMPLEFORMAT.IEEEFP: "floating-point",
    tifffile.SAMPLEFORMAT.COMPLEXINT: "complex",
    tifffile.SAMPLEFORMAT.COMPLEXIEEEFP: "complex",
}


def _photometric_name(value: int) -> str:
    try:
        return tifffile.PHOTOMETRIC(value).name
    except ValueError:
        return str(value)


def _check_page(tif: tifffile.TiffFile, name: str | None) -> tifffile.TiffPage:
    """The single RGB page of ``tif``; :class:`UnsupportedImage` for anything else."""
    where = label(name)
    # Counted lazily and only so far: len(tif.pages) walks every IFD of the chain, and a
    # 54 MB file of 3 M one-entry IFDs took 4 s to count.
    pages = sum(1 for _ in itertools.islice(tif.pages, MAX_PAGES_COUNTED + 1))
    if pages > MAX_PAGES_COUNTED:
        raise UnsupportedImage(
            f"{where}multi-page TIFF (more than {MAX_PAGES_COUNTED} pages); expected one image"
        )
    if pages != 1:
        raise UnsupportedImage(f"{where}multi-page TIFF ({pages} pages); expected one image")
    page = tif.pages[0]
    if not isinstance(page, tifffile.TiffPage):
        raise UnsupportedImage(f"{where}corrupt TIFF: unreadable first page")
    spp = int(page.samplesperpixel)
    photometric = int(page.photometric)
    if photometric == tifffile.PHOTOMETRIC.RGB and spp != 3:
        what = _CHANNEL_NAMES.get(spp, "RGB with extra samples")
        raise UnsupportedImage(f"{where}image has {spp} channels ({what}); expected RGB")
    if photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE):
        what = _CHANNEL_NAMES.get(spp, "grayscale with extra samples")
        plural = "channel" if spp == 1 else "channels"
        raise UnsupportedImage(f"{where}image has {spp} {plural} ({what}); expected RGB")
    if photometric == tifffile.PHOTOMETRIC.SEPARATED:
        raise UnsupportedImage(f"{where}image has {spp} channels (CMYK); expected RGB")
    if photometric == tifffile.PHOTOMETRIC.PALETTE:
        raise UnsupportedImage(f"{where}TIFF image is palette-indexed; expected RGB")
    ycbcr_jpeg = (
        photometric == tifffile.PHOTOMETRIC.YCBCR
        and page.compression in (tifffile.COMPRESSION.JPEG, tifffile.COMPRESSION.OJPEG)
        and spp == 3
    )  # JPEG-compressed TIFFs store YCbCr and decode to RGB, like a JPEG file
    if photometric != tifffile.PHOTOMETRIC.RGB and not ycbcr_jpeg:
        what = _PHOTOMETRIC_NAMES.get(photometric, f"photometric {_photometric_name(photometric)}")
        raise UnsupportedImage(f"{where}TIFF image is {what}; expected RGB")
    sample_format = int(page.sampleformat)
    if sample_format != tifffile.SAMPLEFORMAT.UINT:
        what = _SAMPLE_FORMAT_NAMES.get(sample_format, f"sample format {sample_format}")
        raise UnsupportedImage(
            f"{where}TIFF has {page.bitspersample}-bit {what} samples; "
            "expected 8- or 16-bit unsigned integers"
        )
    if page.bitspersample not in (8, 16):
        raise UnsupportedImage(
            f"{where}TIFF has {page.bitspersample}-bit samples; expected 8 or 16 bits"
        )
    if page.imagedepth != 1:
        raise UnsupportedImage(f"{where}volumetric TIFF (depth {page.imagedepth}); expected 2-D")
    return page


def _check_strips(page: tifffile.TiffPage, size: int, name: str | None) -> None:
    """:class:`IncompleteImage` unless every strip or tile lies wholly inside the file.

    tifffile fills strips that lie past the end of the file (or have no bytes) with zeros
    instead of failing: a cut-off upload must be refused, not decoded half black.
    """
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) == 0 or len(offsets) != len(counts):
        raise IncompleteImage(f"{label(name)}truncated TIFF: no pixel data")
    for offset, count in zip(offsets, counts, strict=True):
        if count == 0 or offset + count > size:
            raise IncompleteImage(
                f"{label(name)}truncated TIFF: pixel data missing or past the end of the file"
            )


def check_complete(data: bytes, info: ImageInfo, name: str | None) -> None:
    """:class:`IncompleteImage` unless every strip's bytes are in the file (nothing decoded)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        _check_strips(_check_page(tif, name), len(data), name)


def read_header(data: bytes, name: str | None) -> ImageInfo:
    """The TIFF's :class:`ImageInfo`; :class:`UnsupportedImage` unless one 8/16-bit RGB page."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = _check_page(tif, name)
        width, height, bits = int(page.imagewidth), int(page.imagelength), int(page.bitspersample)
    return ImageInfo(
        format=ImageFormat.TIFF,
        width=width,
        height=height,
        channels=3,
        bit_depth=bits,
        exposure=parse_exif(data),  # the file is itself the TIFF structure EXIF hangs off
    )


def read_exif(data: bytes) -> bytes | None:
    """The whole file: EXIF tags hang off its IFD0."""
    return data


def read_pixels(data: bytes, info: ImageInfo, name: str | None) -> np.ndarray:
    """The H x W x 3 samples exactly as stored (uint8 or uint16, native byte order)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = _check_page(tif, name)
        _check_strips(page, len(data), name)
        pixels = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
            pixels = np.moveaxis(pixels, 0, -1)
    expected = np.uint16 if info.bit_depth == 16 else np.uint8
    pixels = np.ascontiguousarray(pixels, dtype=expected)
    if pixels.shape != (info.height, info.width, 3):
        raise UnsupportedImage(
            f"{label(name)}corrupt TIFF: decoded shape {pixels.shape}, "
            f"header declares {info.height}x{info.width}x3"
        )
    return pixels
