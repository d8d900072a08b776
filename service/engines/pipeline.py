"""Exposure set in, HDR frame out: preprocessing, tiling, batched engine calls, blending."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.engines.base import Engine
from service.engines.tiling import TileBlender, TilePlan
from service.exposures import ExposureSet
from service.model.preprocess import TileBatch

#: Called after every engine call with (tiles done, tiles total); raising stops the run.
ProgressCallback = Callable[[int, int], None]


def reconstruct(
    engine: Engine,
    exposures: ExposureSet,
    plan: TilePlan,
    batch: int = 1,
    on_progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Run ``engine`` over ``plan``'s tiles of ``exposures``: ``H x W x 3`` float32.

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
    for tiles in plan.batches(batch):
        frames = np.stack([exposures.raw_crop(t.y, t.x, plan.tile_h, plan.tile_w) for t in tiles])
        outputs = engine.run(TileBatch(frames, exposures.evs))
        for tile, prediction in zip(tiles, outputs, strict=True):
            blender.add(tile, prediction)
        done += len(tiles)
        if on_progress is not None:
            on_progress(done, len(plan))
    return blender.result()
