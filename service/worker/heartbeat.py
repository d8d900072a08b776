"""A worker's heartbeat: a key with a TTL that says it lives, whether it is ready and why.

Written every ``heartbeat_interval_seconds``; it expires ``heartbeat_ttl_seconds`` after
the last write, so a dead worker disappears from ``GET /v1/models`` and fails its
``worker --check`` on its own. Each successful beat also renews the claim of the job in
hand (``after_beat``), so a live worker keeps its job however slow a tile batch is.
A failed write only marks Redis unreachable (``redis_ok``); the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from service.config import Settings
from service.metrics import WorkerMetrics
from service.queue import Broker

log = logging.getLogger(__name__)


class Heartbeat:
    """The heartbeat of one worker process."""

    def __init__(
        self,
        broker: Broker,
        settings: Settings,
        metrics: WorkerMetrics,
        *,
        info: Callable[[], dict[str, Any]],
        after_beat: Callable[[], Awaitable[None]],
        ready: Callable[[], bool],
    ) -> None:
        """``info``: the JSON body to announce; ``after_beat``: run after each successful
        write; ``ready``: the verdict exported as the ready gauge."""
        self.broker = broker
        self.settings = settings
        self.metrics = metrics
        self.redis_ok = False
        """Whether the last write (or the worker's last Redis call) reached Redis."""
        self._info = info
        self._after_beat = after_beat
        self._ready = ready

    async def beat(self) -> None:
        """Write the heartbeat once; a Redis failure only marks the worker not ready."""
        worker_id = self.settings.worker_id
        try:
            await self.broker.heartbeat(
                worker_id, self.settings.heartbeat_ttl_seconds, self._info()
            )
        except (RedisError, OSError) as exc:
            if self.redis_ok:
                log.warning("heartbeat failed, Redis unreachable: %s", exc)
            self.redis_ok = False
            self.metrics.heartbeat_errors.inc()
        else:
            if not self.redis_ok:
                log.info("heartbeat written; Redis reachable")
            self.redis_ok = True
            self.metrics.heartbeats.inc()
            self.metrics.last_heartbeat.set(time.time())
            await self._after_beat()
        self.metrics.ready.set(1 if self._ready() else 0)

    async def run(self) -> None:
        """Beat every interval until cancelled."""
        while True:
            await self.beat()
            await asyncio.sleep(self.settings.heartbeat_interval_seconds)

    async def retire(self) -> None:
        """Remove the heartbeat at a clean shutdown (a failure is only logged)."""
        try:
            await self.broker.retire(self.settings.worker_id)
        except (RedisError, OSError) as exc:
            log.warning("could not remove the heartbeat: %s", exc)
