"""The job broker: a Redis Streams work queue with job records; blobs in a blob store.

Both the API (submit, get, cancel) and the workers (receive, start, touch, progress,
complete, fail, release) use this one class over one ``redis.asyncio`` client and one
:class:`~service.storage.BlobStore`. Redis holds only state (a few KB per job); the
uploads and results live in the store under names built from the job id.

Delivery model
--------------
Jobs are entries of their model's stream (``Keys.stream(model)``), each read through its
own consumer group by the workers that serve that model and no others: a job never
reaches a worker that lacks its model, and each model's queue can be scaled on its own.
A job that names no model is recorded with ``settings.default_model`` at submission. An
entry stays in the group's pending list (PEL) until the job ends, then it is acked *and
deleted*, so each stream only holds jobs that wait or run. A pending entry idle longer than
``visibility_timeout_seconds`` is taken over by the next worker calling :meth:`receive`
(XAUTOCLAIM): that is how the job of a crashed worker runs again. A live worker keeps a
long job from being taken over by calling :meth:`touch` with each progress update.

Attempts are counted on the record (incremented atomically per delivery), not taken
from the PEL's delivery counter, so they survive re-queueing and every path that can
hand a job out. The delivery that would exceed ``max_attempts`` is not handed out: the
job is dead-lettered and failed instead.

Queue length
------------
The length checked against ``max_queue_length`` and reported by :meth:`queue_depth` is
the number of jobs in state ``queued``: accepted and not started (including those
waiting for a retry), kept in a sorted set by the time each entered the queue (its
submission, or its last retry or hand-back). Running jobs do not count (the number of
workers bounds them), and cancelling a queued job frees its slot at once, whereas its
stream entry is only removed when a worker skips it.

Lifetime
--------
A job's record lives ``job_ttl_seconds`` after its last state change (submit, delivery,
start, progress, retry, hand-back, cancel, end): a job that waited long in the queue
keeps its record while it runs and for a full TTL after it ends. Its cancel flag and
idempotency mapping never outlive the record (see ``scripts.refresh``); its blobs go when
it ends badly or is cancelled, its uploads when it succeeds, and the sweeper
(``storage.lifecycle``) removes any left once the record has expired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from service.config import Settings, require_storage_url
from service.errors import IdempotencyKeyReused, JobNotFound, JobTooLarge, QueueFull, RateLimited
from service.queue import scripts
from service.queue.connection import RedisSettings, connect
from service.queue.jobs import (
    JobParams,
    JobRecord,
    JobState,
    StageTimings,
    is_valid_job_id,
    new_job_id,
)
from service.queue.keys import ENTRY_JOB, STAT_JOB_SECONDS, STAT_SECONDS_PER_MEGAPIXEL, Keys
from service.storage import BlobStore, StoreUnavailable, input_name, job_prefix, open_store

log = logging.getLogger(__name__)

#: Longest blocking read; must stay below the client's socket timeout (connection.py).
MAX_BLOCK_MS: Final = 10_000
#: First retry delay after ``fail(retry=True)``; doubles per attempt, capped by the
#: visibility timeout (the latest a pending entry is handed out again anyway).
RETRY_BASE_DELAY_SECONDS: Final = 1.0
#: Retry-After when no job has finished yet to estimate from.
DEFAULT_RETRY_AFTER_SECONDS: Final = 5
MAX_RETRY_AFTER_SECONDS: Final = 300


@dataclass(frozen=True)
class _Entry:
    """A stream entry just read or taken over, before its delivery is counted."""

    model: str
    entry_id: str
    job_id: str


@dataclass(frozen=True)
class Delivery:
    """One hand-out of a job to a worker; pass it back to start/touch/complete/fail."""

    entry_id: str
    """Stream entry id (the handle Redis acks)."""
    job_id: str
    attempts: int
    """Deliveries of this job so far, this one included (1 on the first)."""
    consumer: str
    """Consumer name the entry is pending under."""
    redelivered: bool
    """Taken over from another consumer (or retried) rather than read fresh."""
    model: str
    """The model whose stream holds the entry (the job's model)."""


@dataclass(frozen=True)
class StreamCounts:
    """One model's job stream as the metrics and KEDA see it."""

    length: int
    """Entries: the jobs of the model waiting or running (an entry is deleted when its
    job ends), what KEDA scales on."""
    pending: int
    """Entries handed out and not yet acked: running, or waiting for a retry/reclaim."""


def _no_group(error: Exception) -> bool:
    """A stream read before its consumer group exists (no worker or job created it)."""
    return isinstance(error, ResponseError) and "NOGROUP" in str(error)


class Broker:
    """Redis Streams job queue, job records, uploads and results of one deployment.

    Job state lives in Redis, the bytes of uploads and results in ``store``; the broker
    deletes a job's blobs when the job ends without needing them (uploads once the result
    is stored; everything when it fails, is cancelled, dead-lettered or found expired).
    The broker does not own ``redis`` or ``store``: whoever opened them closes them (see
    :func:`open_broker`).
    """

    def __init__(self, redis: Redis, settings: Settings, store: BlobStore) -> None:
        self.redis = redis
        self.settings = settings
        self.store = store
        self.keys = Keys(settings.key_prefix)
        self._ttl = int(settings.job_ttl_seconds)
        self._visibility_ms = max(1, round(settings.visibility_timeout_seconds * 1000))
        self._reclaim_cursors: dict[str, str] = {}
        """Per stream, where the next XAUTOCLAIM continues walking its PEL."""
        self._turn = 0
        """Rotates which served model's stream a receive looks at first (fairness)."""
        self._submit = redis.register_script(scripts.SUBMIT)
        self._deliver = redis.register_script(scripts.DELIVER)
        self._start = redis.register_script(scripts.START)
        self._touch = redis.register_script(scripts.TOUCH)
        self._progress = redis.register_script(scripts.PROGRESS)
        self._complete = redis.register_script(scripts.COMPLETE)
        self._fail = redis.register_script(scripts.FAIL)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._mark_cancelled = redis.register_script(scripts.MARK_CANCELLED)
        self._release = redis.register_script(scripts.RELEASE)
        self._charge_script = redis.register_script(scripts.CHARGE)

    # ------------------------------------------------------------------ API side

    async def submit(
        self,
        params: JobParams,
        sources: Sequence[BinaryIO | bytes],
        owner: str | None = None,
        idempotency_key: str | None = None,
        *,
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        webhook_url: str | None = None,
        request_digest: str | None = None,
    ) -> JobRecord:
        """Store ``sources`` (kept in order) in the blob store, queue a job over them in
        the stream of ``model`` (None: ``settings.default_model``) and return its record.

        With an ``idempotency_key``, a job already submitted by the same ``owner`` under
        that key is returned instead, and nothing is stored or queued, provided it was
        made from the same ``request_digest``; a different one raises
        :class:`IdempotencyKeyReused` (a job stored without a digest matches any). Raises
        :class:`QueueFull` when ``max_queue_length`` jobs are queued, and
        :class:`StoreUnavailable` when the store cannot take the uploads; either way
        nothing is queued and whatever was stored is deleted again. ``model``, ``width``,
        ``height`` and ``webhook_url`` (checked by the caller) fill the record's fields of
        those names; the frame's megapixels are charged to ``owner``'s budget of the
        minute (:class:`RateLimited` when spent; refunded when nothing is queued), and the
        record gets ``estimated_seconds``.
        """
        if not sources:
            raise ValueError("a job needs at least one input blob")
        idem_key = self.keys.idempotency(owner, idempotency_key) if idempotency_key else None
        if idem_key is not None and (existing := await self._idempotent_job(idem_key)):
            return _same_request(existing, request_digest, idempotency_key)
        megapixels = (width or 0) * (height or 0) / 1e6
        charged = await self._charge(owner, megapixels)
        try:
            record, fresh = await self._store_and_enqueue(
                params,
                sources,
                idem_key,
                JobRecord(
                    id=new_job_id(),
                    status=JobState.QUEUED,
                    created_at=time.time(),
                    owner=owner,
                    model=model or self.settings.default_model,
                    width=width,
                    height=height,
                    webhook_url=webhook_url,
                    request_digest=request_digest,
                    estimated_seconds=await self._estimate_seconds(megapixels),
                ),
            )
        except BaseException:
            await self._refund(charged, megapixels)
            raise
        if not fresh:  # a concurrent duplicate won: this request made no job
            await self._refund(charged, megapixels)
            return _same_request(record, request_digest, idempotency_key)
        return record

    async def _store_and_enqueue(
        self,
        params: JobParams,
        sources: Sequence[BinaryIO | bytes],
        idem_key: str | None,
        draft: JobRecord,
    ) -> tuple[JobRecord, bool]:
        """Store the uploads and queue ``draft``; the job queued and whether it is this
        one (False: a concurrent submit under the same Idempotency-Key won)."""
        job_id = draft.id
        names = tuple(input_name(job_id, i) for i in range(len(sources)))
        try:
            for name, source in zip(names, sources, strict=True):
                await asyncio.to_thread(self.store.put, name, source)
            record = replace(draft, params=replace(params, inputs=names))
            outcome = await self._enqueue(record, idem_key)
            if outcome is None:  # an idempotency mapping outlived its job: one more try
                outcome = await self._enqueue(record, idem_key)
            if outcome is None:
                raise RuntimeError("idempotency mapping kept pointing at an expired job")
        except BaseException:
            await self.drop_blobs(job_id)
            raise
        if outcome.id != job_id:
            await self.drop_blobs(job_id)
        return outcome, outcome.id == job_id

    async def _charge(self, owner: str | None, megapixels: float) -> str | None:
        """Count the job's frame megapixels against ``owner``'s budget of this minute
        (HDR_MAX_MEGAPIXELS_PER_KEY_PER_MINUTE); the key charged, None when unlimited.

        Fixed clock-minute windows: simple and one key per owner and minute, at the price
        of letting up to twice the budget through across a minute boundary.
        """
        limit = self.settings.max_megapixels_per_key_per_minute
        if limit is None or megapixels <= 0:
            return None
        if megapixels > limit:
            raise JobTooLarge(
                f"a {megapixels:.1f} MP frame is more than an API key may submit in a"
                f" minute ({limit:g} MP, HDR_MAX_MEGAPIXELS_PER_KEY_PER_MINUTE)"
            )
        now = time.time()
        key = self.keys.cost(owner, int(now // 60))
        used = await self._charge_script(keys=[key], args=[repr(megapixels), repr(limit), 120])
        if used == b"ok":
            return key
        retry_after = max(1, math.ceil(60 - now % 60))
        raise RateLimited(
            f"this API key submitted {float(used):.1f} of its {limit:g} megapixels this minute;"
            f" this {megapixels:.1f} MP job fits again in {retry_after} s",
            retry_after=retry_after,
        )

    async def _refund(self, key: str | None, megapixels: float) -> None:
        """Give back a charge for a job that was not queued (queue full, store down)."""
        if key is not None:
            try:
                await self.redis.incrbyfloat(key, -megapixels)
            except RedisError as exc:  # the budget is only too strict until the minute ends
                log.warning("could not refund %.1f MP to %s: %s", megapixels, key, exc)

    async def _estimate_seconds(self, megapixels: float) -> float | None:
        """Expected run time: the moving average of recent jobs' run seconds per frame
        megapixel (kept by ``complete``) times this job's megapixels; None before any job
        finished. Queue wait is not included: it depends on the jobs ahead and workers."""
        raw = await self.redis.hget(self.keys.stats, STAT_SECONDS_PER_MEGAPIXEL)
        if raw is None or megapixels <= 0:
            return None
        return round(float(raw) * megapixels, 2)

    async def _enqueue(self, record: JobRecord, idem_key: str | None) -> JobRecord | None:
        """Admit the job atomically; None: retry (the mapping pointed at an expired job)."""
        assert record.model is not None  # submit fills in the default
        keys = [
            self.keys.job(record.id),
            self.keys.queued,
            self.keys.stream(record.model),
            self.keys.models,
        ]
        if idem_key is not None:
            keys.append(idem_key)
        args: list[Any] = [
            record.id,
            repr(record.created_at),
            self._ttl,
            self.settings.max_queue_length,
            ENTRY_JOB,
            self.keys.group,
            record.model,
        ]
        for name, value in record.to_redis().items():
            args += [name, value]
        kind, value = await self._submit(keys=keys, args=args)
        if kind == b"ok":
            log.info("queued job %s (entry %s)", record.id, value.decode())
            return record
        if kind == b"duplicate":
            existing = await self.get(value.decode())
            if existing is not None:
                return existing
            assert idem_key is not None
            await self._drop_mapping(idem_key, value)
            return None
        retry_after = await self._retry_after()
        log.info("queue full (%s jobs queued); retry after %s s", value, retry_after)
        raise QueueFull(
            f"the queue holds {value} jobs, its limit; retry in {retry_after} s",
            retry_after=retry_after,
        )

    async def _idempotent_job(self, idem_key: str) -> JobRecord | None:
        job_id: Any = await self.redis.get(idem_key)
        return None if job_id is None else await self.get(_text(job_id))

    async def _drop_mapping(self, idem_key: str, job_id: bytes) -> None:
        """Delete a mapping to an expired job, unless it changed meanwhile (WATCH)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(idem_key)
            if await pipe.get(idem_key) == job_id:
                pipe.multi()
                pipe.delete(idem_key)
                try:
                    await pipe.execute()
                except RedisError:  # WatchError: another submit replaced it; fine
                    log.debug("idempotency mapping %s changed concurrently", idem_key)

    async def _retry_after(self) -> int:
        """Seconds until a queue slot is likely to free: one job's time over the workers."""
        raw = await self.redis.hget(self.keys.stats, STAT_JOB_SECONDS)
        if raw is None:
            return DEFAULT_RETRY_AFTER_SECONDS
        workers = len(await self.live_workers())
        seconds = float(raw) / max(1, workers)
        return int(min(MAX_RETRY_AFTER_SECONDS, max(1, math.ceil(seconds))))

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record; None when unknown, expired or not a job id at all."""
        if not is_valid_job_id(job_id):
            return None
        mapping: Any = await self.redis.hgetall(self.keys.job(job_id))
        return JobRecord.from_redis(mapping) if mapping else None

    async def existing_jobs(self, job_ids: Sequence[str]) -> set[str]:
        """Which of ``job_ids`` still have a record (for the blob sweeper)."""
        valid = [j for j in job_ids if is_valid_job_id(j)]
        if not valid:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in valid:
                pipe.exists(self.keys.job(job_id))
            found = await pipe.execute()
        return {job_id for job_id, n in zip(valid, found, strict=True) if n}

    async def drop_blobs(
        self, job_id: str, *, inputs_only: bool = False, inputs: Sequence[str] = ()
    ) -> None:
        """Delete a job's blobs (or only its uploads) from the store; a store fault is
        logged, not raised: the sweeper removes what is left once the record expires.

        ``inputs``: the uploads' names when known (the record's ``params.inputs``); with
        ``inputs_only`` exactly those are deleted, without listing the job's folder (a
        LIST request per finished job on S3). Unknown (a record from before blob
        references), the folder is listed for its ``input-`` blobs. Only names inside
        the job's folder are ever deleted.
        """
        prefix = job_prefix(job_id)
        uploads = f"{prefix}input-"
        known = [name for name in inputs if name.startswith(uploads)]

        def drop() -> None:
            if not inputs_only:
                self.store.delete_prefix(prefix)
            elif known:
                self.store.delete(known)
            else:
                self.store.delete(
                    [b.name for b in self.store.list(prefix) if b.name.startswith(uploads)]
                )

        try:
            await asyncio.to_thread(drop)
        except StoreUnavailable as exc:
            log.warning("could not delete the blobs of job %s (%s); the sweeper will", job_id, exc)

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job and return its record as it is after the call.

        A queued job is ``cancelled`` at once (its blobs are deleted; a worker that
        receives it later skips it). A running job stays ``running`` with a cancel flag
        set; its worker sees :meth:`is_cancel_requested` and calls
        :meth:`mark_cancelled`. A final job is returned unchanged. Raises
        :class:`JobNotFound` for an unknown or expired job.
        """
        if not is_valid_job_id(job_id):
            raise JobNotFound(f"job {job_id} not found")
        reply = await self._cancel(
            keys=[
                self.keys.job(job_id),
                self.keys.queued,
                self.keys.cancel(job_id),
                self.keys.webhooks,
            ],
            args=[job_id, repr(time.time()), self._ttl],
        )
        if not reply:
            raise JobNotFound(f"job {job_id} not found")
        record = JobRecord.from_flat(reply)
        if record.status is JobState.CANCELLED:
            await self.drop_blobs(job_id)
        log.info("cancel of job %s: now %s", job_id, record.status.value)
        return record

    async def is_cancel_requested(self, job_id: str) -> bool:
        """Whether the owner asked to cancel this running job (the worker polls this)."""
        return bool(await self.redis.exists(self.keys.cancel(job_id)))

    # ------------------------------------------------------------------ worker side

    async def ensure_group(self, models: Sequence[str] | None = None) -> None:
        """Create the streams of ``models`` (default: ``settings.default_model``) and
        their consumer groups if missing (idempotent), and list the models in
        ``Keys.models``.

        A group starts at its stream's beginning, so jobs submitted before any worker
        existed are delivered too.
        """
        names = self._models_or_default(models)
        if not names:
            return
        for model in names:
            try:
                await self.redis.xgroup_create(
                    self.keys.stream(model), self.keys.group, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        await self.redis.sadd(self.keys.models, *names)

    async def receive(
        self,
        consumer: str,
        block_ms: int = 1000,
        models: Sequence[str] | None = None,
        held: Collection[str] = (),
    ) -> Delivery | None:
        """Hand ``consumer`` the next job of one of ``models`` (default:
        ``settings.default_model``), or None when there is none.

        ``held`` names the entries ``consumer`` is running now. When Redis stalls for
        longer than the visibility timeout, their claims lapse, and the take-over below
        can hand one back to the very worker that runs it: such an entry's claim is only
        renewed (XAUTOCLAIM resets its idle time), no delivery is counted, and the worker
        goes on with its one attempt.

        First takes over one entry pending longer than the visibility timeout (a dead or
        stalled worker's job, or a job whose retry delay is over), then reads a new one,
        blocking up to ``block_ms`` (0: do not block; capped at ``MAX_BLOCK_MS``). The
        models' streams take turns at being looked at first, so a busy model does not
        starve another. Entries of jobs that are final, cancelled or expired are acked
        and skipped; a delivery beyond ``max_attempts`` is dead-lettered and skipped.
        """
        names = self._models_or_default(models)
        if not names:
            return None
        self._turn = (self._turn + 1) % len(names)
        names = names[self._turn :] + names[: self._turn]
        block = min(max(0, block_ms), MAX_BLOCK_MS) or None
        for _ in range(2):  # second pass only after re-creating a missing group
            try:
                return await self._receive(consumer, names, block, frozenset(held))
            except ResponseError as exc:
                if not _no_group(exc):
                    raise
                log.warning("consumer group missing; creating it")
                await self.ensure_group(names)
        return None

    def _models_or_default(self, models: Sequence[str] | None) -> list[str]:
        return [self.settings.default_model] if models is None else list(dict.fromkeys(models))

    async def _receive(
        self, consumer: str, models: list[str], block: int | None, held: frozenset[str]
    ) -> Delivery | None:
        while True:
            redelivered = True
            entry = await self._reclaim(consumer, models)
            if entry is not None and entry.entry_id in held:
                log.info("job %s: claim of %s renewed after a stall", entry.job_id, consumer)
                continue
            if entry is None:
                redelivered = False
                entry = await self._read_new(consumer, models, block)
                block = None  # block once per call; later reads only drain skips
            if entry is None:
                return None
            delivery = await self._admit(entry, consumer, redelivered)
            if delivery is not None:
                return delivery

    async def _reclaim(self, consumer: str, models: list[str]) -> _Entry | None:
        for model in models:
            stream = self.keys.stream(model)
            reply: Any = await self.redis.xautoclaim(
                stream,
                self.keys.group,
                consumer,
                min_idle_time=self._visibility_ms,
                start_id=self._reclaim_cursors.get(stream, "0-0"),
                count=1,
            )
            # Walk the PEL with a cursor across calls, so that many young pending entries
            # at its head (long jobs of live workers) do not hide an idle one behind them.
            self._reclaim_cursors[stream] = _text(reply[0])
            for entry_id, fields in reply[1]:
                if entry_id is None or fields is None:  # deleted entry (Redis 6.2 reply)
                    continue
                return _Entry(model, _text(entry_id), _text(fields.get(ENTRY_JOB.encode(), b"")))
        return None

    async def _read_new(self, consumer: str, models: list[str], block: int | None) -> _Entry | None:
        """One new entry of the models' streams: each stream without blocking, in turn,
        then (``block``) one blocking read of them all.

        A blocking read over several streams returns an entry of each stream that got
        one, and each is now pending under ``consumer``; all but the first are aged past
        the visibility timeout at once, so the next receive of any worker serving their
        model takes them over (no attempt was counted for them).
        """
        for model in models:
            found = await self._xreadgroup(consumer, [model], None)
            if found:
                return found[0]
        if block is None:
            return None
        return await self._keep_first(consumer, await self._xreadgroup(consumer, models, block))

    async def _keep_first(self, consumer: str, found: list[_Entry]) -> _Entry | None:
        """The first of ``found``; the others are aged past the visibility timeout."""
        for spare in found[1:]:
            await self.redis.xclaim(
                self.keys.stream(spare.model),
                self.keys.group,
                consumer,
                0,
                [spare.entry_id],
                idle=self._visibility_ms,
                justid=True,
            )
        return found[0] if found else None

    async def _xreadgroup(
        self, consumer: str, models: list[str], block: int | None
    ) -> list[_Entry]:
        by_stream = {self.keys.stream(m): m for m in models}
        reply: Any = await self.redis.xreadgroup(
            self.keys.group, consumer, dict.fromkeys(by_stream, ">"), count=1, block=block
        )
        streams = reply.items() if isinstance(reply, dict) else (reply or [])
        found = []
        for name, entries in streams:
            for entry_id, fields in entries:
                if entry_id is not None and fields is not None:
                    job_id = _text(fields.get(ENTRY_JOB.encode(), b""))
                    found.append(_Entry(by_stream[_text(name)], _text(entry_id), job_id))
        return found

    async def _admit(self, entry: _Entry, consumer: str, redelivered: bool) -> Delivery | None:
        """Count the delivery on the record; decide deliver, skip or dead-letter."""
        entry_id, job_id = entry.entry_id, entry.job_id
        now = time.time()
        kind, attempts = await self._deliver(
            keys=[
                self.keys.job(job_id),
                self.keys.queued,
                self.keys.stream(entry.model),
                self.keys.dead_letter,
                self.keys.cancel(job_id),
                self.keys.webhooks,
            ],
            args=[
                self.keys.group,
                entry_id,
                job_id,
                self.settings.max_attempts,
                repr(now),
                consumer,
                self._dead_letter_min_id(now),
                self._ttl,
            ],
        )
        if kind == b"deliver":
            if redelivered:
                log.info(
                    "re-delivering job %s (entry %s) to %s, attempt %s",
                    job_id,
                    entry_id,
                    consumer,
                    attempts,
                )
            return Delivery(entry_id, job_id, int(attempts), consumer, redelivered, entry.model)
        if kind == b"dead":
            log.warning(
                "job %s dead-lettered after %s attempts (entry %s)", job_id, attempts, entry_id
            )
        else:
            log.info("skipping entry %s of job %s: %s", entry_id, job_id, kind.decode())
        if kind in (b"dead", b"cancelled", b"expired"):
            await self.drop_blobs(job_id)
        return None

    async def start(self, delivery: Delivery, worker_id: str, engine: str) -> JobRecord | None:
        """Mark the job running on ``worker_id``; returns its record.

        None means: do not run it. The job was cancelled, finished (by another worker) or
        expired since it was received, and its entry has been acked already.
        """
        reply = await self._start(
            keys=[
                self.keys.job(delivery.job_id),
                self.keys.queued,
                self.keys.stream(delivery.model),
            ],
            args=[
                self.keys.group,
                delivery.entry_id,
                delivery.job_id,
                worker_id,
                engine,
                repr(time.time()),
                self._ttl,
            ],
        )
        if not reply:
            log.info("not starting job %s: final or expired", delivery.job_id)
            return None
        return JobRecord.from_flat(reply)

    async def touch(self, delivery: Delivery) -> bool:
        """Reset the entry's idle time so that a live, slow job is not re-delivered.

        Call it more often than the visibility timeout (with every progress update).
        Returns False when another consumer has taken the entry over already (the job
        was re-delivered): this worker may stop; only the first ``complete`` counts.
        """
        owned = await self._touch(
            keys=[self.keys.stream(delivery.model)],
            args=[self.keys.group, delivery.consumer, delivery.entry_id],
        )
        return bool(owned)

    async def progress(self, job_id: str, done: int, total: int) -> bool:
        """Record tiles done of total; ignored (False) unless the job is running.

        Progress is a state change: it restarts the job's TTL, so a long job keeps its
        record for as long as it runs.
        """
        updated = await self._progress(keys=[self.keys.job(job_id)], args=[done, total, self._ttl])
        return bool(updated)

    async def complete(
        self,
        delivery: Delivery,
        timings: StageTimings,
        width: int,
        height: int,
    ) -> bool:
        """Mark the job succeeded, ack and delete its entry, delete its uploads (by the
        names its record holds, which the COMPLETE script returns).

        The worker has stored the result under ``result_name(job_id)`` before: a record
        never says ``succeeded`` without its result. Returns True when this call finished
        the job. False when the job was already final (another worker finished first, or
        it was cancelled or failed) or has expired: then nothing changes and the entry is
        only acked; the blobs go unless another worker's result is the job's result.
        """
        reply = await self._complete(
            keys=[
                self.keys.job(delivery.job_id),
                self.keys.queued,
                self.keys.stream(delivery.model),
                self.keys.cancel(delivery.job_id),
                self.keys.stats,
                self.keys.webhooks,
            ],
            args=[
                self.keys.group,
                delivery.entry_id,
                delivery.job_id,
                repr(time.time()),
                json.dumps(timings.as_dict(), separators=(",", ":"), sort_keys=True),
                width,
                height,
                self._ttl,
            ],
        )
        outcome = reply[0]
        stored = outcome == b"stored"
        if stored:
            log.info("job %s succeeded", delivery.job_id)
            params = reply[1].decode()
            inputs = JobParams.from_json(params).inputs if params else ()
            await self.drop_blobs(delivery.job_id, inputs_only=True, inputs=inputs)
        else:
            log.info("result of job %s dropped: job %s", delivery.job_id, outcome.decode())
            if outcome != JobState.SUCCEEDED.value.encode():
                await self.drop_blobs(delivery.job_id)
        return stored

    async def fail(
        self,
        delivery: Delivery,
        reason: str,
        retry: bool,
        *,
        retry_delay_seconds: float | None = None,
    ) -> JobState | None:
        """Record a failed attempt; returns the job's state after it (None: expired).

        ``retry=False``: the job fails at once with ``reason``, goes to the dead-letter
        stream and its entry is acked. ``retry=True`` while attempts remain: the job goes
        back to ``queued`` and its entry stays pending but is aged so that it is handed
        out again after ``retry_delay_seconds`` (default: 1 s doubling per attempt,
        capped at the visibility timeout) by the next :meth:`receive` of any worker.
        ``retry=True`` on the last attempt fails the job like ``retry=False``, with the
        error ``"failed after N attempts: <reason>"``. A job already final is unchanged.
        """
        if retry_delay_seconds is None:
            retry_delay_seconds = RETRY_BASE_DELAY_SECONDS * 2 ** max(0, delivery.attempts - 1)
        delay_ms = min(self._visibility_ms, max(0, round(retry_delay_seconds * 1000)))
        now = time.time()
        outcome = await self._fail(
            keys=[
                self.keys.job(delivery.job_id),
                self.keys.queued,
                self.keys.stream(delivery.model),
                self.keys.dead_letter,
                self.keys.cancel(delivery.job_id),
                self.keys.webhooks,
            ],
            args=[
                self.keys.group,
                delivery.entry_id,
                delivery.job_id,
                reason,
                1 if retry else 0,
                self.settings.max_attempts,
                repr(now),
                delivery.consumer,
                self._visibility_ms - delay_ms,
                self._dead_letter_min_id(now),
                self._ttl,
            ],
        )
        text = outcome.decode()
        log.warning(
            "job %s attempt %s failed (%s): %s", delivery.job_id, delivery.attempts, text, reason
        )
        if text in (JobState.FAILED.value, "expired"):
            await self.drop_blobs(delivery.job_id)
        return None if text == "expired" else JobState(text)

    async def release(self, delivery: Delivery) -> JobState | None:
        """Hand an unfinished job back for another worker, without counting the attempt.

        For a worker that stops (SIGTERM drain) while the job is healthy: the job goes
        back to ``queued``, its delivery is not counted against ``max_attempts``, and
        its entry stays pending but idle for the whole visibility timeout, so the next
        :meth:`receive` of any worker takes it over at once. Returns the job's state
        after the call (``queued``, or the final state it already had; None: expired).
        """
        outcome = await self._release(
            keys=[
                self.keys.job(delivery.job_id),
                self.keys.queued,
                self.keys.stream(delivery.model),
            ],
            args=[
                self.keys.group,
                delivery.entry_id,
                delivery.job_id,
                delivery.consumer,
                self._visibility_ms,
                repr(time.time()),
                self._ttl,
            ],
        )
        text = outcome.decode()
        log.info("job %s handed back by %s: %s", delivery.job_id, delivery.consumer, text)
        return None if text == "expired" else JobState(text)

    async def mark_cancelled(self, delivery: Delivery) -> JobRecord | None:
        """Finish a cancel the worker noticed: cancelled, ack; final jobs stay as they are."""
        reply = await self._mark_cancelled(
            keys=[
                self.keys.job(delivery.job_id),
                self.keys.queued,
                self.keys.stream(delivery.model),
                self.keys.cancel(delivery.job_id),
                self.keys.webhooks,
            ],
            args=[
                self.keys.group,
                delivery.entry_id,
                delivery.job_id,
                repr(time.time()),
                self._ttl,
            ],
        )
        record = JobRecord.from_flat(reply) if reply else None
        if record is None or record.status is JobState.CANCELLED:
            await self.drop_blobs(delivery.job_id)
        return record

    # ------------------------------------------------------------------ observability

    async def ping(self, timeout: float | None = None) -> bool:
        """Whether Redis answers (for readiness); never raises on connection problems.

        ``timeout`` bounds the wait in seconds: the client retries a refused connection
        for seconds, longer than a readiness probe waits for its answer.
        """
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), timeout))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("Redis ping failed: %s", str(exc) or type(exc).__name__)
            return False

    async def queue_depth(self) -> int:
        """Jobs in state ``queued`` (what ``max_queue_length`` limits)."""
        return int(await self.redis.zcount(self.keys.queued, self._oldest_live_score(), "+inf"))

    async def oldest_queued_age_seconds(self) -> float:
        """How long the longest-waiting queued job has waited since it (re)entered the
        queue; 0.0 when none waits."""
        oldest: Any = await self.redis.zrangebyscore(
            self.keys.queued, self._oldest_live_score(), "+inf", start=0, num=1, withscores=True
        )
        if not oldest:
            return 0.0
        return max(0.0, time.time() - float(oldest[0][1]))

    async def known_models(self) -> list[str]:
        """Every model that has a job stream (a job was queued for it, or a worker
        serving it started)."""
        members: Any = await self.redis.smembers(self.keys.models)
        return sorted(_text(m) for m in members)

    async def model_streams(self) -> dict[str, StreamCounts]:
        """Per model with a job stream, its entries and those handed out: one read of
        the models set and one pipeline, however many models (a metrics scrape)."""
        models = await self.known_models()
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.xlen(self.keys.stream(model))
                pipe.xpending(self.keys.stream(model), self.keys.group)
            replies = await pipe.execute(raise_on_error=False)
        counts = {}
        for i, model in enumerate(models):
            length, pending = replies[2 * i], replies[2 * i + 1]
            for reply in (length, pending):
                if isinstance(reply, Exception) and not _no_group(reply):
                    raise reply
            counts[model] = StreamCounts(
                length=int(length),
                pending=0 if isinstance(pending, Exception) else int(pending["pending"]),
            )
        return counts

    async def running_count(self) -> int:
        """Entries handed out and not yet acked (running, or waiting for a retry/reclaim)."""
        return sum(c.pending for c in (await self.model_streams()).values())

    async def dead_letter_depth(self) -> int:
        """Entries in the dead-letter stream (kept for the job TTL)."""
        return int(await self.redis.xlen(self.keys.dead_letter))

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The newest dead-letter entries, newest first: job, entry, reason, attempts, ..."""
        entries: Any = await self.redis.xrevrange(self.keys.dead_letter, count=count)
        return [
            {"id": _text(entry_id), **{_text(k): _text(v) for k, v in fields.items()}}
            for entry_id, fields in entries
        ]

    async def heartbeat(self, worker_id: str, ttl_seconds: float, info: Mapping[str, Any]) -> None:
        """Announce a live worker for ``ttl_seconds`` with ``info`` (JSON-serialisable)."""
        now = time.time()
        body = json.dumps({**info, "worker_id": worker_id, "last_seen": now})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.heartbeat(worker_id), body, px=max(1, round(ttl_seconds * 1000)))
            pipe.zadd(self.keys.workers, {worker_id: now + ttl_seconds})
            await pipe.execute()

    async def retire(self, worker_id: str) -> None:
        """Remove a worker's heartbeat at a clean shutdown."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.heartbeat(worker_id))
            pipe.zrem(self.keys.workers, worker_id)
            await pipe.execute()

    async def live_workers(self) -> list[dict[str, Any]]:
        """Heartbeats that have not expired, each with ``worker_id`` and ``last_seen``."""
        await self.redis.zremrangebyscore(self.keys.workers, "-inf", time.time())
        members: Any = await self.redis.zrange(self.keys.workers, 0, -1)
        ids = [_text(w) for w in members]
        if not ids:
            return []
        bodies: Any = await self.redis.mget([self.keys.heartbeat(w) for w in ids])
        return [json.loads(body) for body in bodies if body is not None]

    # ------------------------------------------------------------------ helpers

    def _oldest_live_score(self) -> float:
        """Queued-set members created before this have expired with their record."""
        return time.time() - self._ttl

    def _dead_letter_min_id(self, now: float) -> str:
        """Dead-letter entries older than the job TTL are trimmed (MINID, in ms)."""
        return str(max(0, int((now - self._ttl) * 1000)))


