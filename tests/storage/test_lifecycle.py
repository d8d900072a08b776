"""The sweeper against a real Redis and a file store: only expired jobs' old blobs go."""

from __future__ import annotations

import os
import time

import pytest

from service.queue import Broker
from service.storage import input_name, job_prefix, result_name
from service.storage.lifecycle import sweep, sweep_interval
from tests.factories import job_params

pytestmark = pytest.mark.anyio

UPLOADS = [("a", b"short"), ("b", b"middle"), ("c", b"long")]


def age(broker: Broker, job_id: str, seconds: float) -> None:
    """Make every blob of a job ``seconds`` old."""
    folder = broker.store.root / job_prefix(job_id)  # type: ignore[attr-defined]
    then = time.time() - seconds
    for path in folder.iterdir():
        os.utime(path, (then, then))


def names(broker: Broker) -> set[str]:
    return {info.name for info in broker.store.list("jobs/")}


async def test_sweep_deletes_only_old_blobs_of_jobs_without_a_record(broker: Broker) -> None:
    ttl = broker.settings.job_ttl_seconds
    live = await broker.submit(job_params(UPLOADS), [data for _, data in UPLOADS])
    expired = await broker.submit(job_params(UPLOADS), [data for _, data in UPLOADS])
    await broker.redis.delete(broker.keys.job(expired.id))  # its record expired
    orphan_old = "a" * 32  # a crash between a write and its record
    orphan_new = "b" * 32  # an upload in flight: the record is not written yet
    for job_id in (orphan_old, orphan_new):
        broker.store.put(input_name(job_id, 0), b"x")
    broker.store.put(result_name(live.id), b"exr")
    for job_id in (live.id, expired.id, orphan_old):
        age(broker, job_id, ttl + 5)

    deleted = await sweep(broker.store, broker.existing_jobs, ttl)

    assert sorted(deleted) == sorted([expired.id, orphan_old])
    assert names(broker) == {
        *(input_name(live.id, i) for i in range(3)),
        result_name(live.id),
        input_name(orphan_new, 0),
    }
    assert not (broker.store.root / job_prefix(expired.id)).exists()  # type: ignore[attr-defined]


async def test_sweep_of_an_empty_store_deletes_nothing(broker: Broker) -> None:
    assert await sweep(broker.store, broker.existing_jobs, 60) == []


def test_sweeps_run_at_least_once_per_ttl() -> None:
    assert sweep_interval(600, 60) == 60
    assert sweep_interval(30, 600) == 30
