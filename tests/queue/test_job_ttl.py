"""Job lifetimes: a record lives a full TTL after its last state change, and nothing that
refers to it (uploads, result, cancel flag, idempotency mapping) outlives it.

Most tests put a job where one stands after waiting or running for nearly its whole TTL
(its keys' remaining TTL cut to 1.5 s with PEXPIRE), make one state change, and read the
TTLs back, instead of sleeping for a TTL. Two tests let real time pass with a 2 s TTL
(each step leaves a second of slack for a loaded machine).
Fixture settings: TTL 60 s, visibility timeout 0.5 s, 3 attempts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from service.queue import Broker, Delivery, JobRecord, JobState

pytestmark = pytest.mark.anyio

BLOBS = [b"short exposure", b"middle exposure", b"long exposure"]
PARAMS: dict[str, Any] = {"exposure_values": [-2.0, 0.0, 2.0], "tile_size": 256}
#: What is left of a job's TTL in these tests before its state changes.
NEARLY_EXPIRED_MS = 1500
#: A little over the fixture's visibility timeout.
PAST_VISIBILITY = 0.6


def variant(broker: Broker, **changes: Any) -> Broker:
    return Broker(broker.redis, broker.settings.model_copy(update=changes))


async def submit(broker: Broker, **kwargs: Any) -> JobRecord:
    return await broker.submit(PARAMS, BLOBS, **kwargs)


async def receive(broker: Broker, consumer: str) -> Delivery:
    delivery = await broker.receive(consumer, block_ms=0)
    assert delivery is not None, f"{consumer} received nothing"
    return delivery


async def started(broker: Broker, consumer: str = "w1") -> Delivery:
    """Submit a job (with an idempotency key) and start it on ``consumer``."""
    await submit(broker, idempotency_key="idem")
    delivery = await receive(broker, consumer)
    assert await broker.start(delivery, worker_id=consumer, engine="torch") is not None
    return delivery


async def nearly_expire(broker: Broker, job_id: str) -> None:
    """Leave the job's record and uploads 1.5 s, as after a long wait in the queue or a
    long run without a state change."""
    for key in (broker.keys.job(job_id), broker.keys.inputs(job_id)):
        assert await broker.redis.pexpire(key, NEARLY_EXPIRED_MS), key


async def pttl(broker: Broker, key: str) -> int:
    return int(await broker.redis.pttl(key))


def full(broker: Broker, remaining_ms: int) -> bool:
    """Whether a key's remaining TTL is (nearly) the whole job TTL again."""
    return remaining_ms > (broker.settings.job_ttl_seconds - 5) * 1000


async def assert_nothing_outlives_the_record(broker: Broker, job_id: str) -> None:
    record = await pttl(broker, broker.keys.job(job_id))
    assert record > 0, "the record has no TTL or is gone"
    for key in (
        broker.keys.inputs(job_id),
        broker.keys.result(job_id),
        broker.keys.cancel(job_id),
        broker.keys.idempotency(None, "idem"),
    ):
        remaining = await pttl(broker, key)
        assert remaining != -1, f"{key} never expires"
        assert remaining <= record, f"{key} outlives the record ({remaining} > {record} ms)"


# Each case brings a job to where its change happens, nearly expires it, makes the change,
# and returns the job id and whether the job may run again (then its worker still needs
# the uploads, so they must live on too).
Change = Callable[[Broker], Awaitable[tuple[str, bool]]]


async def _delivery(broker: Broker) -> tuple[str, bool]:
    job = await submit(broker, idempotency_key="idem")
    await nearly_expire(broker, job.id)
    await receive(broker, "w1")
    return job.id, True


async def _start(broker: Broker) -> tuple[str, bool]:
    job = await submit(broker, idempotency_key="idem")
    delivery = await receive(broker, "w1")
    await nearly_expire(broker, job.id)
    assert await broker.start(delivery, worker_id="w1", engine="torch") is not None
    return job.id, True


async def _progress(broker: Broker) -> tuple[str, bool]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await broker.progress(delivery.job_id, 1, 4)
    return delivery.job_id, True


async def _retry(broker: Broker) -> tuple[str, bool]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await broker.fail(delivery, "transient", retry=True) is JobState.QUEUED
    return delivery.job_id, True


async def _release(broker: Broker) -> tuple[str, bool]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await broker.release(delivery) is JobState.QUEUED
    return delivery.job_id, True


async def _redelivery(broker: Broker) -> tuple[str, bool]:
    delivery = await started(broker, "w1")  # w1 then dies
    await anyio.sleep(PAST_VISIBILITY)
    await nearly_expire(broker, delivery.job_id)
    assert (await receive(broker, "w2")).redelivered
    return delivery.job_id, True


