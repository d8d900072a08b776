"""What ``complete`` deletes from the blob store: exactly the job's recorded uploads,
named by its record, without listing the job's folder (one LIST request per finished job
on S3); the folder is listed only for a record that names no uploads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.config import Settings
from service.queue import Broker, JobState
from service.queue.jobs import JobParams, StageTimings
from service.storage import BlobInfo, job_prefix, result_name
from service.storage.file import FileStore

pytestmark = pytest.mark.anyio

BLOBS = [b"short exposure", b"middle exposure", b"long exposure"]
PARAMS = JobParams(exposure_values=(-2.0, 0.0, 2.0), names=("a", "b", "c"))


class ListingCountingStore(FileStore):
    """A real file store that counts its ``list`` calls (each one a LIST request on S3)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.listings: list[str] = []

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        self.listings.append(prefix)
        return super().list(prefix)


@pytest.fixture
async def counted(redis_client: Redis, settings: Settings, blob_dir: Path) -> Broker:
    broker = Broker(redis_client, settings, ListingCountingStore(blob_dir))
    await broker.ensure_group()
    return broker


def names(broker: Broker, job_id: str) -> set[str]:
    prefix = job_prefix(job_id)
    return {info.name.removeprefix(prefix) for info in broker.store.list(prefix)}


async def finish(broker: Broker, job_id: str) -> bool:
    """Start and finish the job as a worker does (result stored, then ``complete``), with
    the store's listings counted from the ``complete`` call on; what it answered."""
    delivery = await broker.receive("w1", block_ms=0)
    assert delivery is not None and delivery.job_id == job_id
    assert await broker.start(delivery, worker_id="w1", engine="torch") is not None
    broker.store.put(result_name(job_id), b"EXR")
    broker.store.put(result_name(job_id, "png"), b"PNG")  # a converted download, kept too
    assert isinstance(broker.store, ListingCountingStore)
    broker.store.listings.clear()
    return await broker.complete(delivery, StageTimings(inference=1.0), 3, 2)


async def test_complete_deletes_the_recorded_inputs_without_listing_the_folder(
    counted: Broker,
) -> None:
    job = await counted.submit(PARAMS, BLOBS)

    assert await finish(counted, job.id)

    assert isinstance(counted.store, ListingCountingStore)
    assert counted.store.listings == []
    assert names(counted, job.id) == {"result-exr-float32", "result-png"}
    record = await counted.get(job.id)
    assert record is not None and record.status is JobState.SUCCEEDED


async def test_a_record_naming_no_inputs_still_loses_its_uploads_by_listing(
    counted: Broker,
) -> None:
    job = await counted.submit(PARAMS, BLOBS)
    # A record from before blob references: its params name no uploads.
    await counted.redis.hset(counted.keys.job(job.id), "params", PARAMS.to_json())

    assert await finish(counted, job.id)

    assert isinstance(counted.store, ListingCountingStore)
    assert counted.store.listings == [job_prefix(job.id)]
    assert names(counted, job.id) == {"result-exr-float32", "result-png"}
