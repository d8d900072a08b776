"""Shared pixels for the imaging tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rgb8() -> np.ndarray:
    """A 48 x 64 8-bit RGB image of noise, every level in use."""
    return np.random.default_rng(8).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture
def rgb16() -> np.ndarray:
    """A 48 x 64 16-bit RGB image of noise, low bits included, both extremes present."""
    pixels = np.random.default_rng(16).integers(0, 65536, (48, 64, 3), dtype=np.uint16)
    pixels[0, 0] = 0
    pixels[0, 1] = 65535
    return pixels
