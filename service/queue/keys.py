"""Every Redis key, stream and consumer-group name of the service, in one place.

All names hang off ``Settings.key_prefix`` so that several deployments (or test runs) can
share one Redis database without seeing each other, and so that a prefix written as a
hash tag (``{hdr}``) puts every key of a deployment in one Redis Cluster slot, which the
multi-key Lua scripts of the broker need there. Nothing else in the code base spells a
key: a grep for ``":job:"`` should only ever find this file.

Uploads and results are not here: they live in the blob store (:mod:`service.storage`).

Layout (``p`` is the prefix)::

    p:stream:jobs:<model>      stream per model, one entry {job: <id>} per delivery-able job
    p:models                   set, every model that has had a job stream (metrics, KEDA docs)
    p:stream:dead              stream, dead-lettered jobs {job, reason, attempts, ...}
    p:queued                   zset job id -> when it (re)entered state ``queued``
    p:job:<id>                 hash, the JobRecord                          (TTL)
    p:job:<id>:cancel          string, set when cancelling a running job    (TTL)
    p:idem:<sha256>            string, job id for (owner, Idempotency-Key)  (TTL)
    p:workers                  zset worker id -> heartbeat expiry (unix s)
    p:worker:<id>              string, JSON heartbeat of a worker           (TTL)
    p:cost:<sha256>:<minute>   float, frame megapixels an API key submitted  (2 min TTL)
    p:stats                    hash, running statistics (job duration EMAs)
    p:webhooks                 zset job id -> when its webhook is due (unix s)
"""

from __future__ import annotations

import hashlib
from typing import Final

#: Consumer group every worker reads the job streams through.
GROUP: Final = "workers"
#: Field of a job-stream entry holding the job id.
ENTRY_JOB: Final = "job"
#: Field of the stats hash holding the moving average of a job's run time, in seconds.
STAT_JOB_SECONDS: Final = "job_seconds"
#: Field of the stats hash holding the moving average of run seconds per frame megapixel.
STAT_SECONDS_PER_MEGAPIXEL: Final = "seconds_per_megapixel"


class Keys:
    """Key names of one deployment, derived from its prefix."""

    def __init__(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("key prefix must not be empty")
        self.prefix = prefix
        self.models = f"{prefix}:models"
        self.dead_letter = f"{prefix}:stream:dead"
        self.group = GROUP
        self.queued = f"{prefix}:queued"
        self.workers = f"{prefix}:workers"
        self.stats = f"{prefix}:stats"
        self.webhooks = f"{prefix}:webhooks"

    def __repr__(self) -> str:
        return f"Keys(prefix={self.prefix!r})"

    def stream(self, model: str) -> str:
        """The job stream of ``model``: only workers that serve it read it (one consumer
        group per stream), so a job never reaches a worker that cannot run it, and an
        autoscaler can scale each model's workers on its own stream."""
        if not model:
            raise ValueError("a job stream needs a model name")
        return f"{self.prefix}:stream:jobs:{model}"

    def job(self, job_id: str) -> str:
        """The job record hash."""
        return f"{self.prefix}:job:{job_id}"

    def cancel(self, job_id: str) -> str:
        """The flag a running job's worker polls to learn it was cancelled."""
        return f"{self.prefix}:job:{job_id}:cancel"

    def idempotency(self, owner: str | None, key: str) -> str:
        """Where (owner, Idempotency-Key) maps to its job id.

        The client's key is hashed so that arbitrary header text (any length, any
        characters) never becomes part of a Redis key name, and the owner is part of the
        hash so that two API keys choosing the same idempotency key never share a job.
        """
        digest = hashlib.sha256(f"{owner or ''}\x00{key}".encode()).hexdigest()
        return f"{self.prefix}:idem:{digest}"

    def cost(self, owner: str | None, minute: int) -> str:
        """Frame megapixels ``owner`` (None: every anonymous client) submitted in the
        clock minute ``minute`` (unix seconds // 60); hashed like :meth:`idempotency`."""
        digest = hashlib.sha256(f"{owner or ''}".encode()).hexdigest()
        return f"{self.prefix}:cost:{digest}:{minute}"

    def heartbeat(self, worker_id: str) -> str:
        """The heartbeat of one worker process."""
        return f"{self.prefix}:worker:{worker_id}"

    def all_keys_pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix (for cleanup tools and tests).

        Glob characters of the prefix are escaped so that a prefix like ``{hdr}`` or
        ``a*`` matches only itself.
        """
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return f"{escaped}:*"
