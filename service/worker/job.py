"""The job a worker has in hand: its state lives exactly as long as the job, not the worker.

A :class:`Worker` has one job on its engine at a time, plus up to ``prefetch_jobs``
being decoded or waiting for the engine and those being encoded and stored; everything
that belongs to one job (its delivery, whether the heartbeat keeps it claimed, the stop
signals the inference thread checks between tile batches, progress bookkeeping, the drain
timer) is an :class:`ActiveJob`, made when the job is received and dropped when it
ends, so no field of one job can leak into the next. Reading a job's inputs from the
blob store is here too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from service.exposures import ExposureSet
from service.imaging import decode
from service.queue import Delivery
from service.queue.jobs import JobParams
from service.storage import BlobStore, input_name


class JobStopped(Exception):
    """Raised in the progress callback to end a job's inference between tile batches."""


class Cancelled(JobStopped):
    """The owner cancelled the job."""


class HandedBack(JobStopped):
    """The worker is shutting down and its drain time is over."""


class Lost(JobStopped):
    """Another worker has taken the job over (this one was presumed dead)."""


@dataclass(eq=False)
class ActiveJob:
    """One delivered job while this worker has it."""

    delivery: Delivery
    model: str | None = None
    """The model it runs on, once picked."""
    start_recorded: bool = False
    """Whether its start is recorded in Redis (its record says running)."""
    settling: bool = False
    """Set when its end is being recorded (done, failed, released, cancelled) or it has
    ended: from then on its entry may be taken over again, by this worker too."""
    handback: threading.Event = field(default_factory=threading.Event)
    """Set when the drain time is over: hand the job back at the next tile batch."""
    overdue: asyncio.Event = field(default_factory=asyncio.Event)
    """Set with ``handback``, for the event loop: stop waiting for the job's thread."""
    lost: threading.Event = field(default_factory=threading.Event)
    """Set when another worker has taken the job over."""
    drain_timer: asyncio.TimerHandle | None = None
    last_progress: float = field(default_factory=time.monotonic)
    tiles_reported: int = 0
    """Tiles already counted in the metrics."""
    holds_slot: bool = False
    """Whether it holds one of the worker's ``1 + prefetch_jobs`` slots (see runner)."""
    engine_started: bool = False
    """Whether its turn on the engine has begun: a prefetched job has not started."""
    holds_engine: bool = False
    """Whether its engine turn is on (from the turn's start to its last engine call)."""
    turn_wait: float = 0.0
    """Seconds its inference waited for the engine turn (not counted as inference)."""

    @property
    def job_id(self) -> str:
        return self.delivery.job_id

    @property
    def claimed(self) -> bool:
        """Whether the heartbeat keeps renewing its claim: from its recorded start until
        its end is being recorded."""
        return self.start_recorded and not self.settling

    def stalled_seconds(self, limit: float) -> float | None:
        """Seconds without progress, once past ``limit``; else None."""
        idle = time.monotonic() - self.last_progress
        return idle if idle > limit else None

    def hand_back(self) -> None:
        """The drain is over: the thread stops at its next tile batch, and the event
        loop stops waiting for it now (see :mod:`service.worker.threads`)."""
        self.handback.set()
        self.overdue.set()

    def end(self) -> None:
        """Release what outlives a job otherwise (the drain timer)."""
        self.settling = True
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None


def read_exposures(
    store: BlobStore, job_id: str, params: JobParams, max_pixels: int
) -> ExposureSet:
    """The job's uploads from the blob store as an exposure set (short to long, as the
    API sorted them); one upload's bytes at a time are held besides the decoded frames."""
    names = params.inputs or tuple(
        input_name(job_id, i) for i in range(len(params.exposure_values))
    )
    labels = params.names or tuple(f"exposure {i + 1}" for i in range(len(names)))
    images = [
        decode(store.read(name), label, max_pixels)
        for name, label in zip(names, labels, strict=True)
    ]
    return ExposureSet.from_images(images, list(params.exposure_values), list(labels))
