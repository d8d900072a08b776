"""Key layout: one prefix for everything, user text never inside a key name."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from service.queue.keys import GROUP, Keys

JOB_ID = "0123456789abcdef0123456789abcdef"


def test_every_key_name_starts_with_the_prefix() -> None:
    keys = Keys("hdr")
    names = [
        keys.stream("afunet"),
        keys.models,
        keys.dead_letter,
        keys.queued,
        keys.workers,
        keys.stats,
        keys.job(JOB_ID),
        keys.cancel(JOB_ID),
        keys.idempotency("owner", "key"),
        keys.heartbeat("worker-1"),
    ]
    assert all(name.startswith("hdr:") for name in names)
    assert len(set(names)) == len(names)
    assert keys.group == GROUP


def test_keys_of_two_jobs_never_collide() -> None:
    keys = Keys("hdr")
    other = "f" * 32
    assert keys.job(JOB_ID) != keys.job(other)
    assert keys.cancel(JOB_ID) != keys.cancel(other)


def test_idempotency_key_is_hashed_and_scoped_by_owner() -> None:
    keys = Keys("hdr")
    raw = "my key: with * glob [chars]"
    name = keys.idempotency("alice", raw)
    assert raw not in name
    assert name == keys.idempotency("alice", raw)
    assert name != keys.idempotency("bob", raw)
    assert keys.idempotency(None, raw) == keys.idempotency("", raw)


@pytest.mark.anyio
async def test_all_keys_pattern_matches_only_its_own_prefix(
    redis_client: Redis, key_prefix: str
) -> None:
    globby = Keys(f"{key_prefix}:[a]*?")
    await redis_client.set(globby.stats, b"mine", ex=10)
    await redis_client.set(f"{key_prefix}:a-other:stats", b"not mine", ex=10)
    found = [k async for k in redis_client.scan_iter(match=globby.all_keys_pattern())]
    assert found == [globby.stats.encode()]


def test_empty_prefix_is_refused() -> None:
    with pytest.raises(ValueError):
        Keys("")
