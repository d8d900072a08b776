"""``hdr-service worker --check``: the exec probe, answered from the worker's heartbeat;
and the look at the heartbeats a worker takes before it starts (is its name free?).

Kept apart from the worker loop so that it imports neither torch nor any engine: a
Kubernetes exec probe runs it every few seconds, and should cost milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from service.config import Settings
from service.queue import Keys, connect

log = logging.getLogger(__name__)


async def check_worker(settings: Settings) -> tuple[bool, str]:
    """Is the heartbeat of ``settings.worker_id`` alive and ready? And a one-line why.

    The heartbeat expires ``heartbeat_ttl_seconds`` after the worker last wrote it, and
    says ready only while the models are loaded and warm, the worker is not draining,
    and its job in hand (if any) still makes progress.
    """
    if not settings.redis_url:
        return False, "HDR_REDIS_URL is not set"
    # Redis only (no blob store): the probe reads one key.
    redis = connect(settings.redis_url, client_name="hdr-worker-check")
    try:
        raw = await redis.get(Keys(settings.key_prefix).heartbeat(settings.worker_id))
    except (RedisError, OSError) as exc:
        return False, f"Redis unreachable: {exc}"
    finally:
        await redis.aclose()
    if raw is None:
        return False, f"worker {settings.worker_id}: no live heartbeat"
    beat = json.loads(raw)
    if not beat.get("ready"):
        return False, f"worker {settings.worker_id}: not ready ({beat.get('reason')})"
    served = ", ".join(sorted(beat.get("models") or {}))
    return True, f"worker {settings.worker_id}: ready, serving {served}"


async def live_namesake(settings: Settings) -> dict[str, Any] | None:
    """The heartbeat of a live worker already named ``settings.worker_id``, if there is one.

    Two workers under one name would read the stream as one consumer and overwrite each
    other's heartbeat, so a worker asks this before it starts. A heartbeat that a dead
    worker left (killed, it never removed it) stops changing and expires, so this waits
    for it to go: at most what is left of its TTL. One renewed meanwhile is a live
    worker's. (Two workers that start at the same instant can both pass: this guards
    against a forgotten HDR_WORKER_ID, not against a race.) Redis unreachable: None, and
    the worker's own loop waits for Redis.
    """
    pause = settings.heartbeat_interval_seconds / 2
    if not settings.redis_url:
        return None
    # Redis only (no blob store), like the probe above.
    redis = connect(settings.redis_url, client_name="hdr-worker-name-check")
    key = Keys(settings.key_prefix).heartbeat(settings.worker_id)
    try:
        raw = await redis.get(key)
        if raw is None:
            return None
        first = json.loads(raw)
        log.info(
            "a heartbeat of worker %s is still there; waiting for it to expire",
            settings.worker_id,
        )
        # Its own TTL may differ from ours: wait for what is left of it.
        left = max(int(await redis.pttl(key)), 0) / 1000
        deadline = time.monotonic() + max(left, settings.heartbeat_ttl_seconds) + pause
        while time.monotonic() < deadline:
            await asyncio.sleep(pause)
            raw = await redis.get(key)
            if raw is None:
                return None
            beat: dict[str, Any] = json.loads(raw)
            if beat.get("last_seen") != first.get("last_seen"):
                return beat
        return first  # never renewed, yet it does not expire: not a heartbeat of ours
    except (RedisError, OSError) as exc:
        log.warning("could not check for a worker named %s: %s", settings.worker_id, exc)
        return None
    finally:
        await redis.aclose()
