"""The broker against a real Redis: submit, deliver, re-deliver, retry, cancel, expire.

Fixture settings: visibility timeout 0.5 s, 3 attempts, at most 5 queued jobs.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.config import Settings
from service.errors import IdempotencyKeyReused, JobNotFound, JobTooLarge, QueueFull, RateLimited
from service.queue import Broker, Delivery, JobRecord, JobState, open_broker
from service.queue.broker import DEFAULT_RETRY_AFTER_SECONDS
from service.queue.jobs import JobParams, StageTimings
from service.storage import BlobNotFound, input_name, job_prefix, result_name

pytestmark = pytest.mark.anyio

BLOBS = [b"short exposure", b"middle exposure", b"long exposure"]
PARAMS = JobParams(exposure_values=(-2.0, 0.0, 2.0), names=("a", "b", "c"), tile_size=256)
TIMINGS = StageTimings(inference=1.5, encode=0.25)
#: A little over the fixture's visibility timeout.
PAST_VISIBILITY = 0.6


async def submit(broker: Broker, **kwargs: Any) -> JobRecord:
    return await broker.submit(PARAMS, BLOBS, **kwargs)


def variant(broker: Broker, **changes: Any) -> Broker:
    """The same Redis, store and prefix with other queue settings."""
    settings: Settings = broker.settings.model_copy(update=changes)
    return Broker(broker.redis, settings, broker.store)


def inputs(broker: Broker, job_id: str) -> list[bytes]:
    """The job's uploads as the worker reads them; BlobNotFound once they are gone."""
    return [broker.store.read(input_name(job_id, i)) for i in range(len(BLOBS))]


def blobs(broker: Broker, job_id: str) -> set[str]:
    """Names of the job's blobs in the store, without the job folder."""
    prefix = job_prefix(job_id)
    return {info.name.removeprefix(prefix) for info in broker.store.list(prefix)}


async def finish(
    broker: Broker, delivery: Delivery, result: bytes, timings: StageTimings = TIMINGS
) -> bool:
    """What a worker does at the end: store the result, then complete the job."""
    broker.store.put(result_name(delivery.job_id), result)
    return await broker.complete(delivery, timings, 3, 2)


async def receive(broker: Broker, consumer: str) -> Delivery:
    delivery = await broker.receive(consumer, block_ms=0)
    assert delivery is not None, f"{consumer} received nothing"
    return delivery


async def run_to_started(broker: Broker, consumer: str = "w1") -> Delivery:
    delivery = await receive(broker, consumer)
    assert await broker.start(delivery, worker_id=consumer, engine="torch") is not None
    return delivery


async def stream_length(broker: Broker) -> int:
    return int(await broker.redis.xlen(broker.keys.stream(broker.settings.default_model)))


# --- submit and read back -----------------------------------------------------------------


async def test_submitted_job_is_queued_with_its_params_and_inputs(broker: Broker) -> None:
    job = await submit(broker, owner="alice", model="afunet", width=30, height=20)

    stored = await broker.get(job.id)
    assert stored == job
    assert stored is not None
    assert stored.status is JobState.QUEUED
    assert (stored.owner, stored.model, stored.width, stored.height) == ("alice", "afunet", 30, 20)
    assert stored.params is not None
    assert stored.params.exposure_values == PARAMS.exposure_values
    assert stored.params.inputs == tuple(input_name(job.id, i) for i in range(3))
    assert stored.attempts == 0
    assert inputs(broker, job.id) == BLOBS
    assert blobs(broker, job.id) == {"input-0", "input-1", "input-2"}
    # Redis holds state only: the record, not the bytes.
    raw = await broker.redis.hgetall(broker.keys.job(job.id))
    assert not any(blob in value for value in raw.values() for blob in BLOBS)


async def test_job_ids_are_32_hex_chars_and_distinct(broker: Broker) -> None:
    ids = [(await submit(broker)).id for _ in range(5)]
    assert len(set(ids)) == 5
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


async def test_unknown_or_malformed_ids_read_as_missing(broker: Broker) -> None:
    job = await submit(broker)
    for job_id in ["0" * 32, f"{job.id}:inputs", "nope"]:
        assert await broker.get(job_id) is None
        with pytest.raises(JobNotFound):
            await broker.cancel(job_id)


