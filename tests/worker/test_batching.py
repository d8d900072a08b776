"""Cross-job tile batching (``batch_delay_ms``): small jobs share engine calls, and each
job's result is bit for bit its solo result (CPU fp32, the classical engine)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.config import Settings
from service.engines.base import TileBatch
from service.engines.batching import BatchingEngine
from service.engines.classical import ClassicalEngine
from service.imaging import decode_exr
from service.queue import Broker, JobState
from service.storage import result_name
from service.worker.models import ModelSet
from tests.factories import bracket_frames, bracket_uploads, job_params
from tests.worker.engines import served
from tests.worker.harness import until, worker_thread

pytestmark = pytest.mark.anyio

JOBS = 8


class CountingEngine(ClassicalEngine):
    """The classical merge, counting its calls and the tiles of each."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def run(self, batch: TileBatch) -> np.ndarray:
        self.sizes.append(batch.size)
        return super().run(batch)


def tile(seed: int, evs: tuple[float, ...] = (-2.0, 0.0, 2.0)) -> TileBatch:
    frames = np.stack(bracket_frames(32, 32, evs, seed=seed))[None]
    return TileBatch(frames, evs)


def test_concurrent_calls_share_engine_calls_and_get_exactly_their_own_tiles() -> None:
    engine = CountingEngine()
    batcher = BatchingEngine(engine, max_tiles=4, max_delay=5.0)
    batches = [tile(seed) for seed in range(4)] + [tile(9, (0.0, 1.0, 2.0))]
    outputs: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        outputs[i] = batcher.run(batches[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    solo = ClassicalEngine()
    for i, batch in enumerate(batches):
        assert np.array_equal(outputs[i], solo.run(batch))
    # Four same-EV tiles fill one call at once; other EV stops never share a call.
    assert sorted(engine.sizes) == [1, 4]


def test_an_engine_error_reaches_every_caller_of_the_call() -> None:
    class Broken(CountingEngine):
        def run(self, batch: TileBatch) -> np.ndarray:
            raise RuntimeError("non-finite values in the tile output")

    batcher = BatchingEngine(Broken(), max_tiles=2, max_delay=5.0)
    errors: list[str] = []

    def call(seed: int) -> None:
        try:
            batcher.run(tile(seed))
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == ["non-finite values in the tile output"] * 2


async def run_jobs(broker: Broker, settings: Settings, engine: CountingEngine) -> list[np.ndarray]:
    """Queue JOBS one-tile jobs (different scenes), then run one worker over them."""
    ids = []
    for seed in range(JOBS):
        uploads = bracket_uploads(48, 64, seed=seed)
        record = await broker.submit(
            job_params(uploads), [data for _, data in uploads], model="classical"
        )
        ids.append(record.id)
    models = ModelSet(
        served={"classical": served("classical", engine, tile_size=64, batch=JOBS)},  # type: ignore[arg-type]
        preferred="classical",
    )
    with worker_thread(settings, models):
        records = [await until(broker, job_id, lambda r: r.status.is_final) for job_id in ids]
    assert [r.status for r in records] == [JobState.SUCCEEDED] * JOBS
    assert all(r.tiles_done == r.tiles_total == 1 for r in records)
    return [decode_exr(broker.store.read(result_name(job_id))) for job_id in ids]


async def test_small_jobs_share_engine_calls_and_each_result_equals_its_solo_result(
    broker: Broker, service_settings: Settings
) -> None:
    service_settings = service_settings.model_copy(update={"max_queue_length": JOBS})
    broker = Broker(broker.redis, service_settings, broker.store)  # room for JOBS at once
    solo_engine = CountingEngine()
    solo_settings = service_settings.model_copy(
        update={"prefetch_jobs": 0, "batch_delay_ms": 0.0, "worker_id": "solo"}
    )
    solo = await run_jobs(broker, solo_settings, solo_engine)

    batched_engine = CountingEngine()
    batching = service_settings.model_copy(
        update={"prefetch_jobs": JOBS - 1, "batch_delay_ms": 500.0}
    )
    batched = await run_jobs(broker, batching, batched_engine)

    assert solo_engine.sizes == [JOBS] + [1] * JOBS  # warm-up at the tile batch, then solo
    warmup, *calls = batched_engine.sizes
    assert warmup == JOBS and sum(calls) == JOBS
    assert len(calls) <= JOBS // 3  # at least 3x fewer engine calls
    for alone, together in zip(solo, batched, strict=True):
        assert alone.dtype == together.dtype == np.float32
        assert np.array_equal(alone, together)  # bit for bit
    assert not np.array_equal(solo[0], solo[1])  # different scenes, different results
