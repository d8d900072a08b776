"""Job lifetimes: a record lives a full TTL after its last state change, and nothing that
refers to it outlives it.

In Redis that is the cancel flag and the idempotency mapping: their TTLs never exceed the
record's. Uploads and results live in the blob store, which has no TTL: the broker deletes
a job's uploads when the job ends (everything when it ends badly or is cancelled), keeps
them while the job may still run, and the sweeper deletes whatever is left only once the
record is gone, so the record lives at least as long as the blobs it names.

Most tests put a job where one stands after waiting or running for nearly its whole TTL
(its record's remaining TTL cut to 1.5 s with PEXPIRE), make one state change, and read
the TTL back, instead of sleeping for a TTL. Two tests let real time pass with a 2 s TTL
(each step leaves a second of slack for a loaded machine).
Fixture settings: TTL 60 s, visibility timeout 0.5 s, 3 attempts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from service.queue import Broker, Delivery, JobRecord, JobState
from service.queue.jobs import StageTimings
from service.storage import BlobNotFound, job_prefix, result_name
from service.storage.lifecycle import sweep
from tests.factories import job_params

pytestmark = pytest.mark.anyio

UPLOADS = [
    ("short.tif", b"short exposure"),
    ("middle.tif", b"middle exposure"),
    ("long.tif", b"long exposure"),
]
BLOBS = [data for _, data in UPLOADS]
PARAMS = job_params(UPLOADS, tile_size=256)
RESULT = b"exr"
TIMINGS = StageTimings(inference=1.5, encode=0.25)
#: A job's blob names without its folder: its uploads, and the result a worker stores.
INPUT_BLOBS = frozenset({"input-0", "input-1", "input-2"})
RESULT_BLOBS = frozenset({"result-exr-float32"})
#: What is left of a job's TTL in these tests before its state changes.
NEARLY_EXPIRED_MS = 1500
#: A little over the fixture's visibility timeout.
PAST_VISIBILITY = 0.6


def variant(broker: Broker, **changes: Any) -> Broker:
    """The same Redis, store and prefix with other queue settings."""
    return Broker(broker.redis, broker.settings.model_copy(update=changes), broker.store)


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


async def finish(broker: Broker, delivery: Delivery) -> bool:
    """What a worker does at the end: store the result, then complete the job."""
    broker.store.put(result_name(delivery.job_id), RESULT)
    return await broker.complete(delivery, TIMINGS, 3, 2)


async def nearly_expire(broker: Broker, job_id: str) -> None:
    """Leave the job's record 1.5 s, as after a long wait in the queue or a long run
    without a state change."""
    assert await broker.redis.pexpire(broker.keys.job(job_id), NEARLY_EXPIRED_MS)


async def pttl(broker: Broker, key: str) -> int:
    return int(await broker.redis.pttl(key))


def full(broker: Broker, remaining_ms: int) -> bool:
    """Whether a key's remaining TTL is (nearly) the whole job TTL again."""
    return remaining_ms > (broker.settings.job_ttl_seconds - 5) * 1000


def blobs(broker: Broker, job_id: str) -> frozenset[str]:
    """Names of the job's blobs in the store, without the job folder."""
    prefix = job_prefix(job_id)
    return frozenset(info.name.removeprefix(prefix) for info in broker.store.list(prefix))


async def assert_nothing_outlives_the_record(broker: Broker, job_id: str) -> None:
    """The record expires, and the Redis keys that refer to it expire no later."""
    record = await pttl(broker, broker.keys.job(job_id))
    assert record > 0, "the record has no TTL or is gone"
    for key in (broker.keys.cancel(job_id), broker.keys.idempotency(None, "idem")):
        remaining = await pttl(broker, key)
        assert remaining != -1, f"{key} never expires"
        assert remaining <= record, f"{key} outlives the record ({remaining} > {record} ms)"


async def sweep_long_after(broker: Broker) -> list[str]:
    """Run the sweeper as it would run later than a TTL after every blob's last write."""
    ttl = broker.settings.job_ttl_seconds
    return await sweep(broker.store, broker.existing_jobs, ttl, now=time.time() + 2 * ttl)


# Each case brings a job to where its change happens, nearly expires it (but for the
# submission, where a record starts), makes the change, and returns the job id and the
# blobs the job has in the store after the change: its uploads while it runs or may run
# again, its result alone once it succeeded, nothing once it failed or was cancelled.
Change = Callable[[Broker], Awaitable[tuple[str, frozenset[str]]]]


async def _submit(broker: Broker) -> tuple[str, frozenset[str]]:
    # The first change: the record starts with a full TTL, the mapping with no more.
    job = await submit(broker, idempotency_key="idem")
    return job.id, INPUT_BLOBS


async def _delivery(broker: Broker) -> tuple[str, frozenset[str]]:
    job = await submit(broker, idempotency_key="idem")
    await nearly_expire(broker, job.id)
    await receive(broker, "w1")
    return job.id, INPUT_BLOBS


async def _start(broker: Broker) -> tuple[str, frozenset[str]]:
    job = await submit(broker, idempotency_key="idem")
    delivery = await receive(broker, "w1")
    await nearly_expire(broker, job.id)
    assert await broker.start(delivery, worker_id="w1", engine="torch") is not None
    return job.id, INPUT_BLOBS


async def _progress(broker: Broker) -> tuple[str, frozenset[str]]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await broker.progress(delivery.job_id, 1, 4)
    return delivery.job_id, INPUT_BLOBS


async def _retry(broker: Broker) -> tuple[str, frozenset[str]]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await broker.fail(delivery, "transient", retry=True) is JobState.QUEUED
    return delivery.job_id, INPUT_BLOBS


