"""The webhook due-set: claiming due notifications and settling them, atomically.

A job's final transition (see ``notify`` in :mod:`service.queue.scripts`) adds the job id
to the ``webhooks`` sorted set, scored by when its notification is due, and sets the
record's ``webhook_status`` to ``pending``. Delivery state lives on the job record
(``webhook_status``, ``webhook_attempts``, ``webhook_error``), so it is shown with the
job and expires with it; the set holds nothing but ids and due times, so a restart of
any process loses nothing.

Several dispatchers (one per API replica) may share the set. :meth:`WebhookQueue.claim`
takes an entry only while it is due and, in the same script, pushes its due time out by
a lease: another dispatcher then sees it as not due, and if this one dies mid-attempt
the entry becomes due again when the lease ends (at-least-once delivery, which the
constant ``webhook-id`` lets receivers deduplicate).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from redis.asyncio import Redis

from service.queue.jobs import JobRecord, WebhookStatus
from service.queue.keys import Keys

log = logging.getLogger(__name__)

#: KEYS webhooks, job; ARGV job_id, now, lease_until
#: -> {'claimed', HGETALL} | {'taken'} (not due: another dispatcher has it) | {'expired'}
#:    | {'settled'} (delivered or failed already)
_CLAIM: Final = f"""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return {{'taken'}} end
local status = redis.call('HGET', KEYS[2], 'webhook_status')
if status ~= '{WebhookStatus.PENDING.value}' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  if status then return {{'settled'}} end
  return {{'expired'}}
end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'webhook_attempts', 1)
return {{'claimed', redis.call('HGETALL', KEYS[2])}}
"""

#: KEYS webhooks, job; ARGV job_id, status, due_at, error ('' for none), record_ttl -> 1
_SETTLE: Final = f"""
local exists = redis.call('EXISTS', KEYS[2]) == 1
if exists and ARGV[2] == '{WebhookStatus.PENDING.value}' then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
-- Only an existing record is written: an HSET would recreate an expired one without TTL.
if exists then
  redis.call('HSET', KEYS[2], 'webhook_status', ARGV[2])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'webhook_error', ARGV[4]) end
  -- An attempt's outcome is a state change of the job: its TTL restarts, and while a
  -- retry is due the record (which the retry sends) lives a full TTL past it.
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return 1
"""


@dataclass(frozen=True)
class WebhookClaim:
    """A notification this dispatcher holds until it settles it or the lease ends."""

    record: JobRecord
    """The job's record at the claim; ``webhook_attempts`` counts this attempt."""

    @property
    def attempt(self) -> int:
        """1 for the first attempt."""
        return self.record.webhook_attempts


class ClaimMiss(str, Enum):
    """Why :meth:`WebhookQueue.claim` got nothing."""

    TAKEN = "taken"
    """Not due (any more): another dispatcher claimed it first."""
    EXPIRED = "expired"
    """The job record expired before its notification went out; the entry is dropped."""
    SETTLED = "settled"
    """Delivered or given up already; the stale entry is dropped."""


class WebhookQueue:
    """The ``webhooks`` due-set of one deployment."""

    def __init__(self, redis: Redis, keys: Keys, ttl_seconds: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        """The job TTL: a settled record lives this long after its webhook's last outcome
        (and after its next retry while one is due)."""
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)

    async def due(self, now: float, count: int) -> list[str]:
        """Up to ``count`` job ids whose notification is due at ``now``, oldest first."""
        ids: Any = await self.redis.zrangebyscore(
            self.keys.webhooks, "-inf", repr(now), start=0, num=count
        )
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def pending(self) -> int:
        """Notifications queued or waiting for a retry."""
        return int(await self.redis.zcard(self.keys.webhooks))

    async def claim(self, job_id: str, now: float, lease_until: float) -> WebhookClaim | ClaimMiss:
        """Take the job's notification for one attempt, if it is due at ``now``.

        Its due time moves to ``lease_until``: if no :meth:`settle` comes by then (the
        dispatcher died), it is due again.
        """
        reply: Any = await self._claim(
            keys=[self.keys.webhooks, self.keys.job(job_id)],
            args=[job_id, repr(now), repr(lease_until)],
        )
        if reply[0] != b"claimed":
            miss = ClaimMiss(reply[0].decode())
            if miss is ClaimMiss.EXPIRED:
                log.warning("webhook of job %s dropped: the job expired first", job_id)
            return miss
        return WebhookClaim(JobRecord.from_flat(reply[1]))

    async def settle(
        self,
        job_id: str,
        status: WebhookStatus,
        *,
        due_at: float = 0.0,
        error: str | None = None,
    ) -> None:
        """Record an attempt's outcome: ``pending`` is due again at ``due_at``; delivered
        and failed leave the set. ``error`` (if any) becomes the record's webhook_error."""
        ttl = self.ttl_seconds
        if status is WebhookStatus.PENDING:
            ttl += max(0, math.ceil(due_at - time.time()))
        await self._settle(
            keys=[self.keys.webhooks, self.keys.job(job_id)],
            args=[job_id, status.value, repr(due_at), error or "", ttl],
        )