async def _complete(broker: Broker) -> tuple[str, bool]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await broker.complete(delivery, b"exr", {}, 3, 2)
    return delivery.job_id, False


async def _fail(broker: Broker) -> tuple[str, bool]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await broker.fail(delivery, "broken input", retry=False) is JobState.FAILED
    return delivery.job_id, False


async def _dead_letter(broker: Broker) -> tuple[str, bool]:
    once = variant(broker, max_attempts=1)
    delivery = await started(once, "w1")  # w1 then dies; no attempt is left
    await anyio.sleep(PAST_VISIBILITY)
    await nearly_expire(once, delivery.job_id)
    assert await once.receive("w2", block_ms=0) is None
    record = await once.get(delivery.job_id)
    assert record is not None and record.status is JobState.FAILED
    return delivery.job_id, False


async def _cancel_queued(broker: Broker) -> tuple[str, bool]:
    job = await submit(broker, idempotency_key="idem")
    await nearly_expire(broker, job.id)
    assert (await broker.cancel(job.id)).status is JobState.CANCELLED
    return job.id, False


async def _cancel_running(broker: Broker) -> tuple[str, bool]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert (await broker.cancel(delivery.job_id)).status is JobState.RUNNING  # flag set
    return delivery.job_id, False


async def _mark_cancelled(broker: Broker) -> tuple[str, bool]:
    delivery = await started(broker)
    await broker.cancel(delivery.job_id)
    await nearly_expire(broker, delivery.job_id)
    record = await broker.mark_cancelled(delivery)
    assert record is not None and record.status is JobState.CANCELLED
    return delivery.job_id, False


CHANGES: dict[str, Change] = {
    "delivery": _delivery,
    "start": _start,
    "progress": _progress,
    "retry": _retry,
    "release": _release,
    "redelivery": _redelivery,
    "complete": _complete,
    "fail": _fail,
    "dead-letter": _dead_letter,
    "cancel-queued": _cancel_queued,
    "cancel-running": _cancel_running,
    "mark-cancelled": _mark_cancelled,
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
async def test_every_state_change_restarts_the_record_ttl(broker: Broker, change: Change) -> None:
    job_id, runs_again = await change(broker)
    assert full(broker, await pttl(broker, broker.keys.job(job_id)))
    if runs_again:  # its worker will need the uploads as long as the record lives
        assert full(broker, await pttl(broker, broker.keys.inputs(job_id)))
    await assert_nothing_outlives_the_record(broker, job_id)


async def test_result_and_idempotency_mapping_never_outlive_the_record(broker: Broker) -> None:
    delivery = await started(broker)
    await assert_nothing_outlives_the_record(broker, delivery.job_id)
    assert await broker.complete(delivery, b"exr", {}, 3, 2)
    assert await pttl(broker, broker.keys.result(delivery.job_id)) > 0
    await assert_nothing_outlives_the_record(broker, delivery.job_id)


async def test_job_queued_past_half_its_ttl_keeps_its_record_while_it_runs(
    broker: Broker,
) -> None:
    """The smoke run's 404: a job that waits in the queue for most of its TTL and then
    runs must not lose its record (and with it its result) before it finishes."""
    short = variant(broker, job_ttl_seconds=2)
    job = await submit(short)
    await anyio.sleep(1.2)  # queued for more than half the TTL
    delivery = await receive(short, "w1")
    assert await short.start(delivery, worker_id="w1", engine="torch") is not None
    await anyio.sleep(1.0)  # now older than the TTL, but started 1 s ago
    record = await short.get(job.id)
    assert record is not None and record.status is JobState.RUNNING
    assert await short.complete(delivery, b"exr", {}, 3, 2)
    assert await short.get_result(job.id) == b"exr"
    await anyio.sleep(0.5)  # more than a TTL after submission, not after the last change
    done = await short.get(job.id)
    assert done is not None and done.status is JobState.SUCCEEDED


async def test_handed_back_job_older_than_the_ttl_is_delivered_again(broker: Broker) -> None:
    """A long job's stream entry is older than its refreshed record: trimming the stream
    of expired jobs' entries must not cut it, or the job would never run again."""
    short = variant(broker, job_ttl_seconds=2)
    delivery = await started(short)
    job_id = delivery.job_id
    for _ in range(5):  # runs for longer than the TTL, reporting progress
        await anyio.sleep(0.5)
        assert await short.progress(job_id, 1, 4)
    later = await submit(short)  # trims the stream of entries older than the TTL
    assert await short.release(delivery) is JobState.QUEUED
    again = await receive(short, "w2")
    assert again.job_id == job_id
    assert await short.get_blobs(job_id) == BLOBS
    assert (await receive(short, "w2")).job_id == later.id
