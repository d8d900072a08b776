"""Issue 12: a worker does not mistake a slow Redis for a lost job.

Redis is a server of the test's own, frozen with SIGSTOP mid-job for longer than the
visibility timeout: the worker's claim renewals and progress reports stall or fail, but
only an answer from Redis that another worker took the job makes it let go, so it
finishes the job itself, once.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from service.config import Settings
from service.queue import Broker, Delivery, JobState, open_broker
from service.storage import result_name
from service.worker.job import ActiveJob
from service.worker.models import ModelSet
from service.worker.runner import Worker
from tests.factories import bracket_uploads, job_params
from tests.worker.engines import ReferenceEngine, serving_only
from tests.worker.harness import redis_server, until, worker_thread

pytestmark = pytest.mark.anyio

VISIBILITY = 1.0
FREEZE = 3 * VISIBILITY


async def test_worker_keeps_its_job_through_a_redis_stall_longer_than_the_visibility_timeout(
    service_settings: Settings, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as (url, server):
        settings = service_settings.model_copy(
            update={"redis_url": url, "visibility_timeout_seconds": VISIBILITY}
        )
        slow = ReferenceEngine(delay=1.0)
        models = serving_only(slow)
        async with open_broker(settings, client_name="test") as broker:
            await broker.ensure_group()
            uploads = bracket_uploads(48, 64)
            submitted = await broker.submit(
                job_params(uploads, exposure_values=(0.0, 2.0, 4.0), tile_size=40),
                [data for _, data in uploads],  # tile 40: 2 tiles, a second each
                width=64,
                height=48,
            )
            with worker_thread(settings, models):
                await until(broker, submitted.id, lambda r: r.status is JobState.RUNNING)
                server.send_signal(signal.SIGSTOP)
                try:
                    await anyio.sleep(FREEZE)
                finally:
                    server.send_signal(signal.SIGCONT)
                record = await until(broker, submitted.id, lambda r: r.status.is_final, 60)
            assert record.status is JobState.SUCCEEDED, record
            assert record.attempts == 1 and record.worker == settings.worker_id
            assert broker.store.exists(result_name(submitted.id))


async def test_a_job_is_held_from_its_receipt_until_it_is_settled(broker: Broker) -> None:
    """The entries a worker's take-over skips: every job in hand from the moment it is
    received (before its start is recorded, when its claim is not renewed yet: a stall
    right after START once made the worker take its own job over, in CI) until its end is
    being recorded, except a hung one."""
    settings = broker.settings
    worker = Worker(settings, broker, models=ModelSet(served={}), health_port=-1)
    received, running, settling, hung = (
        ActiveJob(Delivery(f"{i}-0", f"job{i}", 1, settings.worker_id, False, "afunet"))
        for i in range(4)
    )
    running.start_recorded = True
    settling.settling = True
    hung.start_recorded = True
    hung.last_progress -= settings.job_stall_seconds + 1
    for job in (received, running, settling, hung):
        worker._jobs[job.job_id] = job
    assert worker._held_entries() == {"0-0", "1-0"}
