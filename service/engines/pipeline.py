"""Exposure set in, HDR frame out: preprocessing, tiling, batched engine calls, blending.

:func:`reconstruct` is what the worker runs; :class:`ModelPredictor` wraps a served model
as the ``Predictor`` that ``service.quality.evaluation`` scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.engines.base import Engine, TileBatch
from service.engines.registry import ServedModel
from service.engines.tiling import TileBlender, TilePlan
from service.exposures import ExposureSet
from service.quality.evaluation import pad_exposures

#: Called after every engine call with (tiles done, tiles total); raising stops the run.
ProgressCallback = Callable[[int, int], None]


class EngineTurn(Protocol):
    """Brackets a run's engine calls, for a caller that shares the engine between runs."""

    def enter(self) -> None:
        """Called once the first tile batch is built, before the first engine call; may
        block until the engine is free, or raise to stop the run."""

    def leave(self) -> None:
        """Called once after the last engine call returns (before its tiles are
        blended), or when the run ends early after ``enter``."""


def reconstruct(
    engine: Engine,
    exposures: ExposureSet,
    plan: TilePlan,
    batch: int = 1,
    on_progress: ProgressCallback | None = None,
    turn: EngineTurn | None = None,
) -> np.ndarray:
    """Run ``engine`` over ``plan``'s tiles of ``exposures``: ``H x W x 3`` float32.

    With ``turn``, the engine calls happen between ``turn.enter()`` and ``turn.leave()``:
    building the first batch and blending the last happen outside, so that another
    run's engine calls can overlap them.

    Each batch carries only its tiles' raw crops (preprocessing is per pixel, so building
    the input per tile equals cropping the full-frame input): memory stays proportional
    to the tile batch, and the engine preprocesses on its own device.
    """
    if (plan.height, plan.width) != (exposures.height, exposures.width):
        raise ValueError(
            f"plan is for {plan.width}x{plan.height}, exposures are"
            f" {exposures.width}x{exposures.height}"
        )
    blender = TileBlender(plan)
    done = 0
    batches = list(plan.batches(batch))
    inside = False
    try:
        for i, tiles in enumerate(batches):
            frames = np.stack(
                [exposures.raw_crop(t.y, t.x, plan.tile_h, plan.tile_w) for t in tiles]
            )
            if turn is not None and i == 0:
                turn.enter()
                inside = True
            outputs = engine.run(TileBatch(frames, exposures.evs))
            if turn is not None and i == len(batches) - 1:
                inside = False
                turn.leave()
            for tile, prediction in zip(tiles, outputs, strict=True):
                blender.add(tile, prediction)
            done += len(tiles)
            if on_progress is not None:
                on_progress(done, len(plan))
    finally:
        if inside and turn is not None:
            turn.leave()
    return blender.result()


@dataclass
class ModelPredictor:
    """A served model as a ``Predictor``: tiles, batches, optional official padding."""

    served: ServedModel
    tile_size: int | None = None
    """Tile edge; ``None``: the model's own, ``0``: the whole frame at once."""
    tile_overlap: int | None = None
    """Overlap between tiles; ``None``: the model's own."""
    tile_batch: int | None = None
    """Tiles per engine call; ``None``: the model's own."""
    pad_to: int = 0
    """Reflect-pad frames to a multiple of this first (the official test: 128)."""
    on_progress: ProgressCallback | None = None

    def _geometry(self) -> tuple[int | None, int, int]:
        size = self.served.tile_size if self.tile_size is None else self.tile_size
        overlap = self.served.tile_overlap if self.tile_overlap is None else self.tile_overlap
        return (size or None), (overlap if size else 0), (self.tile_batch or self.served.tile_batch)

    def describe(self) -> dict[str, object]:
        """How frames are run: tile size (None: whole frames), overlap, batch, padding."""
        size, overlap, batch = self._geometry()
        return {
            "tile_size": size,
            "tile_overlap": overlap,
            "tile_batch": batch,
            "pad_to": self.pad_to,
        }

    def plan(self, height: int, width: int) -> TilePlan:
        """The tile plan for a (padded) frame of this size."""
        size, overlap, _ = self._geometry()
        return TilePlan.build(height, width, size, overlap)

    def __call__(self, exposures: ExposureSet) -> np.ndarray:
        padded = pad_exposures(exposures, self.pad_to)
        hdr = reconstruct(
            self.served.engine,
            padded,
            self.plan(padded.height, padded.width),
            self._geometry()[2],
            self.on_progress,
        )
        return hdr[: exposures.height, : exposures.width]
