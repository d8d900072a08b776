"""Faults of the blob store and of Redis while a worker runs a job: the attempt fails with
the store's or Redis' words as its reason, is retried per max_attempts, and is never
recomputed in a loop nor reported as a lost worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from service.config import Settings
from service.queue import Broker, JobState, open_broker
from service.storage import result_name
from service.storage.file import FileStore
from service.worker.models import ModelSet
from tests.factories import bracket_uploads, job_params
from tests.worker.engines import ReferenceEngine, serving_only
from tests.worker.harness import free_port, redis_server, until, worker_thread

pytestmark = pytest.mark.anyio


def models(delay: float = 0.0) -> ModelSet:
    return serving_only(ReferenceEngine(delay))


async def submit(broker: Broker, size: int = 64, **params: object) -> str:
    uploads = bracket_uploads(size, size)
    record = await broker.submit(job_params(uploads, **params), [d for _, d in uploads])
    return record.id


async def test_a_store_fault_writing_the_result_fails_the_attempts_with_the_stores_reason(
    broker: Broker, service_settings: Settings, blob_store: FileStore
) -> None:
    settings = service_settings.model_copy(update={"max_attempts": 2})
    job_id = await submit(broker)
    # A directory where the result goes: every rename onto it fails, as a full or
    # read-only store would.
    (blob_store.root / result_name(job_id) / "blocker").mkdir(parents=True)

    with worker_thread(settings, models()):
        record = await until(broker, job_id, lambda r: r.status.is_final, timeout=60)

    assert record.status is JobState.FAILED
    assert record.attempts == 2  # retried once, then given up: no loop
    assert record.error is not None
    assert record.error.startswith("failed after 2 attempts: blob store cannot write")
    assert result_name(job_id) in record.error
    assert "worker lost" not in record.error
    assert await broker.dead_letter_depth() == 1
    assert [b.name for b in blob_store.list("jobs/")] == []  # the uploads went with it


async def test_redis_refusing_writes_mid_job_fails_it_with_a_reason_naming_redis(
    service_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    own = service_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{port}/0", "max_attempts": 1}
    )
    with redis_server(tmp_path, "--maxmemory-policy", "noeviction", port=port):
        async with open_broker(own) as broker:
            await broker.ensure_group()
            job_id = await submit(broker, 96, tile_size=32)  # 25 tiles, 0.2 s each
            admin = redis.Redis(port=port)
            try:
                with worker_thread(own, models(delay=0.2)):
                    await until(broker, job_id, lambda r: r.tiles_done >= 1, timeout=60)
                    admin.config_set("maxmemory", 1)  # every write is refused now
                    time.sleep(1.0)
                    admin.config_set("maxmemory", 0)  # the failure can be recorded again
                    record = await until(broker, job_id, lambda r: r.status.is_final, 60)
            finally:
                admin.close()

    assert record.status is JobState.FAILED
    assert record.error is not None
    assert record.error.startswith("failed after 1 attempts: Redis refused a write")
    assert "maxmemory" in record.error
    assert "worker lost" not in record.error
    assert record.tiles_done < record.tiles_total  # stopped early, not computed in vain
