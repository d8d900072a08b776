"""OpenEXR results: R, G, B scanline channels, float32 exact, float16 clamped to its range.

Lossless compressions return every sample; the thread pool changes speed, never bytes.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import OpenEXR
import pytest

from service.errors import UnsupportedImage
from service.imaging import (
    DEFAULT_EXR_COMPRESSIONS,
    HALF_MAX,
    ExrCompression,
    decode_exr,
    encode_exr,
    set_exr_threads,
)
from service.imaging.exr import (
    LOSSLESS_COMPRESSIONS,
    default_exr_threads,
    exr_threads,
)
from tests.factories import REPO

LOSSLESS = [c for c in ExrCompression if c in LOSSLESS_COMPRESSIONS]


@pytest.fixture
def hdr() -> np.ndarray:
    """Linear HDR values over many decades, zeros and a negative included."""
    rng = np.random.default_rng(4)
    values = (10.0 ** rng.uniform(-6, 4, (24, 40, 3))).astype(np.float32)
    values[0, 0] = 0.0
    values[0, 1] = [-0.5, 1.0, 3.0e4]
    return values


@pytest.fixture
def tall() -> np.ndarray:
    """Smooth light with texture, 70 rows: several chunks of every codec (16 or 32 rows)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:70, 0:50].astype(np.float32)
    light = (0.5 + 0.4 * np.sin(x / 9.0) * np.cos(y / 13.0))[..., None] * [1.0, 0.8, 0.6]
    return np.clip(light + rng.normal(0, 0.01, light.shape), 0, 1).astype(np.float32)


@pytest.fixture
def pool_restored() -> Iterator[None]:
    """Tests that resize OpenEXR's process-wide pool put back the size they found."""
    before = exr_threads()
    yield
    set_exr_threads(before)


def _header(data: bytes) -> dict[str, object]:
    return OpenEXR.File(io.BytesIO(data), header_only=True).header()


def _compression_name(data: bytes) -> str:
    return str(_header(data)["compression"].name)  # type: ignore[attr-defined]


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
        assert _compression_name(data) == {"float32": "NO", "float16": "ZIP"}[dtype] + (
            "_COMPRESSION"
        )
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


@pytest.mark.parametrize("compression", LOSSLESS, ids=lambda c: c.value)
def test_every_lossless_compression_round_trips_exactly(
    compression: ExrCompression, hdr: np.ndarray, tall: np.ndarray
) -> None:
    for image in (hdr, tall):
        np.testing.assert_array_equal(decode_exr(encode_exr(image, "float32", compression)), image)
        half = np.clip(image, 0, 1000)
        back = decode_exr(encode_exr(half, "float16", compression.value))
        np.testing.assert_array_equal(back, half.astype(np.float16).astype(np.float32))


def test_the_file_names_the_compression_it_was_written_with(tall: np.ndarray) -> None:
    for compression in ExrCompression:
        name = "NO" if compression is ExrCompression.NONE else compression.name
        assert _compression_name(encode_exr(tall, compression=compression)) == (
            f"{name}_COMPRESSION"
        )


def test_the_default_compressions_are_lossless_and_the_ones_readme_names() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())  # line breaks as spaces
    for dtype, compression in DEFAULT_EXR_COMPRESSIONS.items():
        assert compression in LOSSLESS_COMPRESSIONS
        assert f"{dtype} EXR results default to `{compression.value}`" in readme


def test_pxr24_rounds_float32_to_fifteen_mantissa_bits(tall: np.ndarray) -> None:
    back = decode_exr(encode_exr(tall, "float32", ExrCompression.PXR24))
    assert not np.array_equal(back, tall)
    np.testing.assert_allclose(back, tall, rtol=2**-15, atol=0)


def test_compressions_that_pay_off_shrink_a_smooth_image(tall: np.ndarray) -> None:
    raw = len(encode_exr(tall, "float16", ExrCompression.NONE))
    for compression in (
        ExrCompression.ZIP,
        ExrCompression.PIZ,
        DEFAULT_EXR_COMPRESSIONS["float16"],
    ):
        assert len(encode_exr(tall, "float16", compression)) < raw


def test_an_unknown_compression_is_refused_naming_the_known_ones(hdr: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"unknown EXR compression 'lzma'.*none, rle, zips"):
        encode_exr(hdr, compression="lzma")


def test_the_thread_count_changes_no_byte(tall: np.ndarray, pool_restored: None) -> None:
    big = np.tile(tall, (4, 4, 1))  # 280 rows: many chunks for the pool to share out
    for compression in (ExrCompression.NONE, ExrCompression.ZIP, ExrCompression.PIZ):
        set_exr_threads(0)
        alone = encode_exr(big, "float32", compression)
        set_exr_threads(3)
        assert exr_threads() == 3
        assert encode_exr(big, "float32", compression) == alone
        np.testing.assert_array_equal(decode_exr(alone), big)


def test_an_explicit_thread_count_survives_encoding(hdr: np.ndarray, pool_restored: None) -> None:
    set_exr_threads(0)
    decode_exr(encode_exr(hdr))
    assert exr_threads() == 0


def test_a_negative_thread_count_is_refused(pool_restored: None) -> None:
    with pytest.raises(ValueError, match="0 or more, got -1"):
        set_exr_threads(-1)


def test_the_first_encode_sizes_the_pool_to_the_processs_cpus() -> None:
    # The pool is process-wide and this process's was sized long ago: ask a fresh one.
    script = (
        "import numpy as np\n"
        "from service.imaging.exr import encode_exr, exr_threads\n"
        "before = exr_threads()\n"
        "encode_exr(np.zeros((4, 4, 3), np.float32))\n"
        "print(before, exr_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["0", str(default_exr_threads())]


def test_a_child_forked_after_an_encode_encodes_with_its_own_pool() -> None:
    # Threads do not survive fork: without the fork hooks the child waits for ever.
    script = (
        "import os, numpy as np\n"
        "from service.imaging.exr import decode_exr, encode_exr, exr_threads\n"
        "image = np.random.default_rng(0).random((256, 64, 3), dtype=np.float32)\n"
        "data = encode_exr(image, 'float16')\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    same = encode_exr(image, 'float16') == data\n"
        "    os._exit(0 if same and exr_threads() > 0 else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), exr_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert out == ["0", str(default_exr_threads())]
