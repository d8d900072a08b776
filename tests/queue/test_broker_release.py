"""Broker.release: a draining worker hands its job back without spending an attempt."""

from __future__ import annotations

import pytest

from service.queue import Broker, Delivery, JobRecord, JobState
from service.queue.jobs import JobParams, StageTimings
from service.storage import input_name, result_name

pytestmark = pytest.mark.anyio

BLOBS = [b"short", b"middle", b"long"]
PARAMS = JobParams(exposure_values=(-2.0, 0.0, 2.0), names=("a", "b", "c"))


async def _finish(broker: Broker, delivery: Delivery) -> bool:
    broker.store.put(result_name(delivery.job_id), b"exr")
    return await broker.complete(delivery, StageTimings(inference=1.0), 3, 2)


async def _running(broker: Broker, consumer: str = "w1") -> tuple[JobRecord, Delivery]:
    job = await broker.submit(PARAMS, BLOBS)
    delivery = await broker.receive(consumer, block_ms=0)
    assert delivery is not None
    assert await broker.start(delivery, worker_id=consumer, engine="torch") is not None
    return job, delivery


async def test_released_job_is_queued_again_with_its_attempt_given_back(broker: Broker) -> None:
    job, delivery = await _running(broker)

    assert await broker.release(delivery) is JobState.QUEUED

    record = await broker.get(job.id)
    assert record is not None
    assert record.status is JobState.QUEUED
    assert record.attempts == 0
    assert record.worker is None and record.started_at is None
    assert await broker.queue_depth() == 1
    assert [broker.store.read(input_name(job.id, i)) for i in range(3)] == BLOBS


async def test_released_job_goes_to_the_next_worker_at_once(broker: Broker) -> None:
    job, delivery = await _running(broker)
    await broker.release(delivery)

    again = await broker.receive("w2", block_ms=0)

    assert again is not None and again.job_id == job.id
    assert again.consumer == "w2" and again.redelivered
    assert again.attempts == 1


async def test_releasing_does_not_exhaust_attempts(broker: Broker) -> None:
    job, delivery = await _running(broker)
    for _ in range(broker.settings.max_attempts + 1):
        await broker.release(delivery)
        again = await broker.receive("w2", block_ms=0)
        assert again is not None
        delivery = again
        assert await broker.start(delivery, worker_id="w2", engine="torch") is not None

    assert await _finish(broker, delivery)
    record = await broker.get(job.id)
    assert record is not None and record.status is JobState.SUCCEEDED
    assert await broker.dead_letter_depth() == 0


async def test_release_of_a_final_job_changes_nothing(broker: Broker) -> None:
    job, delivery = await _running(broker)
    assert await _finish(broker, delivery)

    assert await broker.release(delivery) is JobState.SUCCEEDED

    record = await broker.get(job.id)
    assert record is not None and record.status is JobState.SUCCEEDED
    assert await broker.receive("w2", block_ms=0) is None


async def test_released_job_cancelled_meanwhile_is_never_run_again(broker: Broker) -> None:
    job, delivery = await _running(broker)
    await broker.cancel(job.id)  # running: only flagged

    await broker.release(delivery)

    assert await broker.receive("w2", block_ms=0) is None
    record = await broker.get(job.id)
    assert record is not None and record.status is JobState.CANCELLED
