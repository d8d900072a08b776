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
from dataclasses import dataclass

import numpy as np
import torch

from service.errors import InvalidExposureSet

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


@dataclass(frozen=True)
class TileBatch:
    """What every engine receives: the raw crops of a batch of tiles and their EV stops.

    The frames stay as stored 16-bit values (8-bit frames widened by 257, which maps to
    the same unit floats as ``imaging.to_unit_float``), 18 bytes per pixel instead of the
    72 of the float32 model input, so an engine on a GPU can ship them over and build the
    input there (``TorchEngine`` does); others call ``model_input()``.
    """

    frames: np.ndarray
    """``(B, 3, h, w, 3)`` uint16: exposures short to long, RGB last."""
    evs: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.frames.ndim != 5 or self.frames.shape[1:2] + self.frames.shape[4:] != (3, 3):
            raise ValueError(f"expected (B, 3, h, w, 3) frames, got {self.frames.shape}")
        if self.frames.dtype != np.uint16:
            raise ValueError(f"expected uint16 frames, got {self.frames.dtype}")

    @property
    def size(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[2])

    @property
    def width(self) -> int:
        return int(self.frames.shape[3])

    @classmethod
    def blank(cls, batch: int, height: int, width: int) -> TileBatch:
        """A mid-grey batch for warm-ups (the shape is what matters)."""
        frames = np.full((batch, EXPOSURES, height, width, 3), 1 << 15, dtype=np.uint16)
        return cls(frames, (0.0, 2.0, 4.0))

    def model_input(self) -> np.ndarray:
        """``(B, 18, h, w)`` float32: the official preprocessing of every tile."""
        unit = (self.frames.astype(np.float64) / _UNIT).astype(np.float32)
        return np.concatenate([build_model_input(list(tile), self.evs) for tile in unit], axis=0)


def build_model_input_torch(frames: torch.Tensor, evs: Sequence[float]) -> torch.Tensor:
    """``build_model_input`` on a device: ``(B, 3, h, w, 3)`` uint16 -> ``(B, 18, h, w)``.

    ``v / 65536`` is exact in float32 and the power is float32 as in the official numpy
    code; only the final division rounds once in float32 instead of via float64, a
    difference of at most one unit in the last place.
    """
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
