"""verify(): a file whose header probes fine but whose pixel data is cut short is refused
before anything is queued, and headers crafted to be slow to walk are refused at once."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest

from service.errors import IncompleteImage, UnsupportedImage
from service.imaging import ImageFormat, decode, probe, verify
from service.imaging.jpeg import MAX_HEADER_MARKERS
from service.imaging.png import MAX_CHUNKS
from service.imaging.tiff import MAX_PAGES_COUNTED
from tests.imaging.builders import (
    PNG_SIGNATURE,
    pillow_bytes,
    png_bytes,
    png_chunk,
    png_ihdr,
    png_interlaced_bytes,
    tiff_bytes,
)

#: Far above what a bounded walk costs, far below what an unbounded one took (seconds).
QUICK_SECONDS = 1.0


def _samples(rgb8: np.ndarray, rgb16: np.ndarray) -> dict[str, bytes]:
    return {
        "png8": png_bytes(rgb8),
        "png16": png_bytes(rgb16),
        "png16-interlaced": png_interlaced_bytes(rgb16),
        "png8-interlaced": png_interlaced_bytes(rgb8[:45, :61]),
        "jpeg": pillow_bytes(rgb8, "JPEG"),
        "jpeg-progressive": pillow_bytes(rgb8, "JPEG", progressive=True),
        "tiff": tiff_bytes(rgb16, photometric="rgb"),
        "tiff-lzw": tiff_bytes(rgb16, photometric="rgb", compression="lzw", rowsperstrip=8),
        "tiff-tiled": tiff_bytes(rgb16, photometric="rgb", tile=(16, 16)),
    }


KINDS = [
    "png8",
    "png16",
    "png16-interlaced",
    "png8-interlaced",
    "jpeg",
    "jpeg-progressive",
    "tiff",
    "tiff-lzw",
    "tiff-tiled",
]


@pytest.mark.parametrize("kind", KINDS)
def test_complete_files_verify_and_decode(kind: str, rgb8: np.ndarray, rgb16: np.ndarray) -> None:
    data = _samples(rgb8, rgb16)[kind]
    info = verify(data, "whole.img", max_pixels=10**6)
    assert info == probe(data, "whole.img")
    assert decode(data).pixels.shape == (info.height, info.width, 3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keep", [0.6, 0.8, 0.97])
def test_files_cut_short_after_a_sound_header_are_incomplete(
    kind: str, keep: float, rgb8: np.ndarray, rgb16: np.ndarray
) -> None:
    data = _samples(rgb8, rgb16)[kind]
    cut = data[: int(len(data) * keep)]
    probe(cut, "cut.img")  # the header alone looks fine: this is what got a 202 before
    with pytest.raises(IncompleteImage, match=r"^cut\.img: truncated") as caught:
        verify(cut, "cut.img")
    assert caught.value.http_status == 422
    with pytest.raises(UnsupportedImage):  # and the worker's decode would indeed fail
        decode(cut, "cut.img")


def test_png_whose_pixel_stream_ends_early_is_incomplete_even_with_iend(
    rgb16: np.ndarray,
) -> None:
    height, width, _ = rgb16.shape
    rows = rgb16.astype(">u2").reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    half = zlib.compress(raw[: len(raw) // 2])  # a whole deflate stream of half the rows
    data = (
        PNG_SIGNATURE
        + png_ihdr(width, height, 16, 2)
        + png_chunk(b"IDAT", half)
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(IncompleteImage, match=f"holds {len(raw) // 2} of the {len(raw)} bytes"):
        verify(data, "half.png")


def test_png_with_more_pixel_data_than_declared_is_refused(rgb8: np.ndarray) -> None:
    height, width, _ = rgb8.shape
    raw = b"\x00" * (height * (1 + 3 * width) * 1000)  # a thousand frames' worth of zeros
    data = (
        PNG_SIGNATURE
        + png_ihdr(width, height, 8, 2)
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(UnsupportedImage, match="more pixel data than the header"):
        verify(data, "bomb.png")


def test_jpeg_of_a_million_empty_comments_is_refused_at_once(rgb8: np.ndarray) -> None:
    """Issue 12: SOI + 1.5 M x ``FF FE 00 02`` + a real JPEG took 7 s to probe, 40 s to decode."""
    crafted = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 1_500_000 + pillow_bytes(rgb8, "JPEG")
    started = time.perf_counter()
    with pytest.raises(UnsupportedImage, match=f"more than {MAX_HEADER_MARKERS} markers"):
        verify(crafted, "slow.jpg")
    with pytest.raises(UnsupportedImage, match="markers"):
        decode(crafted, "slow.jpg")  # the worker refuses it as fast
    assert time.perf_counter() - started < QUICK_SECONDS


def test_jpeg_of_a_million_fill_bytes_is_refused_at_once(rgb8: np.ndarray) -> None:
    crafted = b"\xff\xd8" + b"\xff" * 6_000_000 + pillow_bytes(rgb8, "JPEG")[2:]
    started = time.perf_counter()
    with pytest.raises(UnsupportedImage, match="markers"):
        verify(crafted, "fill.jpg")
    assert time.perf_counter() - started < QUICK_SECONDS


def test_jpeg_with_a_few_hundred_segments_is_still_accepted(rgb8: np.ndarray) -> None:
    real = pillow_bytes(rgb8, "JPEG")
    data = b"\xff\xd8" + b"\xff\xfe\x00\x04hi" * 500 + real[2:]
    assert verify(data, "chatty.jpg").format is ImageFormat.JPEG


def test_png_of_millions_of_empty_chunks_is_refused_at_once(rgb8: np.ndarray) -> None:
    """Issue 12: a PNG with 5 M empty chunks took 6.8 s to probe."""
    real = png_bytes(rgb8)
    idat = real.index(b"IDAT") - 4
    empty = struct.pack(">I", 0) + b"zzZz" + struct.pack(">I", zlib.crc32(b"zzZz"))
    crafted = real[:idat] + empty * 5_000_000 + real[idat:]
    started = time.perf_counter()
    with pytest.raises(UnsupportedImage, match=f"more than {MAX_CHUNKS} chunks"):
        verify(crafted, "slow.png")
    assert time.perf_counter() - started < QUICK_SECONDS


def _tiff_with_pages(count: int) -> bytes:
    """A 16x16 RGB TIFF whose IFD0 chains ``count`` more one-entry IFDs behind it."""
    data = bytearray(tiff_bytes(np.zeros((16, 16, 3), np.uint8), photometric="rgb"))
    (ifd0,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd0)
    data += b"\x00" * (len(data) % 2)
    struct.pack_into("<I", data, ifd0 + 2 + 12 * entries, len(data))
    start = len(data)
    for i in range(count):
        following = start + 18 * (i + 1) if i < count - 1 else 0
        data += struct.pack("<HHHIII", 1, 256, 4, 1, 1, following)  # ImageWidth=1
    return bytes(data)


def test_tiff_of_millions_of_pages_is_refused_without_counting_them_all() -> None:
    crafted = _tiff_with_pages(3_000_000)  # 54 MB; counting every IFD took 4 s
    started = time.perf_counter()
    with pytest.raises(UnsupportedImage, match=f"more than {MAX_PAGES_COUNTED} pages"):
        verify(crafted, "pages.tif")
    assert time.perf_counter() - started < QUICK_SECONDS
    with pytest.raises(UnsupportedImage, match=r"multi-page TIFF \(3 pages\)"):
        verify(_tiff_with_pages(2), "pages.tif")


@pytest.mark.parametrize("shape", [(48, 64), (45, 61), (1, 1), (3, 2), (9, 1)])
def test_interlaced_png_verifies_and_decodes_to_its_pixels(
    shape: tuple[int, int], rgb16: np.ndarray
) -> None:
    """The expected size of an Adam7 stream is the sum of its passes, empty ones skipped."""
    pixels = np.ascontiguousarray(rgb16[: shape[0], : shape[1]])
    data = png_interlaced_bytes(pixels)
    verify(data, "adam7.png")
    np.testing.assert_array_equal(decode(data).pixels, pixels)
