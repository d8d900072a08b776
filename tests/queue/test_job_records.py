"""Job ids, states and the record's Redis hash encoding."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from service.queue.jobs import (
    JobParams,
    JobRecord,
    JobState,
    StageTimings,
    is_valid_job_id,
    new_job_id,
)
from service.queue.keys import Keys


def test_job_ids_are_32_hex_chars_and_distinct() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_valid_job_id(i) and len(i) == 32 for i in ids)


@pytest.mark.parametrize(
    "text",
    ["", "abc", "0" * 31, "0" * 33, "G" * 32, "A" * 32, f"{'0' * 32}:result", "../" + "0" * 29],
)
def test_strings_not_shaped_like_job_ids_are_refused(text: str) -> None:
    assert not is_valid_job_id(text)


def test_only_succeeded_failed_and_cancelled_are_final() -> None:
    assert {s for s in JobState if s.is_final} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    }
    assert JobState("queued") is JobState.QUEUED
    assert JobState.RUNNING == "running"


def _full_record() -> JobRecord:
    return JobRecord(
        id=new_job_id(),
        status=JobState.SUCCEEDED,
        created_at=1_700_000_000.125,
        owner="alice",
        model="afunet",
        engine="torch",
        worker="gpu-0",
        width=1500,
        height=1000,
        tiles_done=12,
        tiles_total=12,
        attempts=2,
        started_at=1_700_000_001.5,
        finished_at=1_700_000_009.75,
        error=None,
        timings=StageTimings(decode=0.25, inference=7.5),
        params=JobParams(
            exposure_values=(-2.0, 0.0, 2.0),
            names=("a.png", "b.png", "c.png"),
            formats=("png", "png", "png"),
            tile_size=256,
            inputs=("jobs/x/input-0", "jobs/x/input-1", "jobs/x/input-2"),
        ),
    )


def test_record_round_trips_through_its_hash_mapping() -> None:
    record = _full_record()
    mapping = record.to_redis()
    assert "error" not in mapping  # None is an absent field
    encoded = {k.encode(): v.encode() for k, v in mapping.items()}
    assert JobRecord.from_redis(encoded) == record


def test_minimal_record_round_trips_with_defaults() -> None:
    record = JobRecord(id=new_job_id(), status=JobState.QUEUED, created_at=1.0)
    assert JobRecord.from_redis(record.to_redis()) == record


@pytest.mark.anyio
async def test_record_round_trips_through_a_real_redis_hash(
    redis_client: Redis, key_prefix: str
) -> None:
    record = _full_record()
    key = Keys(key_prefix).job(record.id)
    await redis_client.hset(key, mapping=record.to_redis())  # type: ignore[arg-type]
    assert JobRecord.from_redis(await redis_client.hgetall(key)) == record


def test_params_of_a_record_from_before_blob_references_still_decode() -> None:
    mapping = {
        "id": "0" * 32,
        "status": "queued",
        "created_at": "1.0",
        "params": '{"exposure_values":[-2,0,2],"tile_size":256}',
    }
    params = JobRecord.from_redis(mapping).params
    assert params == JobParams(exposure_values=(-2.0, 0.0, 2.0), names=(), tile_size=256)
