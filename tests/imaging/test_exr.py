"""OpenEXR results: R, G, B scanline channels, float32 exact, float16 clamped to its range."""

from __future__ import annotations

import io

import numpy as np
import OpenEXR
import pytest

from service.errors import UnsupportedImage
from service.imaging import HALF_MAX, decode_exr, encode_exr


@pytest.fixture
def hdr() -> np.ndarray:
    """Linear HDR values over many decades, zeros and a negative included."""
    rng = np.random.default_rng(4)
    values = (10.0 ** rng.uniform(-6, 4, (24, 40, 3))).astype(np.float32)
    values[0, 0] = 0.0
    values[0, 1] = [-0.5, 1.0, 3.0e4]
    return values


def _header(data: bytes) -> dict[str, object]:
    return OpenEXR.File(io.BytesIO(data), header_only=True).header()


def test_float32_round_trip_is_exact(hdr: np.ndarray) -> None:
    back = decode_exr(encode_exr(hdr, "float32"))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, hdr)


def test_float16_round_trip_is_within_half_precision(hdr: np.ndarray) -> None:
    small = np.clip(hdr, 0, 1000)
    back = decode_exr(encode_exr(small, "float16"))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, small.astype(np.float16).astype(np.float32))
    normal = small > 1e-4  # below half's normal range precision is absolute, not relative
    np.testing.assert_allclose(back[normal], small[normal], rtol=2**-11)


def test_channels_are_named_r_g_b_with_the_requested_pixel_type(hdr: np.ndarray) -> None:
    for dtype, pixel_type in (("float32", OpenEXR.FLOAT), ("float16", OpenEXR.HALF)):
        data = encode_exr(hdr, dtype)  # type: ignore[arg-type]
        header = _header(data)
        names = sorted(channel.name for channel in header["channels"])  # type: ignore[attr-defined]
        assert names == ["B", "G", "R"]
        assert header["compression"] == OpenEXR.ZIP_COMPRESSION
        assert header["type"] == OpenEXR.scanlineimage
        # the stored pixel type is only known once the pixels are read
        channels = OpenEXR.File(io.BytesIO(data), separate_channels=True).channels()
        assert {channel.type() for channel in channels.values()} == {pixel_type}


def test_channels_hold_the_right_planes() -> None:
    planes = np.zeros((2, 3, 3), np.float32)
    planes[:, :, 0], planes[:, :, 1], planes[:, :, 2] = 1.0, 2.0, 3.0
    exr = OpenEXR.File(io.BytesIO(encode_exr(planes)), separate_channels=True)
    assert {name: float(ch.pixels.mean()) for name, ch in exr.channels().items()} == {
        "R": 1.0,
        "G": 2.0,
        "B": 3.0,
    }


def test_float16_clamps_beyond_the_half_range_instead_of_writing_infinity() -> None:
    extreme = np.array([[[1e6, -1e6, np.inf], [-np.inf, 65504.0, 0.5]]], np.float32)
    back = decode_exr(encode_exr(extreme, "float16"))
    np.testing.assert_array_equal(
        back, [[[HALF_MAX, -HALF_MAX, HALF_MAX], [-HALF_MAX, 65504.0, 0.5]]]
    )
    assert np.isfinite(back).all()


def test_float32_keeps_values_beyond_the_half_range() -> None:
    big = np.full((1, 1, 3), 1e9, np.float32)
    assert decode_exr(encode_exr(big))[0, 0, 0] == np.float32(1e9)


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 4), (0, 4, 3)])
def test_encode_refuses_anything_but_a_non_empty_rgb_image(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected"):
        encode_exr(np.zeros(shape, np.float32))


def test_encode_refuses_an_unknown_dtype(hdr: np.ndarray) -> None:
    with pytest.raises(ValueError, match="'float16' or 'float32'"):
        encode_exr(hdr, "float64")  # type: ignore[arg-type]


def test_decoding_garbage_or_a_cut_file_is_an_unsupported_image(hdr: np.ndarray) -> None:
    data = encode_exr(hdr)
    for bad in (b"", b"not an exr" * 10, data[: len(data) // 3]):
        with pytest.raises(UnsupportedImage, match="OpenEXR"):
            decode_exr(bad)


def test_decoding_an_exr_without_rgb_channels_names_what_is_missing() -> None:
    luminance = np.ones((2, 2), np.float32)
    stream = io.BytesIO()
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION}, {"Y": luminance}).write(stream)
    with pytest.raises(UnsupportedImage, match=r"lacks channel\(s\) R, G, B; has Y"):
        decode_exr(stream.getvalue())
