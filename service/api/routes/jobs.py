"""Jobs: submit an exposure set, follow it, download its result, cancel it; or all at once.

The worker stores the result once in the blob store, as lossless float32 OpenEXR. Another
format (PNG preview, Radiance ``.hdr``, float16 EXR) is converted from it on its first
download (in a thread: encoding is CPU work) and kept beside it, so it is made once per
job. A download streams the blob from the store; where the store can presign URLs (S3)
it answers 307 to a short-lived URL instead, unless the client asks ``redirect=false``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Form, Header, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from service.api.catalog import load_catalog
from service.api.deps import (
    BrokerDep,
    MetricsDep,
    OwnerDep,
    SettingsDep,
    VisibleJobDep,
    get_owner,
)
from service.api.errors import NoResult, NotCancellable
from service.api.schemas import ErrorBody, JobCreate, JobPublic, error_responses
from service.api.uploads import check_job_cost, check_tile_size, read_submission
from service.config import Settings
from service.errors import JobNotFinished, JobNotFound, ServiceError
from service.imaging import MEDIA_TYPES, ExrDtype, ResultFormat, decode_exr, encode_result
from service.metrics import ApiMetrics
from service.queue import Broker, JobRecord, JobState
from service.storage import BlobNotFound, BlobStore, result_name
from service.webhooks.guard import accept_webhook_url

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[Depends(get_owner)])

#: Polling of POST /v1/reconstruct: first and longest pause between reads of the record.
SYNC_POLL_FIRST_SECONDS: Final = 0.02
SYNC_POLL_MAX_SECONDS: Final = 0.25


SUBMIT_ERRORS: Final = error_responses(400, 401, 403, 413, 415, 422, 429, 503)
JOB_ERRORS: Final = error_responses(401, 403, 404, 503)
RESULT_CONTENT: Final = {
    MEDIA_TYPES[fmt]: {"schema": {"type": "string", "format": "binary"}} for fmt in ResultFormat
}

FormatQuery = Annotated[
    ResultFormat,
    Query(
        alias="format",
        description="exr: OpenEXR (lossless); hdr: Radiance RGBE (~1% precision);"
        " png: 8-bit mu-law tone-mapped preview (not HDR).",
    ),
]
DtypeQuery = Annotated[
    ExrDtype,
    Query(description="OpenEXR sample type; float32 is the stored, lossless one."),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any printable token: a retry with the same key (and API key) and the"
        " same request (files, exposures, model, tile size) returns the job the first"
        " request created instead of queuing another; the same key with a different"
        " request is refused with 422 `idempotency_key_reused`.",
    ),
]
RedirectQuery = Annotated[
    bool,
    Query(
        description="Where the blob store can presign URLs (S3), the answer is 307 to a"
        " short-lived URL of the file; false streams it through the API instead. A file"
        " store always streams.",
    ),
]
JobForm = Annotated[JobCreate, Form(media_type="multipart/form-data")]


def _public(request: Request, record: JobRecord, waiting_reason: str | None = None) -> JobPublic:
    """The job as its owner sees it, with links under the app's mount point."""
    job = JobPublic.from_record(record, request.scope.get("root_path", ""))
    if record.status is JobState.QUEUED and waiting_reason is not None:
        job.waiting_reason = waiting_reason
    return job


@dataclass(frozen=True)
class _Accepted:
    record: JobRecord
    waiting_reason: str | None
    """Why it may wait beyond the jobs ahead of it (no live worker serves its model)."""


