"""The sweeper: blobs whose job record has expired are deleted, so none outlives 2 x TTL.

Most blobs go when their job ends (the broker deletes uploads once the result is stored,
everything of a failed, dead-lettered or cancelled job). What is left: results of
succeeded jobs, which live as long as their record, and blobs of jobs that ended while
the store was unreachable or whose process died between a write and its record. The
sweeper finds them by listing ``jobs/`` and asking Redis which records still exist.

A folder goes when its record is gone *and* its newest blob is older than the job TTL.
The age condition protects uploads in flight: the API writes them before the record
exists. A blob is written at most when its record is last changed, and a record lives
a TTL after that, so with a sweep every TTL at most an orphan is deleted by 2 x TTL
after its last write. Where it runs: in every worker (``Worker``), every
``HDR_SWEEP_INTERVAL_SECONDS`` capped at the TTL; several workers sweeping at once only
delete the same folders twice. On S3 the bucket's lifecycle rule is the backstop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from service.storage.base import JOBS_PREFIX, BlobStore, job_prefix

log = logging.getLogger(__name__)

#: Asks Redis which of these job ids still have a record (Broker.existing_jobs).
LiveJobs = Callable[[Sequence[str]], Awaitable[set[str]]]


def sweep_interval(interval_seconds: float, ttl_seconds: float) -> float:
    """Seconds between sweeps: the configured interval, at most the TTL (the 2 x TTL bound)."""
    return max(1.0, min(interval_seconds, ttl_seconds))


async def sweep(
    store: BlobStore, live_jobs: LiveJobs, ttl_seconds: float, now: float | None = None
) -> list[str]:
    """Delete the folders of jobs without a record whose newest blob is older than
    ``ttl_seconds``; returns their job ids."""
    now = time.time() if now is None else now
    blobs = await asyncio.to_thread(lambda: list(store.list(JOBS_PREFIX)))
    newest: dict[str, float] = {}
    for blob in blobs:
        job_id = blob.name[len(JOBS_PREFIX) :].split("/", 1)[0]
        newest[job_id] = max(newest.get(job_id, 0.0), blob.modified)
    old = sorted(job_id for job_id, modified in newest.items() if now - modified > ttl_seconds)
    if not old:
        return []
    orphans = sorted(set(old) - await live_jobs(old))
    for job_id in orphans:
        await asyncio.to_thread(store.delete_prefix, job_prefix(job_id))
    if orphans:
        log.info("sweeper deleted the blobs of %s expired jobs", len(orphans))
    return orphans
