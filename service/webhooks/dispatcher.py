"""The webhook dispatcher: delivers due job notifications from Redis, with retries.

It runs as an asyncio task of the API process (:func:`run_dispatcher`, entered by the
app's lifespan), not in a worker: workers are busy with the GPU, the API already has an
event loop and scales out on its own. Every API replica runs one; they share the due-set
in Redis and each claim is atomic (:class:`service.queue.webhooks.WebhookQueue`), so a
notification goes out once, and one that a stopped or crashed replica left behind is
sent by any other (or by the same one after a restart).

One attempt: re-check the URL (:mod:`service.webhooks.guard`), connect to the address
that check resolved, POST the job's public JSON signed per Standard Webhooks, and read at
most :data:`MAX_RESPONSE_BYTES` of the answer, all within ``webhook_timeout_seconds``.
2xx delivers. 5xx, a timeout or a connection error is retried after the next delay of
``webhook_retry_seconds`` (jittered, so that a receiver coming back is not hit by every
retry at once); after the last delay the notification is given up. Anything else (a
4xx, a redirect, which is never followed, or a URL the guard now refuses) is given up at
once: sending it again would get the same answer. The outcome is recorded on the job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Final

import httpx
from redis.exceptions import RedisError

from service.config import Settings
from service.errors import InvalidWebhookUrl
from service.job_public import JobPublic
from service.metrics import WebhookMetrics, WebhookOutcome, WebhookResult
from service.queue import Broker, JobRecord
from service.queue.jobs import WebhookStatus
from service.queue.webhooks import ClaimMiss, WebhookClaim, WebhookQueue
from service.webhooks.guard import UnresolvedHost, WebhookTarget, check_url
from service.webhooks.signing import message_id, signature_headers

log = logging.getLogger(__name__)

#: Most bytes of a receiver's answer read (the status is what counts).
MAX_RESPONSE_BYTES: Final = 4096
#: Attempts one dispatcher runs at once (a slow receiver must not hold up the others).
CONCURRENCY: Final = 8
#: A claim outlives the attempt's bound by this much before another dispatcher may retry.
LEASE_MARGIN_SECONDS: Final = 10.0
#: Retry delays are multiplied by a factor drawn from 1 +- this.
JITTER: Final = 0.25
USER_AGENT: Final = "afunet-service-webhooks"
#: Beyond the attempt bound, how long stopping waits for the attempts in progress.
STOP_GRACE_SECONDS: Final = 1.0

_RETRIED: Final = frozenset(
    {WebhookResult.SERVER_ERROR, WebhookResult.TIMEOUT, WebhookResult.CONNECTION_ERROR}
)


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt got."""

    result: WebhookResult
    detail: str
    """For the record's webhook_error and the log: the status, or the error."""


def payload(record: JobRecord) -> bytes:
    """The body sent: the job's public JSON at its final state, without its webhook state
    (which changes between retries, while the signed body of one event should not)."""
    public = JobPublic.from_record(record).model_dump(mode="json", exclude={"webhook"})
    return json.dumps(public, separators=(",", ":")).encode()


def jittered(delay: float) -> float:
    """``delay`` spread by +-JITTER, so that retries of many notifications do not align."""
    return delay * (1 + random.uniform(-JITTER, JITTER))


