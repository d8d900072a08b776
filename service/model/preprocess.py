"""The official AFUNet input: 18 channels built from three LDR exposures.

Per exposure ``i`` (short to long, the middle one the reference):
``hdr_i = ldr_i ** 2.2 / (2 ** ev_i + 1e-8)`` and the channels are ``[hdr_i, ldr_i]``;
the three are concatenated in order. ``ldr`` is the unit-range float image
(``uint16 / 2**16`` for the official 16-bit data). The arithmetic follows the official
numpy pipeline step for step (float32 power, float64 division, float32 result) so that our
tensor equals the official one to the last bit or so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidExposureSet

GAMMA = 2.2
EXPOSURES = 3
_EPS = 1e-8


def build_model_input(ldrs: Sequence[np.ndarray], evs: Sequence[float]) -> np.ndarray:
    """``(1, 18, H, W)`` float32 input from three ``HxWx3`` unit-range LDR images.

    Numpy, not torch: every engine (ONNX Runtime, TensorRT) takes it as it is.

    ``evs`` are validated EV stops (see ``service.exposures.check_exposure_values``).
    """
    values = tuple(float(v) for v in evs)
    if len(ldrs) != EXPOSURES or len(values) != EXPOSURES:
        raise InvalidExposureSet(
            f"expected {EXPOSURES} exposures and EVs, got {len(ldrs)} and {len(values)}"
        )
    shapes = {tuple(x.shape) for x in ldrs}
    if len(shapes) != 1:
        raise InvalidExposureSet(f"exposures differ in size: {[x.shape for x in ldrs]}")
    channels = []
    for ldr, ev in zip(ldrs, values, strict=True):
        if ldr.ndim != 3 or ldr.shape[2] != 3:
            raise InvalidExposureSet(f"expected HxWx3 RGB arrays, got shape {ldr.shape}")
        ldr = np.asarray(ldr, dtype=np.float32)
        hdr = (ldr**GAMMA / (np.float64(2.0) ** ev + _EPS)).astype(np.float32)
        channels.append(np.concatenate((hdr, ldr), axis=2))
    stacked = np.concatenate(channels, axis=2).transpose(2, 0, 1)
    return np.ascontiguousarray(stacked)[None]
