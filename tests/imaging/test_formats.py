"""The format comes from the bytes' magic numbers, never from a file name."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.builders import pillow_bytes, png_bytes, tiff_bytes
from service.errors import UnsupportedImage
from service.imaging import ImageFormat, decode, sniff_format


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
