"""The format comes from the bytes' magic numbers, never from a file name."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.builders import pillow_bytes, png_bytes, tiff_bytes
from service.errors import UnsupportedImage
from service.imaging import ImageFormat, ImageInfo, decode, sniff_format
from service.imaging.formats import check_decoded


def test_formats_are_sniffed_from_magic_numbers(rgb8: np.ndarray) -> None:
    assert sniff_format(png_bytes(rgb8)) is ImageFormat.PNG
    assert sniff_format(pillow_bytes(rgb8, "JPEG")) is ImageFormat.JPEG
    assert sniff_format(tiff_bytes(rgb8, photometric="rgb")) is ImageFormat.TIFF
    assert sniff_format(tiff_bytes(rgb8, photometric="rgb", byteorder=">")) is ImageFormat.TIFF
    assert sniff_format(tiff_bytes(rgb8, photometric="rgb", bigtiff=True)) is ImageFormat.TIFF


def test_a_misleading_file_name_does_not_change_the_decoder(rgb8: np.ndarray) -> None:
    image = decode(png_bytes(rgb8), name="photo.jpg")
    assert image.info.format is ImageFormat.PNG
    np.testing.assert_array_equal(image.pixels, rgb8)


def test_image_format_values_are_the_lowercase_names() -> None:
    assert [f.value for f in ImageFormat] == ["png", "jpeg", "tiff", "heif"]
    assert ImageFormat("tiff") is ImageFormat.TIFF


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty file"),
        (b"GIF89a" + bytes(40), "not a PNG, JPEG, TIFF or HEIC"),
        (b"BM" + bytes(60), "not a PNG, JPEG, TIFF or HEIC"),
        (np.random.default_rng(0).bytes(500), "not a PNG, JPEG, TIFF or HEIC"),
    ],
)
def test_unknown_bytes_are_unsupported_images_naming_the_file(data: bytes, words: str) -> None:
    with pytest.raises(UnsupportedImage, match=words) as caught:
        decode(data, name="upload.bin")
    assert caught.value.message.startswith("upload.bin: ")
    assert caught.value.http_status == 415


@pytest.mark.parametrize(
    ("fmt", "bits", "decoded"),
    [
        (ImageFormat.PNG, 16, np.zeros((2, 4, 3), np.uint8)),
        (ImageFormat.PNG, 8, np.zeros((2, 4, 3), np.uint16)),
        (ImageFormat.HEIF, 10, np.zeros((4, 2, 3), np.uint16)),
    ],
)
def test_decoded_pixels_unlike_the_header_are_a_corrupt_file(
    fmt: ImageFormat, bits: int, decoded: np.ndarray
) -> None:
    info = ImageInfo(format=fmt, width=4, height=2, channels=3, bit_depth=bits)
    expected = np.uint8 if bits == 8 else np.uint16
    check_decoded(np.zeros((2, 4, 3), expected), info, "a.img")  # as declared: passes
    with pytest.raises(UnsupportedImage) as caught:
        check_decoded(decoded, info, "a.img")
    assert caught.value.message == (
        f"a.img: corrupt {fmt.name}: decoded {decoded.shape} {decoded.dtype} pixels"
        f" where the header declares 2x4x3 {bits}-bit"
    )
