"""The small interface every inference backend implements, and the batch it takes.

An engine turns a batch of tiles (raw crops plus EV stops, :class:`TileBatch`) into HDR
tiles. Tiling and blending live outside it (``pipeline.py``); the engine builds the model
input where it computes, so a GPU engine preprocesses on the GPU.

Nothing here imports torch: the weight-free classical engine, which needs only numpy,
imports the interface and its argument type from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.model.preprocess import EXPOSURES, build_model_input_raw


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
        return build_model_input_raw(self.frames, self.evs)


class Engine(Protocol):
    """A loaded model on one backend and device."""

    backend: str
    """Which backend runs: ``torch``, ``onnxruntime``, ``tensorrt``."""
    precision: str
    """Arithmetic of the network body: ``fp32``, ``fp16`` or ``bf16``."""
    batch_invariant: bool
    """Whether every tile's output is bit for bit the same in any batch (any size, any
    position, any neighbours). Then packing tiles of several jobs into one call
    (:class:`~service.engines.batching.BatchingEngine`) leaves each job's result exactly
    its solo result; otherwise a packed job may differ in the last float bits."""

    @property
    def device(self) -> str:
        """Where it runs, e.g. ``cpu`` or ``cuda:0`` (read-only: fixed when it opens)."""
        ...

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        """Run once at the serving shape so the first job pays no compilation or caching."""
        ...

    def run(self, batch: TileBatch) -> np.ndarray:
        """A batch of tiles to ``(B, 3, h, w)`` float32 linear HDR.

        ``batch.model_input()`` gives the official 18-channel input on the host; an engine
        on a GPU may build it there from ``batch.frames`` instead.
        """
        ...


class EngineWrapper:
    """An engine in front of another (metering, cross-job packing): the same backend,
    precision, batch invariance, device and warm-up; a subclass adds to :meth:`run`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.precision = engine.precision
        self.batch_invariant = engine.batch_invariant

    @property
    def device(self) -> str:
        return self.engine.device

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        self.engine.warmup(tile_h, tile_w, batch)

    def run(self, batch: TileBatch) -> np.ndarray:
        return self.engine.run(batch)
