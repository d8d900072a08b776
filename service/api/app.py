"""The API application: assembled here, from parts that live elsewhere.

:func:`create_app` wires settings, metrics, error handlers, routers and middleware; the
broker (the Redis connection) opens in the lifespan, so importing this module, or
creating an app, touches neither the network nor the environment. This process never
imports torch (a test checks it): it validates and queues, the workers compute.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from service.api.deps import key_hashes
from service.api.errors import install_error_handlers
from service.api.middleware import (
    ApiKeyGate,
    BodyReadTimeout,
    BodySizeLimit,
    RequestMetrics,
    UploadLimit,
)
from service.api.openapi import install_openapi
from service.api.routes import health, jobs, models
from service.api.uploads import PROBE_SLOTS, request_body_limit
from service.config import Settings
from service.metrics import ApiMetrics
from service.queue import open_broker
from service.webhooks.dispatcher import run_dispatcher

DESCRIPTION = """
Reconstructs a linear HDR image from three bracketed LDR exposures with AFUNet.

**Flow.** `POST /v1/jobs` with the three files (multipart, field `exposures` repeated)
answers 202 with the job; poll `GET /v1/jobs/{id}`; download
`GET /v1/jobs/{id}/result?format=exr|hdr|png`. `POST /v1/reconstruct` does all three in
one call when the job finishes within the server's wait bound.

**Exposures.** Give `exposure_values` (EV stops) or `exposure_times` (seconds), or
neither and the files' EXIF decides. Files may come in any order; they are sorted short
to long.

**Auth.** When the server has API keys, every `/v1` route needs one
(`Authorization: Bearer <key>` or `X-API-Key`), and a job is visible only with the key
that created it.

**Results.** `GET /v1/jobs/{id}/result` streams the file; with an S3 blob store it answers
307 to a short-lived presigned URL instead, unless `redirect=false` is asked.

**Errors.** Every error is `{"error": {"code", "message"}}`: 400 malformed, 401/403 auth,
404 unknown job, 409 no result (yet), 413 too large, 415 unsupported format, 422 invalid
exposure set or model, 429 queue full (with Retry-After), 503 Redis or the blob store
unavailable, or too many uploads in progress (with Retry-After).
"""


def _version() -> str:
    try:
        return version("afunet-service")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings) -> FastAPI:
    """A ready-to-serve API app for ``settings`` (needs ``settings.redis_url``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            open_broker(
                settings, client_name="hdr-api", deadline=settings.request_timeout_seconds
            ) as broker,
            run_dispatcher(broker, settings, metrics.webhooks),
        ):
            app.state.broker = broker
            app.state.probe_slots = asyncio.Semaphore(PROBE_SLOTS)  # of this event loop
            yield

    app = FastAPI(
        title="AFUNet HDR service",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    metrics = ApiMetrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.key_hashes = key_hashes(settings.api_keys)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(health.router)
    install_openapi(app, auth=bool(settings.api_keys))
    # Added last = outermost: metrics also count the 413s and 408s the body bounds answer;
    # the key gate and the upload limit answer before any body is read.
    app.add_middleware(UploadLimit, limit=settings.max_concurrent_uploads)
    app.add_middleware(ApiKeyGate, key_hashes=app.state.key_hashes)
    app.add_middleware(BodySizeLimit, max_bytes=request_body_limit(settings))
    app.add_middleware(BodyReadTimeout, seconds=settings.body_read_timeout_seconds)
    app.add_middleware(RequestMetrics, metrics=metrics, router=app.router)
    return app
