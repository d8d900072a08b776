"""Tile plans and seam-free blending, so a frame of any size runs in bounded memory.

Tiles all share one shape (batched engine calls, one cached window layout or compiled
engine), cover the frame with at least ``overlap`` pixels between neighbours, and the last
tile of a row or column is clamped to end on the frame edge rather than padded. Each tile's
prediction is weighted by a separable raised-cosine ramp over ``overlap`` pixels at its
inner edges (no ramp on frame edges), and the sum is normalised by the summed weights: in
an overlap of exactly ``overlap`` pixels the two ramps are ``sin^2`` and ``cos^2`` of the
same angle and sum to one, so the blend is a smooth cross-fade with no visible seam.
A frame that fits in one tile is one tile with unit weights: exactly the full-frame result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Tile:
    """A tile's top-left corner in the frame; all tiles of a plan share one shape."""

    y: int
    x: int


def _starts(size: int, tile: int, overlap: int) -> tuple[int, ...]:
    if size <= tile:
        return (0,)
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return tuple(starts)


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    weights = np.ones(length, dtype=np.float32)
    if overlap <= 0:
        return weights
    n = min(overlap, length)
    rise = np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / overlap).astype(np.float32) ** 2
    if ramp_start:
        weights[:n] = np.minimum(weights[:n], rise)
    if ramp_end:
        weights[length - n :] = np.minimum(weights[length - n :], rise[::-1])
    return weights


def tile_count(height: int, width: int, tile_size: int | None, overlap: int) -> int:
    """How many tiles :meth:`TilePlan.build` cuts the frame into, without building it
    (the API prices a job by this before accepting it)."""
    if tile_size is None:
        return 1
    return len(_starts(height, min(tile_size, height), overlap)) * len(
        _starts(width, min(tile_size, width), overlap)
    )


@dataclass(frozen=True)
class TilePlan:
    """How one ``height x width`` frame is cut into equally shaped tiles."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    tiles: tuple[Tile, ...]

    @classmethod
    def build(cls, height: int, width: int, tile_size: int | None, overlap: int) -> TilePlan:
        """Plan for ``tile_size`` tiles (``None``: the whole frame as a single tile)."""
        if height < 1 or width < 1:
            raise ValueError(f"frame must be non-empty, got {width}x{height}")
        if tile_size is None:
            tile_h, tile_w, overlap = height, width, 0
        else:
            if tile_size % 8 or tile_size <= 0:
                raise ValueError(f"tile size must be a positive multiple of 8, got {tile_size}")
            if overlap < 0 or 2 * overlap >= tile_size:
                raise ValueError(f"tile overlap must be in [0, {tile_size // 2}), got {overlap}")
            tile_h, tile_w = min(tile_size, height), min(tile_size, width)
        tiles = tuple(
            Tile(y, x)
            for y in _starts(height, tile_h, overlap)
            for x in _starts(width, tile_w, overlap)
        )
        return cls(height, width, tile_h, tile_w, overlap, tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    def batches(self, size: int) -> Iterator[tuple[Tile, ...]]:
        """Tiles in groups of at most ``size`` (the last group may be smaller)."""
        for i in range(0, len(self.tiles), size):
            yield self.tiles[i : i + size]

    @cached_property
    def _row_ramps(self) -> dict[int, np.ndarray]:
        return {
            y: _ramp(self.tile_h, self.overlap, y > 0, y + self.tile_h < self.height)
            for y in {t.y for t in self.tiles}
        }

    @cached_property
    def _col_ramps(self) -> dict[int, np.ndarray]:
        return {
            x: _ramp(self.tile_w, self.overlap, x > 0, x + self.tile_w < self.width)
            for x in {t.x for t in self.tiles}
        }

    def weights(self, tile: Tile) -> np.ndarray:
        """``(tile_h, tile_w)`` blending weights of ``tile``, all > 0."""
        return self._row_ramps[tile.y][:, None] * self._col_ramps[tile.x][None, :]


class TileBlender:
    """Accumulates weighted tile predictions into one ``H x W x 3`` float32 frame."""

    def __init__(self, plan: TilePlan) -> None:
        self.plan = plan
        self._sum = np.zeros((plan.height, plan.width, 3), dtype=np.float32)
        self._weight = np.zeros((plan.height, plan.width), dtype=np.float32)

    def add(self, tile: Tile, prediction: np.ndarray) -> None:
        """Add a ``(3, tile_h, tile_w)`` prediction at its place in the frame."""
        h, w = self.plan.tile_h, self.plan.tile_w
        weights = self.plan.weights(tile)
        rows, cols = slice(tile.y, tile.y + h), slice(tile.x, tile.x + w)
        self._sum[rows, cols] += prediction.transpose(1, 2, 0) * weights[..., None]
        self._weight[rows, cols] += weights

    def result(self) -> np.ndarray:
        """The blended frame; consumes the blender's buffers."""
        out = self._sum
        out /= self._weight[..., None]
        return out
