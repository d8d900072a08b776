"""One consumer name per live worker: a worker does not start under the name of a live
one, and is not kept out by the heartbeat a dead one left behind."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from service.config import Settings
from service.queue import Broker
from service.worker.check import live_namesake
from tests.factories import REPO
from tests.worker.harness import worker_env

pytestmark = pytest.mark.anyio


@pytest.fixture
def fast_beats(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"heartbeat_interval_seconds": 0.2, "heartbeat_ttl_seconds": 1.0}
    )


@contextlib.asynccontextmanager
async def live_worker(broker: Broker, settings: Settings, name: str) -> AsyncIterator[None]:
    """A heartbeat under ``name`` renewed like a running worker's, for the block."""

    async def beat() -> None:
        while True:
            info = {"host": "elsewhere", "pid": 4242, "ready": True}
            await broker.heartbeat(name, settings.heartbeat_ttl_seconds, info)
            await asyncio.sleep(settings.heartbeat_interval_seconds)

    task = asyncio.create_task(beat())
    try:
        await asyncio.sleep(0)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await broker.retire(name)


async def test_a_worker_refuses_the_name_of_a_live_worker(
    broker: Broker, fast_beats: Settings
) -> None:
    env = worker_env(fast_beats, HDR_WORKER_ID="w-twin")
    async with live_worker(broker, fast_beats, "w-twin"):
        started = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service", "worker"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert started.returncode == 2, started.stderr
    assert "a live worker is already named 'w-twin'" in started.stderr
    assert "host elsewhere, pid 4242" in started.stderr


async def test_a_dead_workers_heartbeat_delays_its_successor_only_until_it_expires(
    broker: Broker, fast_beats: Settings
) -> None:
    await broker.heartbeat("w-dead", fast_beats.heartbeat_ttl_seconds, {"pid": 1})  # never renewed
    named = fast_beats.model_copy(update={"worker_id": "w-dead"})
    assert await live_namesake(named) is None
    assert await broker.redis.get(broker.keys.heartbeat("w-dead")) is None
