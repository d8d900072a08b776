"""Redis Streams job queue: job records, re-delivery and dead letters; the bytes of uploads
and results go to the blob store (:mod:`service.storage`) it is given.

Knows nothing of HTTP, torch or images: it stores job state, and deletes a job's blobs
when the job ends. See
:mod:`service.queue.broker` for the delivery model and :mod:`service.queue.keys` for the
key layout.
"""

from service.queue.broker import Broker, Delivery, open_broker
from service.queue.connection import RedisSettings, connect, refuses_writes
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
    "refuses_writes",
]
