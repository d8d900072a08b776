"""The small interface every inference backend implements.

An engine turns a batch of tiles (raw crops plus EV stops) into HDR tiles. Tiling and
blending live outside it (``pipeline.py``); the engine builds the model input where it
computes, so a GPU engine preprocesses on the GPU.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from service.model.preprocess import TileBatch


class Engine(Protocol):
    """A loaded model on one backend and device."""

    backend: str
    """Which backend runs: ``torch``, ``onnxruntime``, ``tensorrt``."""
    precision: str
    """Arithmetic of the network body: ``fp32``, ``fp16`` or ``bf16``."""

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
