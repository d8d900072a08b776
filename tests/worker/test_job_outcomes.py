"""How a worker ends each kind of job: failures retried then dead-lettered, bad input
failed at once, cancellation, drain on stop. Workers run in-process on test engines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import anyio
import pytest

from service.config import Settings
from service.errors import EngineFault, EngineUnavailable, InvalidExposureSet, ServiceError
from service.queue import Broker, JobRecord, JobState
from service.worker.faults import is_engine_fault
from service.worker.models import ModelSet
from service.worker.runner import EXIT_OK, Worker
from tests.factories import bracket_uploads, job_params
from tests.worker.engines import CUDA_FAULT, FailingEngine, ReferenceEngine, served, serving_only
from tests.worker.harness import until, worker_thread

pytestmark = pytest.mark.anyio


async def submit(
    broker: Broker, uploads: list[tuple[str, bytes]] | None = None, **params: Any
) -> str:
    """Queue a job the way the API does (frames short to long, EVs and names in params)."""
    uploads = uploads or bracket_uploads()
    record = await broker.submit(
        job_params(uploads, **params),
        [data for _, data in uploads],
        width=64,
        height=48,
    )
    return record.id


def final(record: JobRecord) -> bool:
    return record.status.is_final


async def test_job_failing_every_attempt_ends_failed_in_the_dead_letter_stream(
    broker: Broker, service_settings: Settings
) -> None:
    job_id = await submit(broker)
    with worker_thread(service_settings, serving_only(FailingEngine())):
        record = await until(broker, job_id, final, timeout=60)

    assert record.status is JobState.FAILED
    assert record.attempts == service_settings.max_attempts == 3
    assert (
        record.error
        == "failed after 3 attempts: RuntimeError: non-finite values in the tile output"
    )
    (dead,) = await broker.dead_letters()
    assert dead["job"] == job_id and dead["attempts"] == "3"
    assert "non-finite values" in dead["reason"]


async def test_undecodable_pixels_fail_at_once_and_the_worker_goes_on(
    broker: Broker, service_settings: Settings
) -> None:
    uploads = bracket_uploads()
    name, data = uploads[1]
    uploads[1] = (name, data[: len(data) // 2])  # header intact, pixel data cut
    engine = ReferenceEngine()
    with worker_thread(service_settings, serving_only(engine)):
        broken = await submit(broker, uploads)
        record = await until(broker, broken, final)
        healthy = await until(broker, await submit(broker), final)

    assert record.status is JobState.FAILED and record.attempts == 1
    assert record.error is not None and name in record.error
    assert await broker.dead_letter_depth() == 1
    assert healthy.status is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        (EngineUnavailable("the backend went away"), 3),
        (InvalidExposureSet("EV stops are not increasing"), 1),
    ],
    ids=["retryable", "not-retryable"],
)
async def test_a_service_error_is_retried_only_when_it_is_retryable(
    broker: Broker, service_settings: Settings, error: ServiceError, attempts: int
) -> None:
    job_id = await submit(broker)
    with worker_thread(service_settings, serving_only(FailingEngine(error))):
        record = await until(broker, job_id, final, timeout=60)

    assert record.status is JobState.FAILED and record.attempts == attempts
    assert record.error is not None and error.message in record.error


async def test_job_for_a_model_the_worker_lacks_never_reaches_it(
    broker: Broker, service_settings: Settings
) -> None:
    """The worker reads only its models' streams: the other model's job stays queued,
    untouched, for a worker that serves it. A record that disagrees with its stream (a
    defect) still fails naming what the worker serves rather than running a wrong model."""
    uploads = bracket_uploads()
    elsewhere = await broker.submit(
        job_params(uploads), [data for _, data in uploads], model="elsewhere"
    )
    disagreeing = await broker.submit(job_params(uploads), [data for _, data in uploads])
    await broker.redis.hset(broker.keys.job(disagreeing.id), "model", "nowhere")
    with worker_thread(service_settings, serving_only(ReferenceEngine())):
        failed = await until(broker, disagreeing.id, final)
        ours = await until(broker, await submit(broker), final)
        waiting = await broker.get(elsewhere.id)

    assert ours.status is JobState.SUCCEEDED
    assert waiting is not None and waiting.status is JobState.QUEUED and waiting.attempts == 0
    assert failed.status is JobState.FAILED and failed.error is not None
    assert "'nowhere' is not served" in failed.error and "it serves: afunet" in failed.error


async def test_stopping_worker_finishes_the_job_in_hand_within_the_drain_time(
    broker: Broker, service_settings: Settings
) -> None:
    job_id = await submit(broker, bracket_uploads(96, 96), tile_size=32)
    with worker_thread(service_settings, serving_only(ReferenceEngine(delay=0.1))) as worker:
        await until(broker, job_id, lambda r: r.tiles_done >= 1)
        worker.request_stop()
        record = await until(broker, job_id, final)

    assert record.status is JobState.SUCCEEDED
    assert worker.exit_code == EXIT_OK


async def test_job_still_running_when_the_drain_ends_is_handed_back_unspent(
    broker: Broker, service_settings: Settings
) -> None:
    short = service_settings.model_copy(update={"drain_seconds": 0.3})
    job_id = await submit(broker, bracket_uploads(128, 128), tile_size=32)
    with worker_thread(short, serving_only(ReferenceEngine(delay=0.2))) as worker:
        await until(broker, job_id, lambda r: r.tiles_done >= 1)
        worker.request_stop()
        record = await until(broker, job_id, lambda r: r.status is JobState.QUEUED)

    assert record.attempts == 0 and record.tiles_done == 0
    assert await broker.queue_depth() == 1
    finisher = short.model_copy(update={"worker_id": "finisher"})
    with worker_thread(finisher, serving_only(ReferenceEngine())):
        done = await until(broker, job_id, final)
    assert done.status is JobState.SUCCEEDED and done.attempts == 1


async def test_live_worker_keeps_a_job_whose_tile_batches_outlast_the_visibility_timeout(
    broker: Broker, service_settings: Settings
) -> None:
    hasty = service_settings.model_copy(
        update={"visibility_timeout_seconds": 0.5, "heartbeat_interval_seconds": 0.1}
    )
    slow = ReferenceEngine(delay=1.5)  # each tile batch outlasts the thief's polling too
    idle = ReferenceEngine()
    job_id = await submit(broker, bracket_uploads(48, 64), tile_size=40)  # 2 tiles
    with worker_thread(hasty, serving_only(slow)):
        await until(broker, job_id, lambda r: r.status is JobState.RUNNING)
        other = hasty.model_copy(update={"worker_id": "would-be-thief"})
        with worker_thread(other, serving_only(idle)):
            record = await until(broker, job_id, final)

    assert record.status is JobState.SUCCEEDED
    assert record.attempts == 1 and record.worker == hasty.worker_id
    assert idle.calls == 1  # its warm-up only


async def test_a_hung_job_is_let_go_and_redelivered_even_to_its_own_worker(
    broker: Broker, service_settings: Settings
) -> None:
    """A job without progress for job_stall_seconds is no longer kept: its claim lapses
    and the next take-over, by this same worker too (the only one here), starts it
    again; the worker's skipping of the jobs it runs does not cover a hung one."""
    impatient = service_settings.model_copy(
        update={
            "visibility_timeout_seconds": 0.5,
            "heartbeat_interval_seconds": 0.1,
            "job_stall_seconds": 1.0,
            "prefetch_jobs": 1,
        }
    )
    engine = ReferenceEngine()
    with worker_thread(impatient, serving_only(engine)):
        engine.delay = 4.0  # after its warm-up: the first tile batch hangs past the limit
        job_id = await submit(broker, bracket_uploads(48, 64), tile_size=40)  # 2 tiles
        again = await until(broker, job_id, lambda r: r.attempts >= 2, 20)
        engine.delay = 0.0
        assert again.worker == impatient.worker_id
        record = await until(broker, job_id, final, 30)
    assert record.status is JobState.SUCCEEDED


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(CUDA_FAULT),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 700"),
        EngineFault("TensorRT context lost"),
        type("OutOfMemoryError", (RuntimeError,), {})("out of memory"),
    ],
)
async def test_device_failures_are_engine_faults(error: Exception) -> None:
    assert is_engine_fault(error)


