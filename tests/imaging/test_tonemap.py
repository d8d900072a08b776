"""Mu-law tone mapping is the field's formula; the preview is its 8-bit PNG."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from service.imaging import MU, mu_law, preview_png


def test_mu_law_is_log_1_plus_mu_x_over_log_1_plus_mu() -> None:
    x = np.array([0.0, 1e-4, 0.01, 0.25, 0.5, 1.0], np.float32)
    expected = [math.log(1 + 5000 * v) / math.log(1 + 5000) for v in x.tolist()]
    result = mu_law(x)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    assert MU == 5000


def test_mu_law_maps_0_to_0_and_1_to_1_and_is_monotonic() -> None:
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    y = mu_law(x)
    assert y[0] == 0.0
    assert abs(y[-1] - 1.0) < 1e-6
    assert np.all(np.diff(y) > 0)


def test_mu_law_computes_in_float64_for_the_metrics() -> None:
    x = np.array([1e-7, 0.3, 1.0])
    result = mu_law(x, dtype=np.float64)
    assert result.dtype == np.float64
    expected = [math.log1p(5000 * v) / math.log1p(5000) for v in x.tolist()]
    np.testing.assert_allclose(result, expected, rtol=1e-15)


def test_mu_law_takes_another_mu() -> None:
    assert abs(float(mu_law(np.float32(0.5), mu=1.0)) - math.log(1.5) / math.log(2.0)) < 1e-6


def _read_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


def test_preview_is_an_8bit_rgb_png_of_the_mu_law_image() -> None:
    hdr = np.random.default_rng(7).random((20, 30, 3), dtype=np.float32)
    pixels = _read_png(preview_png(hdr))
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, np.rint(mu_law(hdr) * 255).astype(np.uint8))


def test_preview_clips_to_0_1_first_and_shows_nan_as_black() -> None:
    hdr = np.array([[[2.0, -1.0, np.nan], [1.0, 0.0, 0.01]]], np.float32)
    pixels = _read_png(preview_png(hdr))
    expected_001 = round(255 * math.log(1 + 50) / math.log(5001))
    np.testing.assert_array_equal(pixels, [[[255, 0, 0], [255, 0, expected_001]]])