async def _submit(
    request: Request,
    form: JobCreate,
    idempotency_key: str | None,
    owner: str | None,
    broker: Broker,
    settings: Settings,
    metrics: ApiMetrics,
) -> _Accepted:
    """Validate everything, then queue; every refusal is counted by its error code."""
    try:
        submission = await read_submission(form, settings, request.app.state.probe_slots)
        catalog = await load_catalog(broker, settings)
        route = catalog.resolve(form.model)
        model = route.model
        overlap = catalog.tile_overlap(model)
        tile_size = check_tile_size(form.tile_size, submission.width, submission.height, overlap)
        check_job_cost(
            settings,
            submission.width,
            submission.height,
            tile_size,
            catalog.tile_size(model),
            overlap,
        )
        webhook_url = await accept_webhook_url(form.webhook_url, settings)
        record = await broker.submit(
            submission.params(tile_size),
            submission.files,
            owner=owner,
            idempotency_key=idempotency_key,
            model=model,
            width=submission.width,
            height=submission.height,
            webhook_url=webhook_url,
            request_digest=submission.request_digest(form.model, tile_size, webhook_url),
        )
    except ServiceError as exc:
        metrics.jobs_rejected.labels(code=exc.code).inc()
        raise
    finally:
        for upload in form.exposures:
            await upload.close()
    metrics.jobs_submitted.labels(model=model).inc()
    if route.waiting_reason is not None:
        metrics.jobs_queued_unserved.labels(model=model).inc()
    metrics.upload_bytes.observe(submission.total_bytes)
    log.info(
        "accepted job %s: %sx%s, model %s, EVs %s (%s)",
        record.id,
        submission.width,
        submission.height,
        model,
        submission.evs,
        submission.source,
    )
    return _Accepted(record, route.waiting_reason)


def _variant(fmt: ResultFormat, dtype: ExrDtype) -> str:
    """The blob variant of a format: ``exr-float32`` (the stored one), ``exr-float16``,
    ``hdr`` or ``png``."""
    return f"exr-{dtype}" if fmt is ResultFormat.EXR else fmt.value


def _converted(store: BlobStore, job_id: str, fmt: ResultFormat, dtype: ExrDtype) -> str:
    """The name of the result in the asked format, converting and storing it the first
    time (two concurrent first downloads may both convert: the writes are atomic)."""
    name = result_name(job_id, _variant(fmt, dtype))
    if store.exists(name):
        return name
    data = store.read(result_name(job_id))
    store.put(name, encode_result(decode_exr(data), fmt, dtype))
    return name


