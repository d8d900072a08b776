"""to_unit_float follows the official 16-bit convention and maps 8-bit levels onto it."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging import to_unit_float


def test_16bit_is_the_official_uint16_over_2_to_the_16(rgb16: np.ndarray) -> None:
    expected = (rgb16 / 2**16).astype(np.float32)  # the reference implementation's line
    result = to_unit_float(rgb16)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)


def test_8bit_level_v_maps_like_the_16bit_value_v_times_257() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    widened = levels.astype(np.uint16) * 257
    np.testing.assert_array_equal(to_unit_float(levels), to_unit_float(widened))


def test_saturated_8bit_equals_saturated_16bit_and_black_is_zero() -> None:
    white8 = np.full((1, 1, 3), 255, np.uint8)
    white16 = np.full((1, 1, 3), 65535, np.uint16)
    assert to_unit_float(white8)[0, 0, 0] == to_unit_float(white16)[0, 0, 0]
    assert to_unit_float(white8)[0, 0, 0] == np.float32(65535 / 65536)
    assert to_unit_float(np.zeros((1, 1, 3), np.uint8)).max() == 0.0


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.int32), np.zeros((2, 2), np.uint8)],
)
def test_other_dtypes_and_shapes_are_refused(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected"):
        to_unit_float(pixels)
