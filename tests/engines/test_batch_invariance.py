"""AFUNet on torch CPU fp32 is batch-invariant: a job whose tiles are packed with other
jobs' (``BatchingEngine``) gets bit for bit its solo result.

32-px tiles on purpose: there PyTorch runs the first convolution with one kernel at batch 1
and with oneDNN at batch 2 and more (1.3e-6 apart), so packed and solo calls take
different kernels unless the engine runs every tile alone.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from service.engines.base import EngineWrapper, TileBatch
from service.engines.batching import BatchingEngine
from service.engines.pipeline import reconstruct
from service.engines.tiling import TilePlan
from service.engines.torch_engine import TorchEngine
from service.exposures import ExposureSet
from service.model.checkpoint import load_afunet
from tests.factories import GOLDEN_CHECKPOINT, bracket_frames

TILE, OVERLAP, TILE_BATCH = 32, 8, 4
EVS = (-2.0, 0.0, 2.0)
#: (height, width) of each job's frame: 1, 3 (48x32 in 32-px tiles) and 2 tiles.
FRAMES = [(32, 32), (32, 72), (32, 48)]


class CountingEngine(EngineWrapper):
    """``engine`` recording the tile count of every call."""

    def __init__(self, engine: TorchEngine) -> None:
        super().__init__(engine)
        self.sizes: list[int] = []

    def run(self, batch: TileBatch) -> np.ndarray:
        self.sizes.append(batch.size)
        return self.engine.run(batch)


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    return TorchEngine(load_afunet(GOLDEN_CHECKPOINT), torch.device("cpu"), "fp32")


def jobs() -> list[tuple[ExposureSet, TilePlan]]:
    out = []
    for seed, (height, width) in enumerate(FRAMES):
        frames = tuple(bracket_frames(height, width, EVS, seed=seed))
        exposures = ExposureSet(frames, EVS, ("short", "mid", "long"))
        out.append((exposures, TilePlan.build(height, width, TILE, OVERLAP)))
    return out


def test_cpu_engine_says_it_is_batch_invariant(engine: TorchEngine) -> None:
    assert engine.batch_invariant
    one = engine.run(TileBatch(np.stack(bracket_frames(TILE, TILE, EVS, seed=7))[None], EVS))
    others = np.stack([bracket_frames(TILE, TILE, EVS, seed=s) for s in range(3)])
    for position in range(4):
        frames = np.insert(others, position, np.stack(bracket_frames(TILE, TILE, EVS, seed=7)), 0)
        packed = engine.run(TileBatch(frames, EVS))
        assert np.array_equal(packed[position], one[0])  # any batch size, any position


def test_packed_afunet_jobs_equal_their_solo_runs_bit_for_bit(engine: TorchEngine) -> None:
    work = jobs()
    assert [len(plan) for _, plan in work] == [1, 3, 2]
    solo_engine = CountingEngine(engine)
    solo = [reconstruct(solo_engine, e, plan, TILE_BATCH) for e, plan in work]
    assert solo_engine.sizes == [1, 3, 2]

    packed_engine = CountingEngine(engine)
    batcher = BatchingEngine(packed_engine, max_tiles=TILE_BATCH, max_delay=2.0)
    packed: dict[int, np.ndarray] = {}

    def job(i: int) -> None:
        exposures, plan = work[i]
        packed[i] = reconstruct(batcher, exposures, plan, TILE_BATCH)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(packed_engine.sizes) == 6
    assert len(packed_engine.sizes) < 3  # tiles of different jobs shared a call
    for i, alone in enumerate(solo):
        assert packed[i].dtype == alone.dtype == np.float32
        assert np.array_equal(packed[i], alone), f"job {i}"  # bit for bit