async def test_same_idempotency_key_returns_the_same_job(broker: Broker) -> None:
    first = await submit(broker, owner="alice", idempotency_key="k-1")
    again = await submit(broker, owner="alice", idempotency_key="k-1")
    assert again.id == first.id
    assert await broker.queue_depth() == 1
    assert await stream_length(broker) == 1


async def test_idempotency_key_with_another_request_digest_is_refused(broker: Broker) -> None:
    first = await submit(broker, idempotency_key="k-1", request_digest="a" * 64)
    again = await submit(broker, idempotency_key="k-1", request_digest="a" * 64)
    with pytest.raises(IdempotencyKeyReused, match=first.id):
        await submit(broker, idempotency_key="k-1", request_digest="b" * 64)
    assert again.id == first.id
    assert (await broker.get(first.id)) is not None
    assert (await broker.get(first.id)).request_digest == "a" * 64  # type: ignore[union-attr]
    assert await broker.queue_depth() == 1


async def test_concurrent_submits_of_different_requests_under_one_key(broker: Broker) -> None:
    """The Lua duplicate path (a concurrent submit won) compares the digests too."""
    outcomes: list[str] = []

    async def one(digest: str) -> None:
        try:
            outcomes.append((await submit(broker, idempotency_key="k", request_digest=digest)).id)
        except IdempotencyKeyReused:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(one, "ab"[i % 2] * 64)
    assert outcomes.count("refused") == 3
    assert len(set(outcomes) - {"refused"}) == 1
    assert await broker.queue_depth() == 1


async def test_idempotency_keys_of_different_owners_make_different_jobs(broker: Broker) -> None:
    alice = await submit(broker, owner="alice", idempotency_key="same")
    bob = await submit(broker, owner="bob", idempotency_key="same")
    assert alice.id != bob.id


async def test_idempotency_mapping_to_an_expired_job_makes_a_new_job(broker: Broker) -> None:
    first = await submit(broker, idempotency_key="k")
    await broker.redis.delete(broker.keys.job(first.id))  # the record expired early
    second = await submit(broker, idempotency_key="k")
    assert second.id != first.id
    assert (await submit(broker, idempotency_key="k")).id == second.id


async def test_concurrent_submits_with_one_idempotency_key_make_one_job(broker: Broker) -> None:
    ids: list[str] = []

    async def one() -> None:
        ids.append((await submit(broker, owner="alice", idempotency_key="k")).id)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one)
    assert len(set(ids)) == 1
    assert await stream_length(broker) == 1
    # Refused duplicates took their uploads back with them.
    assert [info.name for info in broker.store.list("jobs/")] == [
        input_name(ids[0], i) for i in range(3)
    ]


async def test_concurrent_submits_never_overshoot_the_queue_limit(broker: Broker) -> None:
    accepted: list[JobRecord] = []
    refused: list[QueueFull] = []

    async def one() -> None:
        try:
            accepted.append(await submit(broker))
        except QueueFull as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert len(accepted) == broker.settings.max_queue_length
    assert len(refused) == 20 - broker.settings.max_queue_length
    assert await broker.queue_depth() == broker.settings.max_queue_length


async def test_submit_without_inputs_is_refused(broker: Broker) -> None:
    with pytest.raises(ValueError):
        await broker.submit(PARAMS, [])


async def test_submit_raises_queue_full_at_the_limit_with_retry_after(broker: Broker) -> None:
    jobs = [await submit(broker) for _ in range(broker.settings.max_queue_length)]

    with pytest.raises(QueueFull) as caught:
        await submit(broker)
    assert caught.value.retry_after == DEFAULT_RETRY_AFTER_SECONDS
    assert caught.value.http_status == 429
    assert await stream_length(broker) == len(jobs)  # the refused job left nothing behind
    assert len(list(broker.store.list("jobs/"))) == 3 * len(jobs)

    await broker.cancel(jobs[0].id)  # a cancelled job frees its slot at once
    await submit(broker)


async def test_idempotent_resubmit_is_answered_even_when_the_queue_is_full(
    broker: Broker,
) -> None:
    first = await submit(broker, idempotency_key="k")
    for _ in range(broker.settings.max_queue_length - 1):
        await submit(broker)
    assert (await submit(broker, idempotency_key="k")).id == first.id


