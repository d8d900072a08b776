"""``hdr-service worker --check``: the exec probe, answered from the worker's heartbeat.

Kept apart from the worker loop so that it imports neither torch nor any engine: a
Kubernetes exec probe runs it every few seconds, and should cost milliseconds.
"""

from __future__ import annotations

import json

from redis.exceptions import RedisError

from service.config import Settings
from service.queue import Keys, connect


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