class WebhookDispatcher:
    """Delivers due notifications until :meth:`stop`; see the module docstring."""

    def __init__(self, broker: Broker, settings: Settings, metrics: WebhookMetrics) -> None:
        if settings.webhook_secret is None:
            raise ValueError("webhooks need settings.webhook_secret")
        self.queue = WebhookQueue(broker.redis, broker.keys, int(broker.settings.job_ttl_seconds))
        self.settings = settings
        self.metrics = metrics
        self._secret = settings.webhook_secret.get_secret_value()
        self._timeout = settings.webhook_timeout_seconds
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        """Ask :meth:`run` to return once the attempts in progress have ended."""
        self._stopping.set()

    async def run(self) -> None:
        """Poll the due-set and deliver, until :meth:`stop`."""
        async with httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would bypass the address pinning
            timeout=self._timeout,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
            # No connection reuse: a pooled connection is keyed by the address it went to,
            # and one opened (and its certificate checked) for another host name at the
            # same address must not carry this host's request.
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client:
            log.info("webhook dispatcher started")
            try:
                while not self._stopping.is_set():
                    try:
                        busy = await self._tick(client)
                    except (RedisError, OSError) as exc:
                        log.warning("webhook dispatcher: Redis: %s", str(exc) or type(exc))
                        busy = False
                    if not busy:
                        with suppress(TimeoutError):
                            await asyncio.wait_for(
                                self._stopping.wait(), self.settings.webhook_poll_seconds
                            )
            finally:
                if self._tasks:
                    try:
                        await asyncio.wait(self._tasks)
                    except asyncio.CancelledError:
                        for task in self._tasks:
                            task.cancel()
                        raise
            log.info("webhook dispatcher stopped")

    async def _tick(self, client: httpx.AsyncClient) -> bool:
        """Claim what is due (up to the free slots) and start its attempts; True if any."""
        free = CONCURRENCY - len(self._tasks)
        if free <= 0:
            await asyncio.wait(
                self._tasks,
                timeout=self.settings.webhook_poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            return True
        now = time.time()
        self.metrics.pending.set(await self.queue.pending())
        started = False
        for job_id in await self.queue.due(now, free):
            claim = await self.queue.claim(job_id, now, now + self._timeout + LEASE_MARGIN_SECONDS)
            if not isinstance(claim, WebhookClaim):
                if claim is ClaimMiss.EXPIRED:
                    self.metrics.deliveries.labels(outcome=WebhookOutcome.EXPIRED.value).inc()
                continue
            task = asyncio.create_task(self._deliver(client, claim), name=f"webhook-{job_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started = True
        return started

    async def _deliver(self, client: httpx.AsyncClient, claim: WebhookClaim) -> None:
        """One attempt and its bookkeeping; never raises (the claim's lease covers a crash)."""
        record = claim.record
        started = time.monotonic()
        outcome = await self._attempt(client, record)
        self.metrics.attempt_seconds.observe(time.monotonic() - started)
        self.metrics.attempts.labels(result=outcome.result.value).inc()
        schedule = self.settings.webhook_retry_seconds
        try:
            if outcome.result is WebhookResult.SUCCESS:
                await self.queue.settle(record.id, WebhookStatus.DELIVERED)
                self.metrics.deliveries.labels(outcome=WebhookOutcome.DELIVERED.value).inc()
                log.info("webhook of job %s delivered (attempt %s)", record.id, claim.attempt)
            elif outcome.result in _RETRIED and claim.attempt <= len(schedule):
                delay = jittered(schedule[claim.attempt - 1])
                error = f"attempt {claim.attempt}: {outcome.detail}; retrying"
                await self.queue.settle(
                    record.id, WebhookStatus.PENDING, due_at=time.time() + delay, error=error
                )
                log.info("webhook of job %s: %s in %.1f s", record.id, error, delay)
            else:
                error = f"gave up after {claim.attempt} attempt(s): {outcome.detail}"
                await self.queue.settle(record.id, WebhookStatus.FAILED, error=error)
                self.metrics.deliveries.labels(outcome=WebhookOutcome.FAILED.value).inc()
                log.warning("webhook of job %s %s", record.id, error)
        except (RedisError, OSError) as exc:
            # Unsettled: the claim's lease ends and this or another dispatcher tries again.
            log.warning("webhook of job %s: cannot record the attempt: %s", record.id, exc)

    async def _attempt(self, client: httpx.AsyncClient, record: JobRecord) -> AttemptOutcome:
        """Check, sign, send; classify what happened."""
        try:
            return await asyncio.wait_for(self._send(client, record), self._timeout)
        except UnresolvedHost as exc:
            return AttemptOutcome(WebhookResult.CONNECTION_ERROR, exc.message)
        except InvalidWebhookUrl as exc:
            return AttemptOutcome(WebhookResult.REFUSED, exc.message)
        except (TimeoutError, httpx.TimeoutException):
            return AttemptOutcome(WebhookResult.TIMEOUT, f"no answer within {self._timeout:g} s")
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            return AttemptOutcome(WebhookResult.CONNECTION_ERROR, f"connection error: {detail}")
        except Exception as exc:
            # Settled (given up) rather than left to its lease: a fault that repeats would
            # otherwise be retried, uncounted, until the job expires.
            log.exception("webhook of job %s: internal error", record.id)
            return AttemptOutcome(WebhookResult.INTERNAL_ERROR, f"internal error: {exc!r}")

    async def _send(self, client: httpx.AsyncClient, record: JobRecord) -> AttemptOutcome:
        assert record.webhook_url is not None
        target = await check_url(
            record.webhook_url, self.settings.webhook_allowed_hosts, self._timeout
        )
        body = payload(record)
        headers = signature_headers(self._secret, message_id(record.id), body, int(time.time()))
        return await post(client, target, headers, body)


async def post(
    client: httpx.AsyncClient, target: WebhookTarget, headers: dict[str, str], body: bytes
) -> AttemptOutcome:
    """POST ``body`` to the checked addresses of ``target`` in turn until one connects.

    Like a client trying a dual-stack name's addresses, but only those the guard checked:
    never a second DNS answer. The name stays in ``Host`` and, for https, in SNI and the
    certificate check.
    """
    for address in target.addresses[:-1]:
        try:
            return await _post(client, target, address, headers, body)
        except httpx.ConnectError as exc:
            log.debug("webhook to %s: %s unreachable: %s", target.host, address, exc)
    return await _post(client, target, target.addresses[-1], headers, body)


async def _post(
    client: httpx.AsyncClient,
    target: WebhookTarget,
    address: str,
    headers: dict[str, str],
    body: bytes,
) -> AttemptOutcome:
    url = target.url
    extensions: dict[str, str] = {}
    if address != target.host:
        url = url.copy_with(host=address.split("%", 1)[0])
        headers = {**headers, "host": target.url.netloc.decode("ascii").rpartition("@")[2]}
        if url.scheme == "https":
            extensions["sni_hostname"] = target.host
    request = client.build_request(
        "POST", url, content=body, headers=headers, extensions=extensions
    )
    response = await client.send(request, stream=True)
    try:
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= MAX_RESPONSE_BYTES:
                break
    finally:
        await response.aclose()
    detail = f"HTTP {response.status_code}"
    if response.is_success:
        return AttemptOutcome(WebhookResult.SUCCESS, detail)
    if response.status_code >= 500:
        return AttemptOutcome(WebhookResult.SERVER_ERROR, detail)
    return AttemptOutcome(WebhookResult.CLIENT_ERROR, detail)


@asynccontextmanager
async def run_dispatcher(
    broker: Broker, settings: Settings, metrics: WebhookMetrics
) -> AsyncIterator[WebhookDispatcher | None]:
    """Run a dispatcher for the block (the API's lifespan); none without a signing key."""
    if settings.webhook_secret is None:
        yield None
        return
    dispatcher = WebhookDispatcher(broker, settings, metrics)
    task = asyncio.create_task(dispatcher.run(), name="webhook-dispatcher")
    try:
        yield dispatcher
    finally:
        dispatcher.stop()
        try:
            # In-flight attempts end within their timeout; past that, cancel: their
            # claims' leases end and the notifications are sent again later.
            await asyncio.wait_for(task, settings.webhook_timeout_seconds + STOP_GRACE_SECONDS)
        except TimeoutError:
            log.warning("webhook dispatcher did not stop in time; cancelled")