async def _release(broker: Broker) -> tuple[str, frozenset[str]]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await broker.release(delivery) is JobState.QUEUED
    return delivery.job_id, INPUT_BLOBS


async def _redelivery(broker: Broker) -> tuple[str, frozenset[str]]:
    delivery = await started(broker, "w1")  # w1 then dies
    await anyio.sleep(PAST_VISIBILITY)
    await nearly_expire(broker, delivery.job_id)
    assert (await receive(broker, "w2")).redelivered
    return delivery.job_id, INPUT_BLOBS


async def _complete(broker: Broker) -> tuple[str, frozenset[str]]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await finish(broker, delivery)
    return delivery.job_id, RESULT_BLOBS


async def _fail(broker: Broker) -> tuple[str, frozenset[str]]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await broker.fail(delivery, "broken input", retry=False) is JobState.FAILED
    return delivery.job_id, frozenset()


async def _dead_letter(broker: Broker) -> tuple[str, frozenset[str]]:
    once = variant(broker, max_attempts=1)
    delivery = await started(once, "w1")  # w1 then dies; no attempt is left
    await anyio.sleep(PAST_VISIBILITY)
    await nearly_expire(once, delivery.job_id)
    assert await once.receive("w2", block_ms=0) is None
    record = await once.get(delivery.job_id)
    assert record is not None and record.status is JobState.FAILED
    return delivery.job_id, frozenset()


async def _cancel_queued(broker: Broker) -> tuple[str, frozenset[str]]:
    job = await submit(broker, idempotency_key="idem")
    await nearly_expire(broker, job.id)
    assert (await broker.cancel(job.id)).status is JobState.CANCELLED
    return job.id, frozenset()


async def _cancel_running(broker: Broker) -> tuple[str, frozenset[str]]:
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert (await broker.cancel(delivery.job_id)).status is JobState.RUNNING  # flag set
    # Its worker runs on until it sees the flag, reading uploads meanwhile.
    return delivery.job_id, INPUT_BLOBS


async def _mark_cancelled(broker: Broker) -> tuple[str, frozenset[str]]:
    delivery = await started(broker)
    await broker.cancel(delivery.job_id)
    await nearly_expire(broker, delivery.job_id)
    record = await broker.mark_cancelled(delivery)
    assert record is not None and record.status is JobState.CANCELLED
    return delivery.job_id, frozenset()


CHANGES: dict[str, Change] = {
    "submit": _submit,
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
    job_id, kept = await change(broker)
    assert full(broker, await pttl(broker, broker.keys.job(job_id)))
    await assert_nothing_outlives_the_record(broker, job_id)
    # A job that may run again keeps its uploads (its next worker reads them); one that
    # ended keeps its result at most.
    assert blobs(broker, job_id) == kept


async def test_result_stays_while_the_record_lives_and_is_swept_after_it(
    broker: Broker,
) -> None:
    """The record names the result and the API serves it while the record says succeeded:
    the sweeper must leave it for as long as the record lives, and take it after."""
    delivery = await started(broker)
    await nearly_expire(broker, delivery.job_id)
    assert await finish(broker, delivery)
    assert full(broker, await pttl(broker, broker.keys.job(delivery.job_id)))
    await assert_nothing_outlives_the_record(broker, delivery.job_id)

    assert await sweep_long_after(broker) == []
    assert broker.store.read(result_name(delivery.job_id)) == RESULT

    # Once the record has expired, the next sweep takes the result.
    assert await broker.redis.pexpire(broker.keys.job(delivery.job_id), 1)
    await anyio.sleep(0.05)
    assert await broker.get(delivery.job_id) is None
    assert await sweep_long_after(broker) == [delivery.job_id]
    assert blobs(broker, delivery.job_id) == frozenset()
    with pytest.raises(BlobNotFound):
        broker.store.read(result_name(delivery.job_id))


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
    assert blobs(short, job.id) == INPUT_BLOBS  # the worker can still read its uploads
    assert await finish(short, delivery)
    await anyio.sleep(0.5)  # more than a TTL after submission, not after the last change
    done = await short.get(job.id)
    assert done is not None and done.status is JobState.SUCCEEDED
    # Downloadable: the record says succeeded, the result is in the store and the sweeper
    # leaves it to the record, which expires a TTL after completion.
    assert 0 < await pttl(short, short.keys.job(job.id)) <= 2000
    assert await sweep_long_after(short) == []
    assert short.store.read(result_name(job.id)) == RESULT


async def test_handed_back_job_older_than_the_ttl_is_delivered_again(broker: Broker) -> None:
    """A long job's stream entry is older than its refreshed record: trimming the stream
    of expired jobs' entries must not cut it, or the job would never run again."""
    short = variant(broker, job_ttl_seconds=2)
    delivery = await started(short)
    job_id = delivery.job_id
    for _ in range(5):  # runs for longer than the TTL, reporting progress
        await anyio.sleep(0.5)
        assert await short.progress(job_id, 1, 4)
    # The record lives on (and will still expire) although the entry is older than a TTL.
    assert 0 < await pttl(short, short.keys.job(job_id)) <= 2000
    later = await submit(short)  # trims the stream of entries older than the TTL
    assert await short.release(delivery) is JobState.QUEUED
    again = await receive(short, "w2")
    assert again.job_id == job_id
    record = await short.get(job_id)
    assert record is not None and record.params is not None
    assert [short.store.read(name) for name in record.params.inputs] == BLOBS  # still there
    assert (await receive(short, "w2")).job_id == later.id
