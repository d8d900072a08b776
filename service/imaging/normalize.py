"""Stored integer samples to the unit-range floats AFUNet reads.

The official code divides 16-bit samples by 2**16 in float64 and casts to float32; doing
the same here keeps the service's inputs bit-identical to the reference implementation's.
"""

from __future__ import annotations

import numpy as np

_SCALE = 2.0**16
_EIGHT_TO_SIXTEEN = 257  # 255 * 257 == 65535: the 16-bit value of the same 8-bit level


def widen_to_16bit(pixels: np.ndarray) -> np.ndarray:
    """Stored samples as 16-bit values: uint16 as is, uint8 times 257 (0->0, 255->65535).

    ``to_unit_float(widen_to_16bit(p)) == to_unit_float(p)`` for both depths, so frames of
    mixed depths can share one uint16 array.
    """
    if pixels.dtype == np.uint16:
        return pixels
    if pixels.dtype == np.uint8:
        return pixels.astype(np.uint16) * np.uint16(_EIGHT_TO_SIXTEEN)
    raise ValueError(f"expected uint8 or uint16 pixels, got {pixels.dtype}")


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """H x W x 3 float32 in [0, 1): ``uint16 / 2**16``, and ``uint8 * 257 / 2**16``.

    16-bit samples follow the official AFUNet convention exactly: float64 division by
    2**16, then a cast to float32 (so 65535 maps to 65535/65536, not to 1.0).

    8-bit samples have no official convention. Each 8-bit level ``v`` is first widened to
    the 16-bit value a camera would store for it, ``v * 257`` (the exact bit-replication
    that maps 0 -> 0 and 255 -> 65535), then scaled like 16-bit data. A saturated 8-bit
    pixel therefore lands exactly where a saturated 16-bit pixel does (65535/65536), the
    top of the range the model saw in training; plain ``v / 255`` would put it at 1.0, a
    value 16-bit training data never holds.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 pixels, got shape {pixels.shape}")
    if pixels.dtype == np.uint16:
        wide = pixels.astype(np.float64)
    elif pixels.dtype == np.uint8:
        wide = pixels.astype(np.float64) * _EIGHT_TO_SIXTEEN
    else:
        raise ValueError(f"expected uint8 or uint16 pixels, got {pixels.dtype}")
    return (wide / _SCALE).astype(np.float32)
