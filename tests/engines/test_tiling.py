"""Tile plans, blending, and tiled inference against the full-frame model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.engines.base import TileBatch
from service.engines.classical import ClassicalEngine
from service.engines.pipeline import reconstruct
from service.engines.tiling import Tile, TileBlender, TilePlan, tile_count
from service.engines.torch_engine import TorchEngine
from service.exposures import ExposureSet
from tests.factories import GOLDEN_CHECKPOINT, bracket_frames, tile_batch


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    return TorchEngine.from_checkpoint(GOLDEN_CHECKPOINT, "cpu")


def _exposures(height: int, width: int, seed: int = 0) -> ExposureSet:
    return ExposureSet(
        tuple(bracket_frames(height, width, seed=seed)), (-2.0, 0.0, 2.0), ("a", "b", "c")
    )


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(100, 72, 32, 8), (300, 200, 128, 32), (128, 128, 128, 16), (17, 250, 64, 0), (64, 65, 64, 8)],
)
def test_plan_covers_frame_with_equal_tiles_and_overlap(height, width, tile, overlap) -> None:
    plan = TilePlan.build(height, width, tile, overlap)
    covered = np.zeros((height, width), dtype=int)
    for t in plan.tiles:
        assert t.y >= 0 and t.y + plan.tile_h <= height
        assert t.x >= 0 and t.x + plan.tile_w <= width
        covered[t.y : t.y + plan.tile_h, t.x : t.x + plan.tile_w] += 1
    assert covered.min() >= 1
    assert plan.tile_h == min(tile, height) and plan.tile_w == min(tile, width)
    ys = sorted({t.y for t in plan.tiles})
    assert all(b - a <= plan.tile_h - overlap for a, b in itertools.pairwise(ys))


def test_weights_are_positive_and_cross_fade_to_one() -> None:
    plan = TilePlan.build(64, 112, 64, 16)  # x starts 0 and 48: an exact 16-pixel overlap
    assert [t.x for t in plan.tiles] == [0, 48]
    left, right = (plan.weights(t) for t in plan.tiles)
    assert (left > 0).all() and (right > 0).all()
    assert np.allclose(left[:, 48:64] + right[:, 0:16], 1.0, atol=1e-6)
    assert (left[:, :48] == 1).all() and (right[:, 16:] == 1).all()  # frame edges: no ramp


def test_blending_tiles_of_one_image_gives_that_image_without_seams() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((3, 150, 230)).astype(np.float32)
    plan = TilePlan.build(150, 230, 64, 24)
    blender = TileBlender(plan)
    for t in plan.tiles:
        blender.add(t, image[:, t.y : t.y + plan.tile_h, t.x : t.x + plan.tile_w])
    assert np.abs(blender.result() - image.transpose(1, 2, 0)).max() <= 1e-6


@pytest.mark.parametrize("size", [(72, 100), (64, 64)])
def test_frame_inside_one_tile_equals_full_frame_exactly(engine, size) -> None:
    exposures = _exposures(*size)
    full = engine.run(tile_batch(exposures))[0]
    tiled = reconstruct(engine, exposures, TilePlan.build(*size, 128, 16), batch=2)
    assert np.array_equal(tiled, full.transpose(1, 2, 0))


def test_no_tile_plan_is_the_full_frame(engine) -> None:
    exposures = _exposures(40, 56)
    plan = TilePlan.build(40, 56, None, 32)
    assert len(plan) == 1 and (plan.tile_h, plan.tile_w) == (40, 56)
    full = engine.run(tile_batch(exposures))[0]
    assert np.array_equal(reconstruct(engine, exposures, plan), full.transpose(1, 2, 0))


def test_tiled_inference_stays_close_to_full_frame_and_reports_progress(engine) -> None:
    exposures = _exposures(96, 120, seed=5)
    plan = TilePlan.build(96, 120, 64, 16)
    seen: list[tuple[int, int]] = []
    tiled = reconstruct(
        engine, exposures, plan, batch=3, on_progress=lambda d, t: seen.append((d, t))
    )
    full = reconstruct(engine, exposures, TilePlan.build(96, 120, None, 0))
    assert seen == [(3, 6), (6, 6)]
    assert tiled.shape == (96, 120, 3) and np.isfinite(tiled).all()
    mu = lambda x: np.log1p(5000 * x) / np.log1p(5000)  # noqa: E731
    mse = np.mean((mu(tiled) - mu(full)) ** 2)
    assert 10 * np.log10(1 / mse) > 30  # channel attention spans the tile, not the frame


def test_batch_sizes_give_the_same_result(engine) -> None:
    exposures = _exposures(80, 80, seed=2)
    plan = TilePlan.build(80, 80, 48, 16)
    one = reconstruct(engine, exposures, plan, batch=1)
    four = reconstruct(engine, exposures, plan, batch=4)
    assert np.abs(one - four).max() <= 1e-5


@pytest.mark.parametrize(("tile", "overlap"), [(60, 8), (0, 0), (64, 32), (64, -1)])
def test_bad_tile_geometry_is_refused(tile, overlap) -> None:
    with pytest.raises(ValueError, match="tile"):
        TilePlan.build(100, 100, tile, overlap)


def test_tile_positions_are_plain_values() -> None:
    assert TilePlan.build(8, 8, 8, 0).tiles == (Tile(0, 0),)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [
        (48, 64, None, 0),
        (4000, 4000, 256, 32),
        (4000, 4000, 72, 32),
        (100, 33, 32, 8),
        (8, 8, 64, 8),
    ],
)
def test_tile_count_is_the_plans_length_without_building_it(
    height: int, width: int, tile: int | None, overlap: int
) -> None:
    assert tile_count(height, width, tile, overlap) == len(
        TilePlan.build(height, width, tile, overlap)
    )


class _Recorder:
    """An engine and an engine turn that log what the pipeline calls, in order."""

    backend, device, precision = "classical", "cpu", "fp32"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.inner = ClassicalEngine()

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        """Nothing to warm."""

    def run(self, batch: TileBatch) -> np.ndarray:
        self.events.append(f"run {batch.size}")
        return self.inner.run(batch)

    def enter(self) -> None:
        self.events.append("enter")

    def leave(self) -> None:
        self.events.append("leave")


def test_engine_turn_brackets_exactly_the_engine_calls() -> None:
    recorder = _Recorder()
    exposures = _exposures(80, 80, seed=3)
    plan = TilePlan.build(80, 80, 48, 16)  # 4 tiles: batches of 3 and 1
    reported: list[int] = []

    def progress(done: int, total: int) -> None:
        recorder.events.append(f"progress {done}/{total}")
        reported.append(done)

    hdr = reconstruct(recorder, exposures, plan, 3, progress, turn=recorder)

    # The turn is left as soon as the last call returns, before its tiles are blended.
    assert recorder.events == [
        "enter",
        "run 3",
        "progress 3/4",
        "run 1",
        "leave",
        "progress 4/4",
    ]
    assert np.array_equal(hdr, reconstruct(ClassicalEngine(), exposures, plan, 3))


def test_a_run_stopped_between_batches_leaves_its_engine_turn() -> None:
    recorder = _Recorder()
    plan = TilePlan.build(80, 80, 48, 16)

    def stop(done: int, total: int) -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        reconstruct(recorder, _exposures(80, 80), plan, 1, stop, turn=recorder)
    assert recorder.events == ["enter", "run 1", "leave"]
