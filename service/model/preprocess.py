"""The official AFUNet input: 18 channels built from three LDR exposures.

Per exposure ``i`` (short to long, the middle one the reference):
``hdr_i = ldr_i ** 2.2 / (2 ** ev_i + 1e-8)`` and the channels are ``[hdr_i, ldr_i]``;
the three are concatenated in order. ``ldr`` is the unit-range float image
(``uint16 / 2**16`` for the official 16-bit data). The arithmetic follows the official
numpy pipeline step for step (float32 power, float64 division, float32 result) so that our
tensor equals the official one to the last bit or so.

The module imports torch only inside :func:`build_model_input_torch`, so the numpy path
(and with it the weight-free classical engine) runs where torch is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from service.errors import InvalidExposureSet

if TYPE_CHECKING:
    import torch

GAMMA = 2.2
EXPOSURES = 3
_EPS = 1e-8
_UNIT = 2.0**16


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


def build_model_input_raw(frames: np.ndarray, evs: Sequence[float]) -> np.ndarray:
    """``build_model_input`` of stored frames: ``(B, 3, h, w, 3)`` uint16 -> ``(B, 18, h, w)``.

    The frames are as stored (``uint16 / 2**16`` is the unit float, exactly); each tile
    goes through the official numpy arithmetic. :func:`build_model_input_torch` is the
    same on a device.
    """
    unit = (frames.astype(np.float64) / _UNIT).astype(np.float32)
    return np.concatenate([build_model_input(list(tile), evs) for tile in unit], axis=0)


def build_model_input_torch(frames: torch.Tensor, evs: Sequence[float]) -> torch.Tensor:
    """``build_model_input`` on a device: ``(B, 3, h, w, 3)`` uint16 -> ``(B, 18, h, w)``.

    ``v / 65536`` is exact in float32 and the power is float32 as in the official numpy
    code; only the final division rounds once in float32 instead of via float64, a
    difference of at most one unit in the last place.
    """
    import torch

    ldr = frames.to(torch.float32) / _UNIT  # (B, 3, h, w, 3)
    times = torch.tensor(
        [2.0**ev + _EPS for ev in evs], dtype=torch.float32, device=frames.device
    ).view(1, EXPOSURES, 1, 1, 1)
    hdr = ldr**GAMMA / times
    # Channels per exposure: [hdr_rgb, ldr_rgb], exposures concatenated short to long.
    stacked = torch.stack((hdr, ldr), dim=2)  # (B, 3, 2, h, w, 3)
    return stacked.permute(0, 1, 2, 5, 3, 4).reshape(
        frames.shape[0], 6 * EXPOSURES, frames.shape[2], frames.shape[3]
    )
