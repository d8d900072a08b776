"""Decoding keeps every stored value; anything but one 8/16-bit RGB image is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imaging.builders import pillow_bytes, png_bytes, png_chunk, tiff_bytes
from service.errors import UnsupportedImage
from service.imaging import DecodedImage, ImageFormat, decode, probe, read_image

# -- round trips ------------------------------------------------------------------------------


def test_16bit_png_keeps_every_bit(rgb16: np.ndarray) -> None:
    image = decode(png_bytes(rgb16))
    assert image.pixels.dtype == np.uint16
    assert image.pixels.shape == (48, 64, 3)
    np.testing.assert_array_equal(image.pixels, rgb16)
    assert (image.info.format, image.info.bit_depth, image.info.channels) == (
        ImageFormat.PNG,
        16,
        3,
    )


def test_8bit_png_is_exact(rgb8: np.ndarray) -> None:
    image = decode(png_bytes(rgb8))
    assert image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, rgb8)
    assert image.info.bit_depth == 8


def test_png_written_by_pillow_decodes_like_pillow_reads_it(rgb8: np.ndarray) -> None:
    np.testing.assert_array_equal(decode(pillow_bytes(rgb8, "PNG")).pixels, rgb8)


def test_rgb_png_with_a_transparent_colour_key_still_decodes_as_rgb(rgb8: np.ndarray) -> None:
    data = pillow_bytes(rgb8, "PNG", transparency=(1, 2, 3))
    assert b"tRNS" in data
    image = decode(data)
    assert image.pixels.shape == (48, 64, 3)
    np.testing.assert_array_equal(image.pixels, rgb8)


def test_jpeg_decodes_to_8bit_rgb_close_to_its_source() -> None:
    smooth = np.linspace(0, 255, 48 * 64 * 3).reshape(48, 64, 3).astype(np.uint8)
    image = decode(pillow_bytes(smooth, "JPEG", quality=95))
    assert image.pixels.dtype == np.uint8
    assert image.pixels.shape == (48, 64, 3)
    assert image.info.format is ImageFormat.JPEG and image.info.bit_depth == 8
    assert np.abs(image.pixels.astype(int) - smooth).mean() < 2


def test_progressive_jpeg_decodes(rgb8: np.ndarray) -> None:
    image = decode(pillow_bytes(rgb8, "JPEG", progressive=True))
    assert image.pixels.shape == (48, 64, 3)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"compression": "lzw"},
        {"compression": "lzw", "predictor": True},
        {"compression": "deflate"},
        {"compression": "adobe_deflate"},
        {"compression": "packbits"},
        {"byteorder": ">"},
        {"bigtiff": True},
        {"planarconfig": "separate"},
        {"tile": (16, 16), "compression": "zlib"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()) or "uncompressed",
)
@pytest.mark.parametrize("depth", [8, 16])
def test_tiff_round_trip_is_exact(
    params: dict[str, object], depth: int, rgb8: np.ndarray, rgb16: np.ndarray
) -> None:
    pixels = rgb16 if depth == 16 else rgb8
    stored = pixels.transpose(2, 0, 1) if params.get("planarconfig") == "separate" else pixels
    image = decode(tiff_bytes(stored, photometric="rgb", **params))
    assert image.pixels.dtype == pixels.dtype
    assert image.pixels.dtype.isnative
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.info.bit_depth == depth


def test_jpeg_compressed_tiff_decodes_to_rgb() -> None:
    smooth = np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint8)
    image = decode(tiff_bytes(smooth, photometric="rgb", compression="jpeg"))
    assert image.pixels.shape == (32, 32, 3)
    assert np.abs(image.pixels.astype(int) - smooth).mean() < 3


def test_decoded_pixels_are_contiguous_and_writable_copies(rgb16: np.ndarray) -> None:
    image = decode(png_bytes(rgb16))
    assert image.pixels.flags.c_contiguous
    assert isinstance(image, DecodedImage)


def test_read_image_decodes_a_file_and_names_it_in_errors(
    tmp_path: Path, rgb16: np.ndarray
) -> None:
    good = tmp_path / "input_1.tif"
    good.write_bytes(tiff_bytes(rgb16, photometric="rgb", compression="lzw"))
    np.testing.assert_array_equal(read_image(good).pixels, rgb16)

    bad = tmp_path / "input_2.png"
    bad.write_bytes(png_bytes(np.zeros((4, 4, 4), np.uint8)))
    with pytest.raises(UnsupportedImage, match=r"^input_2\.png: image has 4 channels \(RGBA\)"):
        read_image(bad)


# -- refusals: not RGB ------------------------------------------------------------------------

_PALETTE = bytes(range(48))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png_bytes(np.zeros((4, 4, 4), np.uint8)), "image has 4 channels (RGBA); expected RGB"),
        (png_bytes(np.zeros((4, 4, 4), np.uint16)), "image has 4 channels (RGBA); expected RGB"),
        (png_bytes(np.zeros((4, 4), np.uint8)), "image has 1 channel (grayscale); expected RGB"),
        (png_bytes(np.zeros((4, 4), np.uint16)), "image has 1 channel (grayscale); expected RGB"),
        (
            png_bytes(np.zeros((4, 4, 2), np.uint8)),
            "image has 2 channels (grayscale+alpha); expected RGB",
        ),
        (
            png_bytes(np.zeros((4, 4), np.uint8), palette=_PALETTE),
            "PNG image is palette-indexed; expected RGB",
        ),
        (
            png_bytes(np.zeros((4, 4, 3), np.uint8), [(b"acTL", bytes(8))]),
            "animated PNG (APNG); expected a still image",
        ),
    ],
    ids=["rgba8", "rgba16", "gray8", "gray16", "gray-alpha", "palette", "apng"],
)
def test_non_rgb_png_is_refused_with_what_it_is(data: bytes, message: str) -> None:
    with pytest.raises(UnsupportedImage) as caught:
        decode(data, name="input_2.png")
    assert caught.value.message == f"input_2.png: {message}"
    with pytest.raises(UnsupportedImage):
        probe(data)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("L", "image has 1 channel (grayscale); expected RGB"),
        ("CMYK", "image has 4 channels (CMYK); expected RGB"),
    ],
)
def test_non_rgb_jpeg_is_refused_with_what_it_is(rgb8: np.ndarray, mode: str, message: str) -> None:
    with pytest.raises(UnsupportedImage) as caught:
        decode(pillow_bytes(rgb8, "JPEG", mode=mode), name="shot.jpg")
    assert caught.value.message == f"shot.jpg: {message}"


@pytest.mark.parametrize(
    ("pixels", "params", "message"),
    [
        (
            np.zeros((4, 4, 4), np.uint8),
            {"photometric": "rgb", "extrasamples": ["unassalpha"]},
            "image has 4 channels (RGBA); expected RGB",
        ),
        (
            np.zeros((4, 4), np.uint16),
            {"photometric": "minisblack"},
            "image has 1 channel (grayscale); expected RGB",
        ),
        (
            np.zeros((4, 4), np.uint8),
            {"photometric": "palette", "colormap": np.zeros((3, 256), np.uint16)},
            "TIFF image is palette-indexed; expected RGB",
        ),
        (
            np.zeros((4, 4, 4), np.uint8),
            {"photometric": "separated"},
            "image has 4 channels (CMYK); expected RGB",
        ),
        (
            np.zeros((4, 4, 3), np.float32),
            {"photometric": "rgb"},
            "TIFF has 32-bit floating-point samples; expected 8- or 16-bit unsigned integers",
        ),
        (
            np.zeros((4, 4, 3), np.float16),
            {"photometric": "rgb"},
            "TIFF has 16-bit floating-point samples; expected 8- or 16-bit unsigned integers",
        ),
        (
            np.zeros((4, 4, 3), np.int16),
            {"photometric": "rgb"},
            "TIFF has 16-bit signed integer samples; expected 8- or 16-bit unsigned integers",
        ),
        (
            np.zeros((4, 4, 3), np.uint32),
            {"photometric": "rgb"},
            "TIFF has 32-bit samples; expected 8 or 16 bits",
        ),
        (
            np.zeros((2, 4, 4, 3), np.uint16),
            {"photometric": "rgb"},
            "multi-page TIFF (2 pages); expected one image",
        ),
    ],
    ids=["rgba", "gray", "palette", "cmyk", "float32", "float16", "int16", "uint32", "pages"],
)
def test_non_rgb_tiff_is_refused_with_what_it_is(
    pixels: np.ndarray, params: dict[str, object], message: str
) -> None:
    with pytest.raises(UnsupportedImage) as caught:
        decode(tiff_bytes(pixels, **params), name="input_3.tif")
    assert caught.value.message == f"input_3.tif: {message}"


# -- refusals: damaged files ------------------------------------------------------------------


def _samples(rgb8: np.ndarray, rgb16: np.ndarray) -> dict[str, bytes]:
    return {
        "png8": png_bytes(rgb8),
        "png16": png_bytes(rgb16),
        "jpeg": pillow_bytes(rgb8, "JPEG"),
        "tiff": tiff_bytes(rgb16, photometric="rgb"),
        "tiff-lzw": tiff_bytes(rgb16, photometric="rgb", compression="lzw"),
        "tiff-deflate": tiff_bytes(rgb16, photometric="rgb", compression="deflate"),
    }


@pytest.mark.parametrize("kind", ["png8", "png16", "jpeg", "tiff", "tiff-lzw", "tiff-deflate"])
@pytest.mark.parametrize("keep", [0.05, 0.3, 0.6, 0.95])
def test_truncated_files_are_unsupported_images(
    kind: str, keep: float, rgb8: np.ndarray, rgb16: np.ndarray
) -> None:
    data = _samples(rgb8, rgb16)[kind]
    with pytest.raises(UnsupportedImage, match=r"^cut\.img: .*(truncated|corrupt)"):
        decode(data[: int(len(data) * keep)], name="cut.img")


@pytest.mark.parametrize("kind", ["png8", "png16", "jpeg", "tiff", "tiff-lzw", "tiff-deflate"])
def test_random_bytes_behind_a_valid_signature_are_unsupported_images(
    kind: str, rgb8: np.ndarray, rgb16: np.ndarray
) -> None:
    data = _samples(rgb8, rgb16)[kind]
    rng = np.random.default_rng(len(kind))
    for keep in (4, 8, 16, 40, 200):
        for _ in range(5):
            garbage = data[:keep] + rng.bytes(400)
            try:
                decode(garbage, name="noise.img")
            except UnsupportedImage as error:
                assert error.message.startswith("noise.img: ")
            # a decode that happens to succeed is fine; any other exception fails the test


def test_png_with_a_corrupt_pixel_stream_is_refused(rgb8: np.ndarray) -> None:
    data = bytearray(png_bytes(rgb8))
    idat = data.index(b"IDAT")
    data[idat + 40] ^= 0xFF
    with pytest.raises(UnsupportedImage, match="corrupt PNG"):
        decode(bytes(data))


def test_png_with_a_damaged_header_is_refused(rgb8: np.ndarray) -> None:
    data = bytearray(png_bytes(rgb8))
    data[20] ^= 0x01  # inside IHDR's width: the CRC no longer matches
    with pytest.raises(UnsupportedImage, match="damaged IHDR"):
        probe(bytes(data))


def test_png_without_pixel_data_is_refused(rgb8: np.ndarray) -> None:
    data = png_bytes(rgb8)
    idat = data.index(b"IDAT") - 4
    (length,) = np.frombuffer(data[idat : idat + 4], ">u4")
    stripped = data[:idat] + data[idat + 12 + int(length) :]
    with pytest.raises(UnsupportedImage, match="corrupt PNG"):
        decode(stripped)


def test_tiff_strip_offsets_past_the_end_are_refused_not_zero_filled(rgb16: np.ndarray) -> None:
    data = tiff_bytes(rgb16, photometric="rgb")
    with pytest.raises(UnsupportedImage, match="truncated TIFF"):
        decode(data[:-10])


def test_unknown_png_chunks_are_skipped(rgb16: np.ndarray) -> None:
    data = png_bytes(rgb16, [(b"tEXt", b"Comment\x00made by a test"), (b"zzZz", b"\x01")])
    np.testing.assert_array_equal(decode(data).pixels, rgb16)
    assert png_chunk(b"IEND", b"") in data
