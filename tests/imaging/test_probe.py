"""Probing reads headers only, so bombs are measured and refused before any allocation."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from imaging.builders import patch_jpeg_size, patch_tiff_size, pillow_bytes, png_bomb, tiff_bytes
from service.errors import ImageTooLarge
from service.imaging import ImageFormat, ImageInfo, check_pixel_limit, decode, probe


def _tiny_rgb() -> np.ndarray:
    return np.zeros((2, 2, 3), np.uint8)


BOMBS: dict[str, Callable[[], bytes]] = {
    "png": lambda: png_bomb(100_000, 100_000),
    "jpeg": lambda: patch_jpeg_size(pillow_bytes(_tiny_rgb(), "JPEG"), 65_000, 65_000),
    "tiff": lambda: patch_tiff_size(tiff_bytes(_tiny_rgb(), photometric="rgb"), 100_000, 100_000),
}


@pytest.mark.parametrize("kind", BOMBS)
def test_probe_of_a_bomb_header_reports_its_size_without_allocating_pixels(kind: str) -> None:
    data = BOMBS[kind]()
    assert len(data) < 2000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        info = probe(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 5_000_000
    assert info.pixels == info.width * info.height >= 65_000 * 65_000
    assert info.format is ImageFormat(kind)


@pytest.mark.parametrize("kind", BOMBS)
def test_decode_refuses_a_bomb_by_pixel_count_before_decoding(kind: str) -> None:
    with pytest.raises(ImageTooLarge) as caught:
        decode(BOMBS[kind](), name=f"bomb.{kind}", max_pixels=50_000_000)
    assert caught.value.http_status == 413
    assert caught.value.message.startswith(f"bomb.{kind}: image is ")
    assert "over the limit of 50000000 pixels" in caught.value.message


def test_png_bomb_message_states_the_declared_size() -> None:
    with pytest.raises(ImageTooLarge, match=r"100000x100000 \(10000000000 pixels\)"):
        probe(png_bomb(), max_pixels=1_000_000)


def test_images_at_the_limit_pass_and_one_pixel_over_fails() -> None:
    info = ImageInfo(ImageFormat.PNG, width=100, height=50, channels=3, bit_depth=8)
    check_pixel_limit(info, 5000)
    check_pixel_limit(info, None)
    with pytest.raises(ImageTooLarge):
        check_pixel_limit(info, 4999)


def test_pillows_own_bomb_limit_neither_warns_nor_raises_nor_is_changed() -> None:
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    # 12000 x 12000 is past Pillow's warning threshold; tests run with warnings as errors
    data = patch_jpeg_size(pillow_bytes(_tiny_rgb(), "JPEG"), 12_000, 12_000)
    assert probe(data).pixels == 144_000_000
    assert before == Image.MAX_IMAGE_PIXELS


def test_probe_reads_size_depth_and_format(rgb16: np.ndarray) -> None:
    info = probe(tiff_bytes(rgb16, photometric="rgb", compression="lzw"))
    assert info == ImageInfo(ImageFormat.TIFF, width=64, height=48, channels=3, bit_depth=16)
