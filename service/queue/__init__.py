"""Redis Streams job queue: job records, uploads, results, re-delivery and dead letters.

Knows nothing of HTTP, torch or images: it stores bytes and job state. See
:mod:`service.queue.broker` for the delivery model and :mod:`service.queue.keys` for the
key layout.
"""

from service.queue.broker import Broker, Delivery, open_broker
from service.queue.connection import RedisSettings, connect
from service.queue.jobs import JobRecord, JobState, is_valid_job_id, new_job_id
from service.queue.keys import Keys

__all__ = [
    "Broker",
    "Delivery",
    "JobRecord",
    "JobState",
    "Keys",
    "RedisSettings",
    "connect",
    "is_valid_job_id",
    "new_job_id",
    "open_broker",
]
