"""The small interface every inference backend implements.

An engine turns a batch of preprocessed tiles into HDR tiles. Tiling, blending and
preprocessing live outside it (``pipeline.py``), so a backend is only "run this network
on this array" plus what it needs to get ready.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Engine(Protocol):
    """A loaded model on one backend and device."""

    backend: str
    """Which backend runs: ``torch``, ``onnxruntime``, ``tensorrt``."""
    device: str
    """Where it runs, e.g. ``cpu`` or ``cuda:0``."""
    precision: str
    """Arithmetic of the network body: ``fp32``, ``fp16`` or ``bf16``."""

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        """Run once at the serving shape so the first job pays no compilation or caching."""
        ...

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """``(B, 18, h, w)`` float32 inputs to ``(B, 3, h, w)`` float32 linear HDR."""
        ...
