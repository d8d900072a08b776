"""Liveness, readiness and metrics, under our paths and those GPU-serving tools probe.

``/healthz`` and ``/v2/health/live`` (the KServe v2 / Triton path) answer 200 while the
process runs: they touch nothing, so a slow Redis never gets the API restarted.
``/readyz`` and ``/v2/health/ready`` answer 200 only while Redis answers a PING and the
blob store is reachable and writable: an API that cannot queue should leave the load
balancer's rotation. Workers are not required:
jobs wait in the queue until one starts. None of these needs an API key.
"""

from __future__ import annotations

import asyncio
from typing import Final

from fastapi import APIRouter, Response

from service.api.deps import BrokerDep, MetricsDep
from service.api.errors import NotReady
from service.api.schemas import HealthPublic, error_responses
from service.metrics import exposition
from service.storage import StoreUnavailable

router = APIRouter(tags=["health"])

READY_ERRORS = error_responses(503)
#: A readiness answer must come within a probe's usual 1 s timeout.
READY_TIMEOUT_SECONDS: Final = 0.8


async def _live() -> HealthPublic:
    return HealthPublic(status="ok")


async def _ready(broker: BrokerDep) -> HealthPublic:
    if not await broker.ping(READY_TIMEOUT_SECONDS):
        raise NotReady("Redis (the job queue) does not answer")
    try:
        await asyncio.wait_for(asyncio.to_thread(broker.store.check), READY_TIMEOUT_SECONDS)
    except StoreUnavailable as exc:
        raise NotReady(exc.message) from exc
    except TimeoutError:
        raise NotReady(f"the blob store {broker.store.url} does not answer") from None
    workers = await broker.live_workers()
    ready = sum(1 for beat in workers if beat.get("ready"))
    return HealthPublic(
        status="ready",
        checks={"redis": "ok", "store": "ok", "workers": len(workers), "workers_ready": ready},
    )


router.add_api_route(
    "/healthz", _live, methods=["GET"], operation_id="checkLiveness", summary="Liveness"
)
router.add_api_route(
    "/v2/health/live",
    _live,
    methods=["GET"],
    operation_id="checkLivenessV2",
    summary="Liveness (KServe v2 / Triton path)",
)
router.add_api_route(
    "/readyz",
    _ready,
    methods=["GET"],
    operation_id="checkReadiness",
    summary="Readiness: Redis answers",
    responses=READY_ERRORS,
)
router.add_api_route(
    "/v2/health/ready",
    _ready,
    methods=["GET"],
    operation_id="checkReadinessV2",
    summary="Readiness (KServe v2 / Triton path)",
    responses=READY_ERRORS,
)


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(broker: BrokerDep, api_metrics: MetricsDep) -> Response:
    """Request counts and latencies, job submissions, and the queue as Redis holds it now."""
    await api_metrics.queue.refresh(broker)
    body, media_type = exposition(api_metrics.registry)
    return Response(body, media_type=media_type)
