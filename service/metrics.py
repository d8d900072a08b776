"""Every Prometheus metric of the service, defined once, in one place.

Each process builds the groups it needs on a registry of its own (the API an
:class:`ApiMetrics`, a worker a :class:`WorkerMetrics`), never on the global default
registry: two apps in one test process, or an API and a worker in one ``serve``, then
never collide, and each ``/metrics`` shows exactly its own process. Names follow the
Prometheus conventions: a ``hdr_`` namespace, base units (seconds, bytes, pixels) in the
name, ``_total`` on counters. Labels carry bounded values only (templated routes, stage
and outcome names, model names from the repository), never a job id.

Queue-wide numbers (depth, age of the oldest job, dead letters, live workers) are read
from Redis when ``/metrics`` is scraped (:meth:`QueueMetrics.refresh`), so every process
reports the same truth and none keeps a counter that drifts.

Nothing here imports torch: :func:`gpu_memory_collector` does, lazily, and only a worker
calls it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from service.queue import Broker

log = logging.getLogger(__name__)

NAMESPACE: Final = "hdr"

#: Request latencies: API calls take milliseconds, uploads and sync waits seconds.
REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Job stages: from milliseconds (encode of a small frame) to minutes (CPU inference).
STAGE_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
#: Tiles per engine call: 1 up to the largest tile batches in use.
TILES_PER_CALL_BUCKETS: Final = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
#: Longest a scrape waits for Redis (scrapes time out after 10 s by default).
REFRESH_TIMEOUT_SECONDS: Final = 2.0
#: Upload sizes per job: 100 kB (small PNGs) to 256 MB (three 24-megapixel 16-bit TIFFs).
UPLOAD_BUCKETS: Final = tuple(100_000 * 4**i for i in range(8))


class Stage(str, Enum):
    """Where a job spends its time; the ``stage`` label of ``hdr_job_stage_seconds``."""

    QUEUE_WAIT = "queue_wait"
    """Accepted until a worker started it (the last start, for a re-delivered job)."""
    DECODE = "decode"
    """Reading the uploads from the blob store and decoding them to pixels."""
    INFERENCE = "inference"
    """Preprocessing, tiled engine calls and blending."""
    ENCODE = "encode"
    """Writing the float32 OpenEXR result."""
    STORE = "store"
    """Writing the result to the blob store and finishing the job in Redis."""


class Outcome(str, Enum):
    """How a worker's attempt at a job ended; the ``outcome`` label of ``hdr_jobs_total``."""

    SUCCEEDED = "succeeded"
    """The result is stored."""
    FAILED = "failed"
    """Failed for good (bad input, or the last attempt)."""
    RETRIED = "retried"
    """Failed, and queued again for another attempt."""
    CANCELLED = "cancelled"
    """Its owner cancelled it while it ran."""
    HANDED_BACK = "handed_back"
    """Given back unfinished at shutdown, for another worker to run."""
    LOST = "lost"
    """Another worker took it over (this one was too slow to report progress)."""
    ENGINE_FAULT = "engine_fault"
    """The engine failed unrecoverably; the job was queued again and the worker exits."""


class WebhookResult(str, Enum):
    """How one webhook attempt ended; the ``result`` label of ``hdr_webhook_attempts_total``."""

    SUCCESS = "success"
    """The receiver answered 2xx."""
    SERVER_ERROR = "server_error"
    """It answered 5xx (retried)."""
    CLIENT_ERROR = "client_error"
    """It answered 1xx, 3xx or 4xx: a redirect is never followed; not retried."""
    TIMEOUT = "timeout"
    """No complete answer within HDR_WEBHOOK_TIMEOUT_SECONDS (retried)."""
    CONNECTION_ERROR = "connection_error"
    """Its name did not resolve, or connecting or talking to it failed (retried)."""
    REFUSED = "refused"
    """The SSRF guard refused the URL at delivery time (its DNS changed); not retried."""
    INTERNAL_ERROR = "internal_error"
    """A fault of the dispatcher itself (logged with its traceback); not retried."""


