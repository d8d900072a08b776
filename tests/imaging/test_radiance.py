"""Radiance RGBE: RLE written, flat and RLE read, within RGBE's 1% precision."""

from __future__ import annotations

import time

import imagecodecs
import numpy as np
import pytest

from service.errors import UnsupportedImage
from service.imaging import decode_radiance, encode_radiance
from service.imaging.radiance import _to_rgbe

HEADER = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n"


def _relative_error(back: np.ndarray, hdr: np.ndarray) -> np.ndarray:
    """Error relative to each pixel's brightest channel, the scale RGBE quantises at."""
    scale = hdr.max(axis=2, keepdims=True)
    return np.abs(back - hdr) / np.where(scale > 0, scale, 1)


@pytest.fixture
def hdr() -> np.ndarray:
    """HDR values over ten decades, with flat stretches that run-length encode."""
    rng = np.random.default_rng(5)
    values = (10.0 ** rng.uniform(-5, 5, (37, 300, 3))).astype(np.float32)
    values[5:9] = 0.25  # long runs in every channel
    values[12, 100:260] = [1.0, 2.0, 3.0]
    values[20] = 0.0
    return values


def test_round_trip_is_within_rgbe_precision(hdr: np.ndarray) -> None:
    data = encode_radiance(hdr)
    back = decode_radiance(data)
    assert back.shape == hdr.shape and back.dtype == np.float32
    assert _relative_error(back, hdr).max() < 0.01
    brightest = hdr == hdr.max(axis=2, keepdims=True)
    np.testing.assert_allclose(back[brightest], hdr[brightest], rtol=0.005)
    np.testing.assert_array_equal(back[20], 0.0)


def test_header_is_the_standard_one(hdr: np.ndarray) -> None:
    assert encode_radiance(hdr).startswith(HEADER + b"-Y 37 +X 300\n\x02\x02\x01\x2c")


def test_encoded_file_reads_identically_with_an_independent_decoder(hdr: np.ndarray) -> None:
    data = encode_radiance(hdr)
    np.testing.assert_array_equal(imagecodecs.rgbe_decode(data), decode_radiance(data))


def test_rle_file_from_an_independent_encoder_is_read(hdr: np.ndarray) -> None:
    data = imagecodecs.rgbe_encode(hdr)
    assert b"\n\x02\x02" in data[:80]  # new-style run-length scanlines
    np.testing.assert_array_equal(decode_radiance(data), imagecodecs.rgbe_decode(data))


def test_run_length_encoding_compresses_flat_images() -> None:
    flat = np.full((50, 400, 3), 0.5, np.float32)
    data = encode_radiance(flat)
    assert len(data) < 50 * 4 * 4 * 4 + 100  # 4 chunks of 2 bytes per channel per scanline
    np.testing.assert_array_equal(decode_radiance(data), flat)


def test_a_hand_built_rle_scanline_decodes() -> None:
    width = 10
    scanline = bytes([2, 2, 0, width])
    scanline += bytes([128 + 10, 128])  # R: a run of ten 128s
    scanline += bytes([10, *range(100, 110)])  # G: ten literal bytes
    scanline += bytes([128 + 6, 64, 4, 1, 2, 3, 4])  # B: a run of six 64s, then four literals
    scanline += bytes([128 + 10, 129])  # E: exponent byte 129 everywhere
    data = HEADER + b"-Y 1 +X 10\n" + scanline
    scale = 2.0 ** (129 - 136)
    expected = np.zeros((1, width, 3), np.float32)
    expected[0, :, 0] = 128 * scale
    expected[0, :, 1] = np.arange(100, 110) * scale
    expected[0, :, 2] = [64] * 6 + [1, 2, 3, 4]
    expected[0, :, 2] *= scale
    np.testing.assert_array_equal(decode_radiance(data), expected)


def test_flat_files_are_read_even_when_rle_would_be_allowed(hdr: np.ndarray) -> None:
    rgbe = _to_rgbe(hdr)
    data = HEADER + b"-Y 37 +X 300\n" + rgbe.tobytes()
    np.testing.assert_array_equal(decode_radiance(data), decode_radiance(encode_radiance(hdr)))