async def test_running_jobs_do_not_count_against_the_queue_limit(broker: Broker) -> None:
    await submit(broker)
    await run_to_started(broker)
    for _ in range(broker.settings.max_queue_length):
        await submit(broker)
    assert await broker.queue_depth() == broker.settings.max_queue_length


async def test_retry_after_is_one_job_time_over_the_live_workers(broker: Broker) -> None:
    await broker.redis.hset(broker.keys.stats, "job_seconds", "40")
    await broker.heartbeat("w1", 10, {})
    await broker.heartbeat("w2", 10, {})
    small = variant(broker, max_queue_length=1)
    await submit(small)
    with pytest.raises(QueueFull) as caught:
        await submit(small)
    assert caught.value.retry_after == 20


# --- expiry -------------------------------------------------------------------------------


async def test_every_key_of_a_job_carries_the_job_ttl(broker: Broker) -> None:
    running = await submit(broker)
    await submit(broker)
    await run_to_started(broker, "w1")
    await broker.cancel(running.id)  # sets the cancel flag of the running job
    await finish(broker, await run_to_started(broker, "w2"), b"exr")
    queued = await submit(broker, idempotency_key="k")

    job_keys = [
        broker.keys.job(queued.id),
        broker.keys.idempotency(None, "k"),
        broker.keys.cancel(running.id),
    ]
    for key in job_keys:
        ttl = await broker.redis.ttl(key)
        assert 0 < ttl <= broker.settings.job_ttl_seconds, key


async def test_record_and_idempotency_expire_after_ttl(broker: Broker) -> None:
    short = variant(broker, job_ttl_seconds=1)
    waiting = await submit(short, idempotency_key="k")
    finished = await submit(short)
    first = await run_to_started(short)  # FIFO: `waiting` is delivered first
    second = await run_to_started(short)
    assert (first.job_id, second.job_id) == (waiting.id, finished.id)
    assert await finish(short, second, b"result")
    assert blobs(short, finished.id) == {"result-exr-float32"}

    await anyio.sleep(1.3)

    for job in (waiting, finished):
        assert await short.get(job.id) is None
        assert job.id not in await short.existing_jobs([waiting.id, finished.id])
    assert (await submit(short, idempotency_key="k")).id != waiting.id


async def test_jobs_that_expire_while_queued_leave_the_queue(broker: Broker) -> None:
    short = variant(broker, job_ttl_seconds=1)
    await submit(short)
    assert await short.queue_depth() == 1
    await anyio.sleep(1.1)
    assert await short.queue_depth() == 0
    assert await short.oldest_queued_age_seconds() == 0.0
    assert await short.receive("w1", block_ms=0) is None  # entry acked and dropped
    assert await stream_length(short) == 0


async def test_stream_entries_of_expired_jobs_are_trimmed_on_submit(broker: Broker) -> None:
    short = variant(broker, job_ttl_seconds=1)
    await submit(short)
    await anyio.sleep(1.1)
    await submit(short)
    assert await stream_length(short) == 1


# --- delivery and re-delivery -------------------------------------------------------------


async def test_receive_hands_out_jobs_in_submission_order(broker: Broker) -> None:
    jobs = [await submit(broker) for _ in range(3)]
    deliveries = [await receive(broker, "w1") for _ in range(3)]
    assert [d.job_id for d in deliveries] == [j.id for j in jobs]
    assert all(d.attempts == 1 and not d.redelivered for d in deliveries)
    assert await broker.receive("w1", block_ms=0) is None


