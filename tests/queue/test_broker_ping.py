"""Broker.ping: a readiness check that answers in bounded time, and never raises."""

from __future__ import annotations

import time

import pytest

from service.config import Settings
from service.queue import Broker, open_broker

pytestmark = pytest.mark.anyio


async def test_ping_is_true_while_redis_answers(broker: Broker) -> None:
    assert await broker.ping(timeout=1.0)


async def test_ping_of_an_unreachable_redis_is_false_within_its_timeout(
    settings: Settings,
) -> None:
    nowhere = settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})
    async with open_broker(nowhere) as broker:
        started = time.monotonic()
        assert not await broker.ping(timeout=0.3)
        assert time.monotonic() - started < 1.0