async def test_engine_fault_is_recognised_through_its_cause() -> None:
    try:
        try:
            raise RuntimeError(CUDA_FAULT)
        except RuntimeError as inner:
            raise ValueError("tile 3 failed") from inner
    except ValueError as outer:
        assert is_engine_fault(outer)


@pytest.mark.parametrize(
    "error",
    [ValueError("bad tile shape"), MemoryError(), RuntimeError("non-finite values")],
)
async def test_ordinary_failures_are_not_engine_faults(error: Exception) -> None:
    assert not is_engine_fault(error)


def test_default_model_prefers_the_configured_one_then_classical_then_any() -> None:
    engine = ReferenceEngine()
    both = ModelSet(
        served={"afunet": served("afunet", engine), "classical": served("classical", engine)},
        preferred="afunet",
    )
    assert both.default == "afunet"
    no_afunet = ModelSet(
        served={"classical": served("classical", engine), "zeta": served("zeta", engine)},
        unavailable={"afunet": "no weights"},
        preferred="afunet",
    )
    assert no_afunet.default == "classical"
    only_other = ModelSet(served={"zeta": served("zeta", engine)}, preferred="afunet")
    assert only_other.default == "zeta"
    assert ModelSet(preferred="afunet").default is None


async def test_worker_ends_a_task_even_when_it_swallows_a_cancel() -> None:
    """redis-py sometimes swallows a cancel mid-command; stopping must not hang on it."""

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as redis-py occasionally does
            await anyio.sleep(30)
        await anyio.sleep(30)

    task = asyncio.create_task(stubborn())
    await anyio.sleep(0)
    started = time.monotonic()
    await Worker._end_task(task)
    assert task.cancelled() and time.monotonic() - started < 2
