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
from service.queue import JobState, open_broker
from service.storage import result_name
from service.worker.models import ModelSet
from tests.factories import bracket_uploads, job_params
from tests.worker.engines import ReferenceEngine, served
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
        models = ModelSet(served={"afunet": served("afunet", slow)}, preferred="afunet")
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