async def test_blocking_receive_wakes_up_for_a_job_submitted_meanwhile(broker: Broker) -> None:
    received: list[Delivery | None] = []

    async def worker() -> None:
        received.append(await broker.receive("w1", block_ms=3000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await anyio.sleep(0.1)
        job = await submit(broker)
    assert received[0] is not None
    assert received[0].job_id == job.id


async def test_start_marks_the_job_running_with_worker_and_engine(broker: Broker) -> None:
    job = await submit(broker)
    delivery = await receive(broker, "w1")
    started = await broker.start(delivery, worker_id="gpu-0", engine="tensorrt")
    assert started is not None
    assert started.status is JobState.RUNNING
    assert (started.worker, started.engine, started.attempts) == ("gpu-0", "tensorrt", 1)
    assert started.started_at is not None and started.started_at >= job.created_at
    assert await broker.queue_depth() == 0


async def test_job_of_dead_consumer_is_redelivered_after_visibility_timeout(
    broker: Broker,
) -> None:
    job = await submit(broker)
    await run_to_started(broker, "w1")  # w1 then dies: no ack, no touch
    assert await broker.receive("w2", block_ms=0) is None  # not yet idle long enough

    await anyio.sleep(PAST_VISIBILITY)
    again = await receive(broker, "w2")

    assert (again.job_id, again.attempts, again.redelivered) == (job.id, 2, True)
    restarted = await broker.start(again, worker_id="w2", engine="torch")
    assert restarted is not None
    assert (restarted.worker, restarted.attempts) == ("w2", 2)


async def test_touch_keeps_a_long_job_from_being_redelivered(broker: Broker) -> None:
    await submit(broker)
    delivery = await run_to_started(broker, "w1")
    deadline = time.monotonic() + 3 * broker.settings.visibility_timeout_seconds
    while time.monotonic() < deadline:
        assert await broker.touch(delivery)
        assert await broker.progress(delivery.job_id, 1, 4)
        assert await broker.receive("w2", block_ms=0) is None
        await anyio.sleep(0.15)


async def test_touch_reports_a_job_taken_over_by_another_worker(broker: Broker) -> None:
    await submit(broker)
    stalled = await run_to_started(broker, "w1")
    await anyio.sleep(PAST_VISIBILITY)
    await receive(broker, "w2")
    assert not await broker.touch(stalled)


async def test_a_stalled_claim_of_a_job_in_hand_is_renewed_not_redelivered(
    broker: Broker,
) -> None:
    """After a Redis stall past the visibility timeout, the worker's own take-over finds
    the job it is running: held, it is only claimed again, with no second attempt."""
    job = await submit(broker)
    running = await run_to_started(broker, "w1")
    await anyio.sleep(PAST_VISIBILITY)

    assert await broker.receive("w1", block_ms=0, held={running.entry_id}) is None
    assert await broker.receive("w2", block_ms=0) is None  # the claim was renewed
    assert await broker.touch(running)
    record = await broker.get(job.id)
    assert record is not None and (record.attempts, record.worker) == (1, "w1")


async def test_a_job_the_worker_no_longer_holds_comes_back_to_it(broker: Broker) -> None:
    """A job its worker dropped (not held) is re-delivered, to that worker too."""
    job = await submit(broker)
    await run_to_started(broker, "w1")
    await anyio.sleep(PAST_VISIBILITY)

    again = await receive(broker, "w1")
    assert (again.job_id, again.attempts, again.redelivered) == (job.id, 2, True)


async def test_deliveries_beyond_max_attempts_go_to_dead_letter_and_fail(broker: Broker) -> None:
    twice = variant(broker, max_attempts=2)
    job = await submit(twice)
    await run_to_started(twice, "w1")
    await anyio.sleep(PAST_VISIBILITY)
    assert (await run_to_started(twice, "w2")).attempts == 2
    await anyio.sleep(PAST_VISIBILITY)

    assert await twice.receive("w3", block_ms=0) is None

    failed = await twice.get(job.id)
    assert failed is not None
    assert failed.status is JobState.FAILED
    assert failed.attempts == 2
    assert failed.finished_at is not None
    assert failed.error is not None
    assert failed.error.startswith("failed after 2 attempts: not acknowledged")
    assert await twice.dead_letter_depth() == 1
    (dead,) = await twice.dead_letters()
    assert (dead["job"], dead["attempts"], dead["reason"]) == (job.id, "2", failed.error)
    assert await stream_length(twice) == 0
    assert await twice.running_count() == 0
    assert blobs(twice, job.id) == set()  # a dead-lettered job's uploads go at once


async def test_fail_with_retry_requeues_then_fails_after_max_attempts(broker: Broker) -> None:
    twice = variant(broker, max_attempts=2)
    job = await submit(twice)
    first = await run_to_started(twice, "w1")

    assert await twice.fail(first, "CUDA out of memory", retry=True, retry_delay_seconds=0.1)
    waiting = await twice.get(job.id)
    assert waiting is not None
    assert waiting.status is JobState.QUEUED
    assert waiting.error == "attempt 1 failed, will retry: CUDA out of memory"
    assert await twice.queue_depth() == 1
    assert await twice.receive("w2", block_ms=0) is None  # the retry delay is not over
    assert inputs(twice, job.id) == BLOBS  # kept for the retry

    await anyio.sleep(0.2)
    second = await run_to_started(twice, "w2")
    assert (second.job_id, second.attempts) == (job.id, 2)
    assert await twice.fail(second, "CUDA out of memory", retry=True) is JobState.FAILED

    failed = await twice.get(job.id)
    assert failed is not None
    assert failed.error == "failed after 2 attempts: CUDA out of memory"
    assert await twice.dead_letter_depth() == 1
    assert await stream_length(twice) == 0
    assert blobs(twice, job.id) == set()


async def test_default_retry_delay_is_capped_by_the_visibility_timeout(broker: Broker) -> None:
    await submit(broker)
    delivery = await run_to_started(broker)
    assert await broker.fail(delivery, "flaky", retry=True) is JobState.QUEUED
    await anyio.sleep(PAST_VISIBILITY)
    assert (await receive(broker, "w2")).attempts == 2


async def test_fail_without_retry_fails_at_once_into_dead_letter(broker: Broker) -> None:
    job = await submit(broker)
    delivery = await run_to_started(broker)

    assert await broker.fail(delivery, "corrupt input", retry=False) is JobState.FAILED

    failed = await broker.get(job.id)
    assert failed is not None
    assert (failed.status, failed.error) == (JobState.FAILED, "corrupt input")
    assert blobs(broker, job.id) == set()  # a failed job's uploads go at once
    assert await broker.dead_letter_depth() == 1
    assert await stream_length(broker) == 0
    await anyio.sleep(PAST_VISIBILITY)
    assert await broker.receive("w2", block_ms=0) is None


async def test_receive_recreates_a_missing_consumer_group(broker: Broker) -> None:
    await broker.redis.delete(broker.keys.stream(broker.settings.default_model))
    assert await broker.receive("w1", block_ms=0) is None
    job = await submit(broker)
    assert (await receive(broker, "w1")).job_id == job.id


# --- cancel -------------------------------------------------------------------------------


async def test_cancelled_queued_job_is_skipped_by_receive(broker: Broker) -> None:
    job = await submit(broker)

    cancelled = await broker.cancel(job.id)

    assert cancelled.status is JobState.CANCELLED
    assert cancelled.finished_at is not None
    assert await broker.queue_depth() == 0
    with pytest.raises(BlobNotFound):
        inputs(broker, job.id)  # uploads dropped at once
    assert await broker.receive("w1", block_ms=0) is None
    assert await stream_length(broker) == 0


async def test_job_cancelled_between_receive_and_start_is_not_started(broker: Broker) -> None:
    job = await submit(broker)
    delivery = await receive(broker, "w1")
    await broker.cancel(job.id)
    assert await broker.start(delivery, "w1", "torch") is None
    assert await broker.running_count() == 0


async def test_cancel_of_running_job_sets_a_flag_the_worker_acts_on(broker: Broker) -> None:
    job = await submit(broker)
    delivery = await run_to_started(broker)
    assert not await broker.is_cancel_requested(job.id)

    requested = await broker.cancel(job.id)

    assert requested.status is JobState.RUNNING
    assert await broker.is_cancel_requested(job.id)
    cancelled = await broker.mark_cancelled(delivery)
    assert cancelled is not None
    assert cancelled.status is JobState.CANCELLED
    assert not await broker.is_cancel_requested(job.id)
    assert await stream_length(broker) == 0
    assert blobs(broker, job.id) == set()


async def test_cancel_requested_job_of_a_dead_worker_ends_cancelled(broker: Broker) -> None:
    job = await submit(broker)
    await run_to_started(broker, "w1")
    await broker.cancel(job.id)
    await anyio.sleep(PAST_VISIBILITY)

    assert await broker.receive("w2", block_ms=0) is None

    record = await broker.get(job.id)
    assert record is not None
    assert record.status is JobState.CANCELLED
    assert blobs(broker, job.id) == set()


async def test_cancel_of_a_final_job_returns_it_unchanged(broker: Broker) -> None:
    job = await submit(broker)
    delivery = await run_to_started(broker)
    await finish(broker, delivery, b"exr")
    before = await broker.get(job.id)

    after = await broker.cancel(job.id)

    assert after == before
    assert not await broker.is_cancel_requested(job.id)


# --- completion ---------------------------------------------------------------------------


async def test_complete_records_timings_and_drops_the_inputs_not_the_result(
    broker: Broker,
) -> None:
    job = await submit(broker)
    delivery = await run_to_started(broker)
    await broker.progress(job.id, 2, 6)
    broker.store.put(result_name(job.id), b"EXR-bytes")

    assert await broker.complete(delivery, TIMINGS, 30, 20)

    done = await broker.get(job.id)
    assert done is not None
    assert done.status is JobState.SUCCEEDED
    assert done.timings == TIMINGS
    assert (done.width, done.height, done.tiles_done, done.tiles_total) == (30, 20, 6, 6)
    assert done.finished_at is not None and done.error is None
    assert broker.store.read(result_name(job.id)) == b"EXR-bytes"
    assert blobs(broker, job.id) == {"result-exr-float32"}
    assert await stream_length(broker) == 0
    assert await broker.running_count() == 0


async def test_second_complete_neither_stores_a_second_result_nor_changes_state(
    broker: Broker,
) -> None:
    job = await submit(broker)
    slow = await run_to_started(broker, "w1")
    await anyio.sleep(PAST_VISIBILITY)
    fast = await run_to_started(broker, "w2")  # re-delivered while w1 still works

    assert await finish(broker, fast, b"result")
    first = await broker.get(job.id)
    assert not await finish(broker, slow, b"result", StageTimings(inference=9.0))
    assert await broker.fail(slow, "late failure", retry=False) is JobState.SUCCEEDED

    assert blobs(broker, job.id) == {"result-exr-float32"}  # one result, kept
    assert await broker.get(job.id) == first
    assert await broker.dead_letter_depth() == 0
    assert await stream_length(broker) == 0


async def test_complete_after_cancel_keeps_the_job_cancelled(broker: Broker) -> None:
    job = await submit(broker)
    delivery = await receive(broker, "w1")
    await broker.cancel(job.id)

    assert not await finish(broker, delivery, b"late")

    record = await broker.get(job.id)
    assert record is not None
    assert record.status is JobState.CANCELLED
    assert blobs(broker, job.id) == set()  # the late result went with the job


async def test_progress_is_recorded_only_while_running(broker: Broker) -> None:
    job = await submit(broker)
    assert not await broker.progress(job.id, 1, 4)
    await run_to_started(broker)
    assert await broker.progress(job.id, 3, 4)
    record = await broker.get(job.id)
    assert record is not None
    assert (record.tiles_done, record.tiles_total) == (3, 4)
    assert not await broker.progress("0" * 32, 1, 4)
    assert await broker.get("0" * 32) is None  # no record resurrected without a TTL


# --- observability ------------------------------------------------------------------------


async def test_queue_depth_oldest_age_and_dead_letter_depth(broker: Broker) -> None:
    assert await broker.queue_depth() == 0
    assert await broker.oldest_queued_age_seconds() == 0.0
    assert await broker.dead_letter_depth() == 0

    for _ in range(3):
        await submit(broker)
    await anyio.sleep(0.2)
    assert await broker.queue_depth() == 3
    assert 0.2 <= await broker.oldest_queued_age_seconds() < 5

    delivery = await run_to_started(broker)
    assert await broker.queue_depth() == 2
    assert await broker.running_count() == 1
    await broker.fail(delivery, "bad input", retry=False)
    assert await broker.dead_letter_depth() == 1
    assert await broker.running_count() == 0
    assert await stream_length(broker) == 2


async def test_heartbeats_list_live_workers_until_they_expire(broker: Broker) -> None:
    await broker.heartbeat("gpu-0", 0.3, {"engine": "torch"})
    await broker.heartbeat("gpu-1", 10, {"engine": "tensorrt"})
    workers = {w["worker_id"]: w for w in await broker.live_workers()}
    assert set(workers) == {"gpu-0", "gpu-1"}
    assert workers["gpu-1"]["engine"] == "tensorrt"
    assert workers["gpu-1"]["last_seen"] <= time.time()

    await anyio.sleep(0.4)
    assert [w["worker_id"] for w in await broker.live_workers()] == ["gpu-1"]

    await broker.retire("gpu-1")
    assert await broker.live_workers() == []


async def test_ping_is_true_for_a_live_server_and_false_for_none(broker: Broker) -> None:
    assert await broker.ping()
    # No retries: the default client retries a refused connection with back-off.
    nowhere = Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    try:
        assert not await Broker(nowhere, broker.settings, broker.store).ping()
    finally:
        await nowhere.aclose()


async def test_open_broker_connects_for_the_block_and_needs_a_url(settings: Settings) -> None:
    async with open_broker(settings, client_name="test") as opened:
        assert await opened.ping()
    with pytest.raises(ValueError):
        async with open_broker(settings.model_copy(update={"redis_url": None})):
            pass
    with pytest.raises(ValueError, match="HDR_STORAGE_URL"):
        async with open_broker(settings.model_copy(update={"storage_url": None})):
            pass


async def test_estimated_seconds_scale_the_seconds_per_megapixel_of_finished_jobs(
    broker: Broker,
) -> None:
    first = await submit(broker, width=2000, height=1000)
    assert first.estimated_seconds is None  # nothing finished yet to learn from
    delivery = await run_to_started(broker)
    await anyio.sleep(0.2)
    broker.store.put(result_name(first.id), b"EXR")
    assert await broker.complete(delivery, TIMINGS, 2000, 1000)  # 2 MP in about 0.2 s
    per_mp = float(await broker.redis.hget(broker.keys.stats, "seconds_per_megapixel"))
    assert 0.1 / 2 <= per_mp < 5.0 / 2

    bigger = await submit(broker, width=4000, height=2000)  # 8 MP: four times the work
    assert bigger.estimated_seconds == pytest.approx(round(per_mp * 8, 2))
    assert (await broker.get(bigger.id)).estimated_seconds == bigger.estimated_seconds  # type: ignore[union-attr]


async def test_megapixels_per_key_per_minute_are_charged_and_refused_past_the_budget(
    broker: Broker,
) -> None:
    limited = variant(broker, max_megapixels_per_key_per_minute=5.0)
    if time.time() % 60 > 55:  # keep all submits inside one clock minute
        await anyio.sleep(60 - time.time() % 60 + 0.1)
    await submit(limited, owner="alice", width=2000, height=1000, idempotency_key="a")
    await submit(limited, owner="alice", width=2000, height=1000)
    again = await submit(limited, owner="alice", width=2000, height=1000, idempotency_key="a")
    with pytest.raises(RateLimited) as refused:
        await submit(limited, owner="alice", width=2000, height=1000)
    bob = await submit(limited, owner="bob", width=2000, height=1000)  # his own budget
    with pytest.raises(JobTooLarge, match="HDR_MAX_MEGAPIXELS_PER_KEY_PER_MINUTE"):
        await submit(limited, owner="carol", width=3000, height=2000)  # 6 MP: never fits

    assert again.id != bob.id  # the idempotent retry returned the first job, uncharged
    assert 1 <= refused.value.retry_after <= 60
    assert "4.0 of its 5 megapixels" in refused.value.message
    assert await limited.queue_depth() == 3


async def test_a_job_that_is_not_queued_gives_its_megapixels_back(broker: Broker) -> None:
    limited = variant(broker, max_megapixels_per_key_per_minute=3.0, max_queue_length=1)
    if time.time() % 60 > 55:
        await anyio.sleep(60 - time.time() % 60 + 0.1)
    await submit(limited, width=1000, height=1000)
    for _ in range(3):  # without the refund, the third would be rate limited
        with pytest.raises(QueueFull):
            await submit(limited, width=1000, height=1000)
    used = await broker.redis.get(broker.keys.cost(None, int(time.time() // 60)))
    assert float(used) == pytest.approx(1.0)