@asynccontextmanager
async def open_broker(
    settings: Settings, *, client_name: str | None = None, deadline: float | None = None
) -> AsyncIterator[Broker]:
    """Connect to ``settings.redis_url`` and open ``settings.storage_url`` for the
    duration of the block (app lifespan, worker process).

    ``deadline`` bounds every Redis command (:meth:`RedisSettings.with_deadline`): the API's
    requests pass one; the worker, whose blocking reads wait for jobs, does not.
    """
    if not settings.redis_url:
        raise ValueError("settings.redis_url is not set")
    store = open_store(require_storage_url(settings))
    target = RedisSettings.from_dsn(settings.redis_url)
    if deadline is not None:
        target = target.with_deadline(deadline)
    redis = connect(target, client_name=client_name)
    try:
        yield Broker(redis, settings, store)
    finally:
        await redis.aclose()
        store.close()


def _same_request(existing: JobRecord, digest: str | None, key: str | None) -> JobRecord:
    """``existing`` when it was made from the request ``digest`` describes, else refuse."""
    if digest is None or existing.request_digest in (None, digest):
        return existing
    raise IdempotencyKeyReused(
        f"Idempotency-Key {key!r} was used for job {existing.id} with other files,"
        " exposures, model or tile size; use a new key for a different request"
    )


def _text(value: Any) -> str:
    """A reply element as text (the client returns bytes; tests may pass str)."""
    return value.decode() if isinstance(value, bytes) else str(value)
