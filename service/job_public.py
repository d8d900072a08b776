"""A job as its owner sees it: the one public JSON view of a job record.

The API answers with it (``GET /v1/jobs/{id}`` and the rest, through
:mod:`service.api.schemas`, which is the contract it belongs to) and the webhook
dispatcher sends it as the body of a job's notification. It lives here, below both, so
that :mod:`service.webhooks` does not depend on the API that runs it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, Field

from service.queue import JobRecord, JobState
from service.queue.jobs import WebhookStatus


class Progress(BaseModel):
    """Tiles of the job's frame run so far."""

    tiles_done: int = Field(description="Tiles finished.")
    tiles_total: int = Field(description="Tiles of the plan; 0 until the job starts.")


class WebhookPublic(BaseModel):
    """Where the notification of a job submitted with a webhook_url stands."""

    status: WebhookStatus | None = Field(
        description="null while the job runs; pending (being tried or waiting for a retry),"
        " delivered, or failed (given up) once it ended."
    )
    attempts: int = Field(description="HTTP attempts so far.")
    error: str | None = Field(description="The last failed attempt's outcome, if any.")


def _when(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    id: str = Field(description="The job's id: 128 random bits, 32 hex digits.")
    status: JobState = Field(
        description="queued, running, succeeded, failed or cancelled; the last three are final."
    )
    progress: Progress
    model: str | None = Field(
        description="Model that runs (or will run) the job: the one it named, else"
        " HDR_DEFAULT_MODEL, decided when it was accepted."
    )
    engine: str | None = Field(description="Backend that ran it (torch, onnxruntime, ...).")
    width: int | None = Field(description="Frame width in pixels.")
    height: int | None = Field(description="Frame height in pixels.")
    exposure_values: list[float] | None = Field(
        description="EV stops used, short to long (the exposures were sorted by them),"
        " relative to the shortest exposure: the first is 0."
    )
    attempts: int = Field(description="Deliveries to a worker so far.")
    created_at: datetime = Field(description="When the job was accepted (UTC).")
    started_at: datetime | None = Field(description="When a worker last started it.")
    finished_at: datetime | None = Field(description="When it reached a final status.")
    timings: dict[str, float] = Field(
        description="Seconds per stage of the successful run: queue_wait, decode, inference,"
        " encode, store."
    )
    error: str | None = Field(
        description="Why it failed, or why the last attempt failed while it is retried."
    )
    waiting_reason: str | None = Field(
        None,
        description="For a queued job that no live worker can take now (no worker serves"
        " its model; HDR_UNSERVED_MODEL_POLICY=queue), why it waits; null otherwise.",
    )
    estimated_seconds: float | None = Field(
        None,
        description="Expected run time once a worker starts it, in seconds: the moving"
        " average of recent jobs' seconds per frame megapixel times this job's, when it"
        " was queued; null until some job has finished. Queue wait is not included.",
    )
    status_url: str = Field(description="Where to poll this job.")
    result_url: str = Field(description="Where to download the result once it succeeded.")
    webhook: WebhookPublic | None = Field(
        None, description="The notification's state; null for a job without webhook_url."
    )

    @classmethod
    def from_record(cls, record: JobRecord, root_path: str = "") -> JobPublic:
        """The public view of a broker record (the owner and internal fields stay out)."""
        status_url = f"{root_path}/v1/jobs/{record.id}"
        evs = record.params.exposure_values if record.params is not None else None
        return cls(
            id=record.id,
            status=record.status,
            progress=Progress(tiles_done=record.tiles_done, tiles_total=record.tiles_total),
            model=record.model,
            engine=record.engine,
            width=record.width,
            height=record.height,
            exposure_values=list(evs) if evs is not None else None,
            attempts=record.attempts,
            created_at=datetime.fromtimestamp(record.created_at, tz=timezone.utc),
            started_at=_when(record.started_at),
            finished_at=_when(record.finished_at),
            timings=record.timings.as_dict(),
            error=record.error,
            estimated_seconds=record.estimated_seconds,
            status_url=status_url,
            result_url=f"{status_url}/result",
            webhook=None
            if record.webhook_url is None
            else WebhookPublic(
                status=record.webhook_status,
                attempts=record.webhook_attempts,
                error=record.webhook_error,
            ),
        )
