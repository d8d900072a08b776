"""The webhook due-set: every final transition queues the notification in its own atomic
step (and only for jobs with a webhook_url), and dispatchers claim and settle entries.

Fixture settings: visibility timeout 0.5 s, 3 attempts.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from service.queue import Broker, Delivery, JobRecord, JobState
from service.queue.jobs import JobParams, StageTimings, WebhookStatus
from service.queue.webhooks import ClaimMiss, WebhookClaim, WebhookQueue
from service.storage import result_name

pytestmark = pytest.mark.anyio

BLOBS = [b"short exposure", b"middle exposure", b"long exposure"]
PARAMS = JobParams(exposure_values=(0.0, 2.0, 4.0), names=("a", "b", "c"))
HOOK = "https://hooks.example.com/hdr"
PAST_VISIBILITY = 0.6


async def submit(broker: Broker, webhook_url: str | None = HOOK) -> JobRecord:
    return await broker.submit(PARAMS, BLOBS, webhook_url=webhook_url)


async def finish(broker: Broker, delivery: Delivery) -> bool:
    """What a worker does at the end: store the result, then complete the job."""
    broker.store.put(result_name(delivery.job_id), b"exr")
    return await broker.complete(delivery, StageTimings(inference=1.0), 64, 48)


async def started(broker: Broker, consumer: str = "w1") -> Delivery:
    delivery = await broker.receive(consumer, block_ms=0)
    assert delivery is not None
    assert await broker.start(delivery, worker_id=consumer, engine="torch") is not None
    return delivery


async def due_set(broker: Broker) -> dict[str, float]:
    members: Any = await broker.redis.zrange(broker.keys.webhooks, 0, -1, withscores=True)
    return {m.decode(): score for m, score in members}


async def record(broker: Broker, job_id: str) -> JobRecord:
    found = await broker.get(job_id)
    assert found is not None
    return found


async def assert_notified(broker: Broker, job: JobRecord, state: JobState) -> None:
    final = await record(broker, job.id)
    assert final.status is state
    assert final.webhook_status is WebhookStatus.PENDING
    assert final.webhook_url == HOOK
    queued = await due_set(broker)
    assert list(queued) == [job.id]
    assert final.finished_at is not None
    assert queued[job.id] == pytest.approx(final.finished_at)


async def test_webhook_url_is_stored_and_nothing_is_due_before_the_job_ends(
    broker: Broker,
) -> None:
    job = await submit(broker)
    await started(broker)
    running = await record(broker, job.id)
    assert (running.webhook_url, running.webhook_status) == (HOOK, None)
    assert await due_set(broker) == {}


async def test_complete_queues_the_notification(broker: Broker) -> None:
    job = await submit(broker)
    delivery = await started(broker)
    assert await finish(broker, delivery)
    await assert_notified(broker, job, JobState.SUCCEEDED)


async def test_a_final_failure_queues_the_notification_but_a_retry_does_not(
    broker: Broker,
) -> None:
    job = await submit(broker)
    first = await started(broker)
    assert await broker.fail(first, "flaky", retry=True, retry_delay_seconds=0) is JobState.QUEUED
    assert await due_set(broker) == {}
    second = await started(broker, "w2")
    assert await broker.fail(second, "corrupt input", retry=False) is JobState.FAILED
    await assert_notified(broker, job, JobState.FAILED)


async def test_dead_lettering_queues_the_notification(broker: Broker) -> None:
    once = Broker(
        broker.redis, broker.settings.model_copy(update={"max_attempts": 1}), broker.store
    )
    job = await submit(once)
    await started(once)
    await anyio.sleep(PAST_VISIBILITY)
    assert await once.receive("w2", block_ms=0) is None  # dead-lettered instead
    await assert_notified(once, job, JobState.FAILED)


async def test_cancelling_a_queued_job_queues_the_notification(broker: Broker) -> None:
    job = await submit(broker)
    assert (await broker.cancel(job.id)).status is JobState.CANCELLED
    await assert_notified(broker, job, JobState.CANCELLED)


async def test_a_cancel_the_worker_finishes_queues_the_notification(broker: Broker) -> None:
    job = await submit(broker)
    delivery = await started(broker)
    assert (await broker.cancel(job.id)).status is JobState.RUNNING
    assert await due_set(broker) == {}
    assert await broker.mark_cancelled(delivery) is not None
    await assert_notified(broker, job, JobState.CANCELLED)


async def test_a_cancel_finished_at_redelivery_queues_the_notification(broker: Broker) -> None:
    job = await submit(broker)
    await started(broker)
    await broker.cancel(job.id)  # running: flagged; then its worker is gone
    await anyio.sleep(PAST_VISIBILITY)
    assert await broker.receive("w2", block_ms=0) is None
    await assert_notified(broker, job, JobState.CANCELLED)


async def test_jobs_without_webhook_url_queue_nothing(broker: Broker) -> None:
    done = await submit(broker, webhook_url=None)
    delivery = await started(broker)
    assert await finish(broker, delivery)
    cancelled = await submit(broker, webhook_url=None)
    await broker.cancel(cancelled.id)
    assert await due_set(broker) == {}
    assert (await record(broker, done.id)).webhook_status is None


async def test_a_late_second_completion_does_not_queue_a_second_notification(
    broker: Broker,
) -> None:
    job = await submit(broker)
    slow = await started(broker, "w1")
    await anyio.sleep(PAST_VISIBILITY)
    fast = await started(broker, "w2")  # re-delivered: w1 looked dead
    assert await finish(broker, fast)
    queue = WebhookQueue(broker.redis, broker.keys, broker.settings.job_ttl_seconds)
    claim = await queue.claim(job.id, time.time(), time.time() + 30)
    assert isinstance(claim, WebhookClaim)
    await queue.settle(job.id, WebhookStatus.DELIVERED)

    assert not await finish(broker, slow)
    assert await due_set(broker) == {}
    assert (await record(broker, job.id)).webhook_status is WebhookStatus.DELIVERED


async def test_a_claim_leases_the_entry_so_no_other_dispatcher_takes_it(broker: Broker) -> None:
    job = await submit(broker)
    await broker.cancel(job.id)
    queue = WebhookQueue(broker.redis, broker.keys, broker.settings.job_ttl_seconds)
    now = time.time()

    assert await queue.due(now, 10) == [job.id]
    claim = await queue.claim(job.id, now, now + 0.3)
    assert isinstance(claim, WebhookClaim)
    assert claim.attempt == 1 and claim.record.status is JobState.CANCELLED
    assert await queue.claim(job.id, now, now + 0.3) is ClaimMiss.TAKEN
    assert await queue.due(time.time(), 10) == []

    await anyio.sleep(0.35)  # the first dispatcher died mid-attempt: the lease ends
    again = await queue.claim(job.id, time.time(), time.time() + 30)
    assert isinstance(again, WebhookClaim) and again.attempt == 2


async def test_settle_reschedules_or_removes_and_records_on_the_job(broker: Broker) -> None:
    job = await submit(broker)
    await broker.cancel(job.id)
    queue = WebhookQueue(broker.redis, broker.keys, broker.settings.job_ttl_seconds)
    now = time.time()
    assert isinstance(await queue.claim(job.id, now, now + 30), WebhookClaim)

    await queue.settle(job.id, WebhookStatus.PENDING, due_at=now + 5, error="attempt 1: HTTP 503")
    assert (await due_set(broker))[job.id] == pytest.approx(now + 5)
    pending = await record(broker, job.id)
    assert (pending.webhook_status, pending.webhook_error) == (
        WebhookStatus.PENDING,
        "attempt 1: HTTP 503",
    )

    await queue.settle(job.id, WebhookStatus.FAILED, error="gave up after 1 attempt(s): HTTP 404")
    assert await due_set(broker) == {}
    failed = await record(broker, job.id)
    assert failed.webhook_status is WebhookStatus.FAILED
    assert failed.webhook_attempts == 1
    assert failed.webhook_error == "gave up after 1 attempt(s): HTTP 404"


async def test_the_notification_of_an_expired_job_is_dropped(broker: Broker) -> None:
    job = await submit(broker)
    await broker.cancel(job.id)
    await broker.redis.delete(broker.keys.job(job.id))  # what the TTL does
    queue = WebhookQueue(broker.redis, broker.keys, broker.settings.job_ttl_seconds)

    assert await queue.claim(job.id, time.time(), time.time() + 30) is ClaimMiss.EXPIRED
    assert await due_set(broker) == {}
    await queue.settle(job.id, WebhookStatus.DELIVERED)
    assert not await broker.redis.exists(broker.keys.job(job.id))  # not recreated


async def test_a_retry_due_after_the_ttl_keeps_the_record_it_will_send(broker: Broker) -> None:
    """A retry schedule may outlast the job TTL (1800 s against Kubernetes' 600 s): each
    outcome is a state change, and while a retry is due the record lives a TTL past it."""
    job = await submit(broker)
    await broker.cancel(job.id)
    ttl = broker.settings.job_ttl_seconds
    queue = WebhookQueue(broker.redis, broker.keys, ttl)
    key = broker.keys.job(job.id)
    await broker.redis.expire(key, 2)  # nearly expired, as after a long wait
    now = time.time()
    assert isinstance(await queue.claim(job.id, now, now + 30), WebhookClaim)

    later = 3 * ttl
    await queue.settle(job.id, WebhookStatus.PENDING, due_at=now + later, error="HTTP 503")
    assert await broker.redis.ttl(key) >= later + ttl - 5

    await queue.settle(job.id, WebhookStatus.DELIVERED)
    assert ttl - 5 <= await broker.redis.ttl(key) <= ttl
