"""The pipelined worker (``prefetch_jobs``): the next job is claimed and decoded while the
engine runs one, and a prefetched job is kept, cancelled, handed back and re-delivered
like the running one. In-process workers on test engines, then real worker processes
killed and stopped."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.queue import Broker, JobRecord, JobState
from service.worker.runner import EXIT_OK
from tests.factories import bracket_uploads, job_params
from tests.worker import engines
from tests.worker.engines import ReferenceEngine, serving_only
from tests.worker.harness import until, worker_env, worker_process, worker_thread
from tests.worker.test_recovery import ready_workers, wait_exit

pytestmark = pytest.mark.anyio


async def submit(broker: Broker, size: int = 96, model: str | None = None, **params: Any) -> str:
    """A job of ``size``-pixel square frames in 48-pixel tiles (9 tiles for 96 and for 128)."""
    uploads = bracket_uploads(size, size)
    params.setdefault("tile_size", 48)
    record = await broker.submit(
        job_params(uploads, **params), [data for _, data in uploads], model=model
    )
    return record.id


def final(record: JobRecord) -> bool:
    return record.status.is_final


def sample(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    assert value is not None, name
    return value


async def prefetched(broker: Broker, first: str, second: str) -> JobRecord:
    """Wait until ``first`` runs tile batches and ``second`` is claimed beside it.

    That state lasts while ``first``'s remaining tile batches run (8 of 9): the tests' engine
    delays keep it at 1.6 s or more, so a poll of a loaded machine does not miss it."""
    await until(broker, first, lambda r: r.tiles_done >= 1)
    record = await until(broker, second, lambda r: r.status is JobState.RUNNING)
    assert record.tiles_done == 0  # claimed, decoded, waiting: not on the engine
    running = await broker.get(first)
    assert running is not None and running.status is JobState.RUNNING
    return record


async def test_next_job_is_claimed_while_the_engine_runs_one_and_both_succeed(
    broker: Broker, service_settings: Settings
) -> None:
    settings = service_settings.model_copy(update={"prefetch_jobs": 1})
    engine = ReferenceEngine(delay=0.2)
    first, second, third = [await submit(broker) for _ in range(3)]
    with worker_thread(settings, serving_only(engine)) as worker:
        await prefetched(broker, first, second)
        # Only one job is prefetched: the third waits in the queue meanwhile.
        queued = await broker.get(third)
        assert queued is not None and queued.status is JobState.QUEUED
        records = [await until(broker, job, final) for job in (first, second, third)]

    assert [r.status for r in records] == [JobState.SUCCEEDED] * 3
    assert all(r.attempts == 1 and r.tiles_done == r.tiles_total == 9 for r in records)
    registry = worker.metrics.registry
    assert sample(registry, "hdr_worker_tiles_per_engine_call_count") == 27  # batch 1
    assert sample(registry, "hdr_worker_tiles_per_engine_call_sum") == 27
    assert sample(registry, "hdr_worker_prefetch_wait_seconds_count") == 3
    # 27 engine calls of at least 0.1 s each.
    assert sample(registry, "hdr_worker_engine_busy_seconds_total") >= 2.7


async def test_without_prefetch_the_next_job_waits_in_the_queue(
    broker: Broker, service_settings: Settings
) -> None:
    settings = service_settings.model_copy(update={"prefetch_jobs": 0})
    first, second = await submit(broker), await submit(broker)
    with worker_thread(settings, serving_only(ReferenceEngine(delay=0.2))):
        await until(broker, first, lambda r: r.tiles_done >= 1)
        waiting = await broker.get(second)
        assert waiting is not None and waiting.status is JobState.QUEUED
        done = await until(broker, first, final)
        assert done.status is JobState.SUCCEEDED
        # The first job was stored and acked before the second was claimed.
        later = await until(broker, second, final)
    assert later.status is JobState.SUCCEEDED
    assert later.started_at is not None and done.finished_at is not None
    assert later.started_at >= done.finished_at


async def test_cancelling_a_prefetched_job_ends_it_before_it_reaches_the_engine(
    broker: Broker, service_settings: Settings
) -> None:
    settings = service_settings.model_copy(update={"prefetch_jobs": 1})
    engine = ReferenceEngine(delay=0.3)
    first, second = await submit(broker, 128), await submit(broker)  # 9 tiles each
    with worker_thread(settings, serving_only(engine)):
        await prefetched(broker, first, second)
        await broker.cancel(second)
        cancelled = await until(broker, second, final)
        still = await broker.get(first)
        assert still is not None and still.status is JobState.RUNNING  # not waited for
        done = await until(broker, first, final, timeout=60)

    assert cancelled.status is JobState.CANCELLED and cancelled.tiles_done == 0
    assert done.status is JobState.SUCCEEDED
    assert engine.calls == 1 + 9  # warm-up and the first job: none for the cancelled one
    assert await broker.running_count() == 0


async def test_stop_hands_a_prefetched_job_back_at_once_and_drains_the_running_one(
    broker: Broker, service_settings: Settings
) -> None:
    settings = service_settings.model_copy(update={"prefetch_jobs": 1, "drain_seconds": 30})
    first, second = await submit(broker, 128), await submit(broker)
    with worker_thread(settings, serving_only(ReferenceEngine(delay=0.3))) as worker:
        await prefetched(broker, first, second)
        worker.request_stop()
        back = await until(broker, second, lambda r: r.status is JobState.QUEUED)
        running = await broker.get(first)
        assert running is not None and running.status is JobState.RUNNING
        done = await until(broker, first, final, timeout=60)

    assert back.attempts == 0 and back.tiles_done == 0  # handed back: no attempt spent
    assert done.status is JobState.SUCCEEDED
    assert worker.exit_code == EXIT_OK
    assert await broker.queue_depth() == 1


async def test_live_worker_keeps_a_prefetched_job_waiting_past_the_visibility_timeout(
    broker: Broker, service_settings: Settings
) -> None:
    hasty = service_settings.model_copy(
        update={
            "prefetch_jobs": 1,
            "visibility_timeout_seconds": 0.5,
            "heartbeat_interval_seconds": 0.1,
        }
    )
    first = await submit(broker, 48)  # one tile of 1.5 s each
    second = await submit(broker, 48)
    idle = ReferenceEngine()
    with worker_thread(hasty, serving_only(ReferenceEngine(delay=1.5))):
        await until(broker, second, lambda r: r.status is JobState.RUNNING)
        other = hasty.model_copy(update={"worker_id": "would-be-thief"})
        with worker_thread(other, serving_only(idle)):
            records = [await until(broker, job, final, timeout=60) for job in (first, second)]

    for record in records:
        assert record.status is JobState.SUCCEEDED
        assert record.attempts == 1 and record.worker == hasty.worker_id
    assert idle.calls == 1  # its warm-up only


@pytest.mark.slow
async def test_prefetched_job_of_a_killed_worker_is_redelivered_and_completes_once(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    engines.write_test_model(repo, "slow", "test-reference")
    settings = service_settings.model_copy(
        update={"model_repo": repo, "visibility_timeout_seconds": 2.0}
    )
    victim_env = worker_env(
        settings, HDR_WORKER_ID="w-victim", HDR_PREFETCH_JOBS="1", TEST_ENGINE_DELAY="1.0"
    )
    with worker_process(victim_env, tmp_path / "victim.log") as victim:
        await ready_workers(broker, {"w-victim"})
        first = await submit(broker, 128, model="slow")
        second = await submit(broker, model="slow")
        await prefetched(broker, first, second)
        victim.send_signal(signal.SIGKILL)
        assert wait_exit(victim) == -signal.SIGKILL

    survivor_env = worker_env(settings, HDR_WORKER_ID="w-survivor", HDR_PREFETCH_JOBS="1")
    with worker_process(survivor_env, tmp_path / "survivor.log"):
        records = [
            await until(broker, job, final, timeout=120, interval=0.1) for job in (first, second)
        ]

    for record in records:
        assert record.status is JobState.SUCCEEDED, record
        assert record.worker == "w-survivor" and record.attempts == 2
    assert await broker.running_count() == 0
    assert await broker.queue_depth() == 0
    assert await broker.dead_letter_depth() == 0


@pytest.mark.slow
async def test_sigterm_hands_back_the_prefetched_job_and_drains_the_running_one(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    engines.write_test_model(repo, "slow", "test-reference")
    settings = service_settings.model_copy(update={"model_repo": repo, "drain_seconds": 60})
    env = worker_env(
        settings, HDR_WORKER_ID="w-drain", HDR_PREFETCH_JOBS="1", TEST_ENGINE_DELAY="0.3"
    )
    with worker_process(env, tmp_path / "worker.log") as process:
        beats = await ready_workers(broker, {"w-drain"})
        first = await submit(broker, 128, model="slow")
        second = await submit(broker, model="slow")
        await prefetched(broker, first, second)
        heartbeat = beats["w-drain"]
        assert heartbeat["metrics_port"]
        process.send_signal(signal.SIGTERM)
        back = await until(broker, second, lambda r: r.status is JobState.QUEUED, interval=0.1)
        assert wait_exit(process) == EXIT_OK

    done = await broker.get(first)
    assert done is not None and done.status is JobState.SUCCEEDED  # drained, not cut
    assert back.attempts == 0 and back.tiles_done == 0
    assert await broker.queue_depth() == 1
    assert "handing prefetched job" in (tmp_path / "worker.log").read_text()
    with pytest.raises(httpx.TransportError):  # the worker and its port are gone
        httpx.get(f"http://127.0.0.1:{heartbeat['metrics_port']}/metrics", timeout=2)