class WebhookOutcome(str, Enum):
    """How a job's notification ended; the ``outcome`` label of ``hdr_webhook_deliveries_total``."""

    DELIVERED = "delivered"
    """An attempt got a 2xx."""
    FAILED = "failed"
    """Given up: retries spent, or an answer or refusal that retrying cannot change."""
    EXPIRED = "expired"
    """The job record expired before the notification could be sent."""


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and that format's media type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _standard_collectors(registry: CollectorRegistry) -> None:
    """process_* and python_info, what every Prometheus client exports by default."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


class QueueMetrics:
    """The queue as Redis holds it, refreshed at scrape time by every process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.redis_up = Gauge(
            f"{NAMESPACE}_redis_up",
            "1 when Redis answered the last scrape's queries, else 0.",
            registry=registry,
        )
        self.depth = Gauge(
            f"{NAMESPACE}_queue_depth",
            "Jobs accepted and not started (what HDR_MAX_QUEUE_LENGTH limits).",
            registry=registry,
        )
        self.oldest_age = Gauge(
            f"{NAMESPACE}_queue_oldest_job_age_seconds",
            "Age of the oldest queued job; 0 when none waits.",
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{NAMESPACE}_jobs_in_flight",
            "Jobs handed to a worker and not finished (running, or awaiting re-delivery).",
            registry=registry,
        )
        self.dead_letters = Gauge(
            f"{NAMESPACE}_dead_letter_jobs",
            "Entries in the dead-letter stream (kept for the job TTL).",
            registry=registry,
        )
        self.workers = Gauge(
            f"{NAMESPACE}_workers",
            "Workers with a live heartbeat, by whether they are ready to take jobs.",
            ["ready"],
            registry=registry,
        )
        self.stream_length = Gauge(
            f"{NAMESPACE}_model_stream_length",
            "Jobs of a model waiting or running: its job stream's length, what KEDA scales"
            " that model's workers on.",
            ["model"],
            registry=registry,
        )
        self.model_workers = Gauge(
            f"{NAMESPACE}_model_workers",
            "Ready live workers serving a model (0 with a non-empty stream: its jobs wait).",
            ["model"],
            registry=registry,
        )

    async def refresh(self, broker: Broker) -> None:
        """Read the queue's numbers from Redis; on a Redis error only ``redis_up`` drops.

        Bounded by :data:`REFRESH_TIMEOUT_SECONDS`, so that a scrape answers in time
        (with ``hdr_redis_up 0``) while Redis is away, rather than timing out.
        """
        try:
            depth, oldest, dead, workers, streams = await asyncio.wait_for(
                asyncio.gather(
                    broker.queue_depth(),
                    broker.oldest_queued_age_seconds(),
                    broker.dead_letter_depth(),
                    broker.live_workers(),
                    broker.model_streams(),
                ),
                REFRESH_TIMEOUT_SECONDS,
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("cannot read queue metrics from Redis: %s", str(exc) or type(exc).__name__)
            self.redis_up.set(0)
            return
        self.redis_up.set(1)
        self.depth.set(depth)
        self.oldest_age.set(oldest)
        self.in_flight.set(sum(counts.pending for counts in streams.values()))
        self.dead_letters.set(dead)
        ready = sum(1 for w in workers if w.get("ready"))
        self.workers.labels(ready="true").set(ready)
        self.workers.labels(ready="false").set(len(workers) - ready)
        serving = Tally(name for w in workers if w.get("ready") for name in (w.get("models") or {}))
        for model in set(streams) | set(serving):
            counts = streams.get(model)
            self.stream_length.labels(model=model).set(counts.length if counts else 0)
            self.model_workers.labels(model=model).set(serving.get(model, 0))


class WebhookMetrics:
    """The webhook dispatcher's numbers (it runs in the API process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            f"{NAMESPACE}_webhook_deliveries_total",
            "Job notifications finished, by outcome (delivered, failed, expired).",
            ["outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            f"{NAMESPACE}_webhook_attempts_total",
            "Webhook HTTP attempts, by result (success, server_error, timeout, ...).",
            ["result"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            f"{NAMESPACE}_webhook_attempt_duration_seconds",
            "Time of one webhook attempt: DNS check, connect, request, answer.",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.pending = Gauge(
            f"{NAMESPACE}_webhooks_pending",
            "Job notifications queued or waiting for a retry (all dispatchers).",
            registry=registry,
        )


class ApiMetrics:
    """What the API process exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        _standard_collectors(self.registry)
        self.queue = QueueMetrics(self.registry)
        self.requests = Counter(
            f"{NAMESPACE}_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            f"{NAMESPACE}_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            f"{NAMESPACE}_jobs_submitted_total",
            "Jobs accepted and queued, by model (HDR_DEFAULT_MODEL when the job named none).",
            ["model"],
            registry=self.registry,
        )
        self.jobs_queued_unserved = Counter(
            f"{NAMESPACE}_jobs_queued_unserved_total",
            "Jobs accepted for a model no live worker served at the time (they wait in the"
            " model's stream for one; HDR_UNSERVED_MODEL_POLICY=queue), by model.",
            ["model"],
            registry=self.registry,
        )
        self.jobs_rejected = Counter(
            f"{NAMESPACE}_jobs_rejected_total",
            "Job submissions refused before queuing, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.upload_bytes = Histogram(
            f"{NAMESPACE}_upload_bytes",
            "Bytes of the three exposures of each accepted job.",
            buckets=UPLOAD_BUCKETS,
            registry=self.registry,
        )
        self.webhooks = WebhookMetrics(self.registry)


class WorkerMetrics:
    """What a worker process exports on its own port."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        _standard_collectors(self.registry)
        self.queue = QueueMetrics(self.registry)
        self.jobs = Counter(
            f"{NAMESPACE}_jobs_total",
            "Attempts at jobs this worker finished, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            f"{NAMESPACE}_job_stage_seconds",
            "Time a job spent in each stage (queue_wait, decode, inference, encode, store).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            f"{NAMESPACE}_job_latency_seconds",
            "From submission to stored result, for jobs this worker completed.",
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.tiles = Counter(
            f"{NAMESPACE}_tiles_processed_total",
            "Tiles run through the engine, by model.",
            ["model"],
            registry=self.registry,
        )
        self.pixels = Counter(
            f"{NAMESPACE}_pixels_processed_total",
            "Output pixels reconstructed (width x height of finished jobs), by model.",
            ["model"],
            registry=self.registry,
        )
        self.throughput = Gauge(
            f"{NAMESPACE}_inference_throughput_pixels_per_second",
            "Output pixels per second of inference in the last job, by model.",
            ["model"],
            registry=self.registry,
        )
        self.engine_busy_seconds = Counter(
            f"{NAMESPACE}_worker_engine_busy_seconds_total",
            "Seconds this worker's engine spent in engine calls; its rate() is the engine's"
            " busy fraction (1: never idle).",
            registry=self.registry,
        )
        self.tiles_per_call = Histogram(
            f"{NAMESPACE}_worker_tiles_per_engine_call",
            "Tiles packed into each engine call (at most the model's tile batch).",
            buckets=TILES_PER_CALL_BUCKETS,
            registry=self.registry,
        )
        self.prefetch_wait_seconds = Histogram(
            f"{NAMESPACE}_worker_prefetch_wait_seconds",
            "Time a claimed job, decoded and ready, waited for the engine (HDR_PREFETCH_JOBS).",
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            f"{NAMESPACE}_model_info",
            "1 for each model this worker serves, with how it runs.",
            ["model", "version", "architecture", "backend", "precision", "device"],
            registry=self.registry,
        )
        self.ready = Gauge(
            f"{NAMESPACE}_worker_ready",
            "1 once models are loaded and warmed up and the worker takes jobs, else 0.",
            registry=self.registry,
        )
        self.heartbeats = Counter(
            f"{NAMESPACE}_worker_heartbeats_total",
            "Heartbeats written to Redis.",
            registry=self.registry,
        )
        self.heartbeat_errors = Counter(
            f"{NAMESPACE}_worker_heartbeat_errors_total",
            "Heartbeats that could not be written (Redis unreachable).",
            registry=self.registry,
        )
        self.last_heartbeat = Gauge(
            f"{NAMESPACE}_worker_last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat written.",
            registry=self.registry,
        )

    def set_models(self, described: Mapping[str, Mapping[str, object]]) -> None:
        """Export ``hdr_model_info`` for the models a worker serves (``describe()`` each)."""
        for name, info in described.items():
            self.model_info.labels(
                model=name,
                version=str(info.get("version")),
                architecture=str(info.get("architecture")),
                backend=str(info.get("backend")),
                precision=str(info.get("precision")),
                device=str(info.get("device")),
            ).set(1)


class _GpuMemoryCollector(Collector):
    """torch.cuda's allocator statistics per device, read at scrape time."""

    def __init__(self, torch_module: object) -> None:
        self._torch = torch_module

    def collect(self) -> Iterator[Metric]:
        cuda = self._torch.cuda  # type: ignore[attr-defined]
        families = {
            "allocated": GaugeMetricFamily(
                f"{NAMESPACE}_gpu_memory_allocated_bytes",
                "GPU memory held by tensors (torch.cuda.memory_allocated).",
                labels=["device"],
            ),
            "reserved": GaugeMetricFamily(
                f"{NAMESPACE}_gpu_memory_reserved_bytes",
                "GPU memory reserved by torch's caching allocator.",
                labels=["device"],
            ),
            "peak": GaugeMetricFamily(
                f"{NAMESPACE}_gpu_memory_peak_allocated_bytes",
                "Peak GPU memory held by tensors since the worker started.",
                labels=["device"],
            ),
        }
        for index in range(cuda.device_count()):
            device = f"cuda:{index}"
            families["allocated"].add_metric([device], cuda.memory_allocated(index))
            families["reserved"].add_metric([device], cuda.memory_reserved(index))
            families["peak"].add_metric([device], cuda.max_memory_allocated(index))
        yield from families.values()


def gpu_memory_collector(registry: CollectorRegistry) -> bool:
    """Register GPU memory gauges when torch with CUDA is present; whether it was.

    Only a worker calls this (it imports torch); without torch or CUDA nothing is
    registered, so a CPU worker exports no empty GPU series.
    """
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    registry.register(_GpuMemoryCollector(torch))
    return True