async def _result_response(
    broker: Broker,
    settings: Settings,
    record: JobRecord,
    fmt: ResultFormat,
    dtype: ExrDtype,
    redirect: bool = True,
) -> Response:
    if record.status is JobState.SUCCEEDED:
        store = broker.store
        try:
            name = await asyncio.to_thread(_converted, store, record.id, fmt, dtype)
            url = store.presign(name, settings.presign_seconds) if redirect else None
            chunks = None if url else await asyncio.to_thread(store.iter_chunks, name)
        except BlobNotFound:
            raise JobNotFound(f"the result of job {record.id} has expired") from None
        filename = f"{record.id}.{fmt.value}"
        if url is not None:
            return RedirectResponse(url, status_code=307)
        assert chunks is not None
        return StreamingResponse(
            chunks,  # a sync iterator: Starlette reads it in a worker thread
            media_type=MEDIA_TYPES[fmt],
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    if record.status.is_final:
        reason = f": {record.error}" if record.error else ""
        raise NoResult(f"job {record.id} {record.status.value} and has no result{reason}")
    raise JobNotFinished(
        f"job {record.id} is {record.status.value}"
        f" ({record.tiles_done}/{record.tiles_total} tiles); poll its status_url"
    )


@router.post(
    "/jobs",
    operation_id="createJob",
    status_code=202,
    summary="Submit three exposures for reconstruction",
    response_description="Accepted and queued (or the job an Idempotency-Key already made).",
    responses=SUBMIT_ERRORS,
)
async def create_job(
    request: Request,
    response: Response,
    form: JobForm,
    broker: BrokerDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Queue a job; poll ``status_url`` and download ``result_url`` once it succeeded.

    Every check (count, format, sizes, exposure metadata, model) runs before anything is
    queued, so a 202 means the job will reach the model.
    """
    accepted = await _submit(request, form, idempotency_key, owner, broker, settings, metrics)
    job = _public(request, accepted.record, accepted.waiting_reason)
    response.headers["Location"] = job.status_url
    return job


@router.get(
    "/jobs/{job_id}",
    operation_id="getJob",
    summary="A job's status and progress",
    responses=JOB_ERRORS,
)
async def get_job(
    request: Request, record: VisibleJobDep, broker: BrokerDep, settings: SettingsDep
) -> JobPublic:
    """Status, tile progress, timings per stage, the error of a failed job, and for a
    queued job whose model no live worker serves, why it waits."""
    reason = None
    if record.status is JobState.QUEUED and record.model is not None:
        reason = (await load_catalog(broker, settings)).waiting_reason(record.model)
    return _public(request, record, reason)


@router.get(
    "/jobs/{job_id}/result",
    operation_id="getResult",
    summary="Download the HDR result",
    response_class=Response,
    responses={
        200: {"content": RESULT_CONTENT, "description": "The linear HDR image."},
        307: {"description": "Download it from the presigned URL in `Location` (S3 store)."},
        **error_responses(400, 401, 403, 404, 409, 503),
    },
)
async def get_result(
    broker: BrokerDep,
    settings: SettingsDep,
    record: VisibleJobDep,
    fmt: FormatQuery = ResultFormat.EXR,
    dtype: DtypeQuery = "float32",
    redirect: RedirectQuery = True,
) -> Response:
    """The result of a succeeded job; 409 while it is queued or running, or if it failed.

    Streamed from the blob store, or a 307 to a presigned URL where the store has them
    (S3) and ``redirect`` is not false.
    """
    return await _result_response(broker, settings, record, fmt, dtype, redirect)


@router.delete(
    "/jobs/{job_id}",
    operation_id="cancelJob",
    summary="Cancel a job",
    responses={
        200: {"model": JobPublic, "description": "Cancelled (it was queued, or already was)."},
        202: {"model": JobPublic, "description": "Running: it stops at its next tile batch."},
        **error_responses(401, 403, 404, 409, 503),
    },
)
async def cancel_job(
    request: Request, response: Response, broker: BrokerDep, record: VisibleJobDep
) -> JobPublic:
    """Cancel a queued job at once, or a running one between two tile batches."""
    if record.status in (JobState.SUCCEEDED, JobState.FAILED):
        raise NotCancellable(f"job {record.id} already {record.status.value}")
    after = await broker.cancel(record.id)
    if after.status in (JobState.SUCCEEDED, JobState.FAILED):
        raise NotCancellable(f"job {record.id} already {after.status.value}")
    response.status_code = 200 if after.status is JobState.CANCELLED else 202
    return _public(request, after)


@router.post(
    "/reconstruct",
    operation_id="reconstruct",
    summary="Submit and wait for the result",
    response_class=Response,
    responses={
        200: {"content": RESULT_CONTENT, "description": "The result, in the asked format."},
        202: {"model": JobPublic, "description": "Still running after the wait; poll it."},
        409: {"model": ErrorBody, "description": "The job failed or was cancelled."},
        **SUBMIT_ERRORS,
    },
)
async def reconstruct(
    request: Request,
    form: JobForm,
    broker: BrokerDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    owner: OwnerDep,
    fmt: FormatQuery = ResultFormat.EXR,
    dtype: DtypeQuery = "float32",
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """``POST /v1/jobs`` that waits up to HDR_SYNC_WAIT_SECONDS and answers the file.

    When the job takes longer the answer is 202 with the job, as ``POST /v1/jobs`` gives.
    """
    accepted = await _submit(request, form, idempotency_key, owner, broker, settings, metrics)
    record = accepted.record
    location = _public(request, record).status_url
    deadline = time.monotonic() + settings.sync_wait_seconds
    pause = SYNC_POLL_FIRST_SECONDS
    current: JobRecord | None = record
    while current is not None and not current.status.is_final:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or await request.is_disconnected():
            body = _public(request, current, accepted.waiting_reason)
            return JSONResponse(
                body.model_dump(mode="json"), status_code=202, headers={"Location": location}
            )
        await asyncio.sleep(min(pause, remaining))
        pause = min(2 * pause, SYNC_POLL_MAX_SECONDS)
        current = await broker.get(record.id)
    if current is None:
        raise JobNotFound(f"job {record.id} expired before it finished")
    response = await _result_response(broker, settings, current, fmt, dtype, redirect=False)
    response.headers["Location"] = location
    return response