@pytest.mark.parametrize("width", [1, 7])
def test_images_too_narrow_for_rle_are_written_flat(width: int) -> None:
    narrow = np.linspace(0.01, 100, 6 * width * 3, dtype=np.float32).reshape(6, width, 3)
    data = encode_radiance(narrow)
    assert len(data) == len(HEADER + f"-Y 6 +X {width}\n".encode()) + 6 * width * 4
    assert _relative_error(decode_radiance(data), narrow).max() < 0.01


def test_other_scanline_orientations_are_turned_upright() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) + 1
    stored = _to_rgbe(image)
    upright = decode_radiance(HEADER + b"-Y 2 +X 3\n" + stored.tobytes())
    bottom_up = decode_radiance(HEADER + b"+Y 2 +X 3\n" + stored[::-1].tobytes())
    mirrored = decode_radiance(HEADER + b"-Y 2 -X 3\n" + stored[:, ::-1].tobytes())
    columns = decode_radiance(HEADER + b"+X 3 -Y 2\n" + stored.transpose(1, 0, 2).tobytes())
    for other in (bottom_up, mirrored, columns):
        np.testing.assert_array_equal(other, upright)


def test_negative_nan_and_infinite_values_are_made_representable() -> None:
    odd = np.array([[[-1.0, 0.5, np.nan], [np.inf, 1.0, 0.0], [1e-40, 0, 0]]], np.float32)
    back = decode_radiance(encode_radiance(odd))
    assert np.isfinite(back).all()
    assert back[0, 0, 0] == 0.0 and back[0, 0, 2] == 0.0
    assert abs(back[0, 0, 1] - 0.5) < 0.005
    assert back[0, 1, 0] > 1e38
    np.testing.assert_array_equal(back[0, 2], 0.0)


def test_rounding_up_to_the_next_exponent_stays_exact() -> None:
    just_below_two = np.full((1, 8, 3), 2.0 - 1e-4, np.float32)
    back = decode_radiance(encode_radiance(just_below_two))
    np.testing.assert_array_equal(back, 2.0)


def test_a_1000_by_1500_image_encodes_and_decodes_quickly() -> None:
    rng = np.random.default_rng(6)
    big = (rng.random((1000, 1500, 3), dtype=np.float32) ** 3) * 50
    started = time.perf_counter()
    back = decode_radiance(encode_radiance(big))
    assert time.perf_counter() - started < 3.0
    assert _relative_error(back, big).max() < 0.01


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"P6\n3 2\n255\n", "not a Radiance file"),
        (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n", "truncated Radiance header"),
        (b"#?RADIANCE\nFORMAT=32-bit_rle_xyze\n\n-Y 1 +X 1\n\x00\x00\x00\x00", "xyze"),
        (HEADER + b"-Y 1 -Y 1\n\x00\x00\x00\x00", "resolution line"),
        (HEADER + b"-Y 2 +X 2\n" + bytes(12), "truncated Radiance file"),
        (HEADER + b"-Y 1 +X 8\n\x02\x02\x00\x08" + bytes([128 + 9, 1]), "overruns"),
        (HEADER + b"-Y 1 +X 8\n\x02\x02\x00\x08" + bytes([0]), "empty chunk"),
        (HEADER + b"-Y 2 +X 8\n\x02\x02\x00\x08" + bytes([128 + 8, 1]), "truncated"),
    ],
    ids=["signature", "header", "xyze", "resolution", "flat-cut", "overrun", "zero", "rle-cut"],
)
def test_damaged_files_are_unsupported_images(data: bytes, words: str) -> None:
    with pytest.raises(UnsupportedImage, match=words):
        decode_radiance(data, name="label.hdr")


def test_encode_refuses_anything_but_a_non_empty_rgb_image() -> None:
    with pytest.raises(ValueError, match="H x W x 3"):
        encode_radiance(np.zeros((4, 4), np.float32))
