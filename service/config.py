"""The one settings object: every tunable of the service, read from ``HDR_*`` variables.

Nothing reads the environment at import time: callers build ``Settings()`` when they start
(in the CLI, the API's lifespan, the worker's start-up) and pass it down.
"""

from __future__ import annotations

import base64
import binascii
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Self

#: Tile geometry chosen from the tiled-vs-full and throughput measurements in README.md.
DEFAULT_TILE_SIZE = 256
DEFAULT_TILE_OVERLAP = 32
DEFAULT_TILE_BATCH = 2
#: Shortest API key accepted in HDR_API_KEYS.
MIN_API_KEY_LENGTH = 16
#: Longest accepted HDR_WORKER_ID (a consumer name and part of a Redis key).
MAX_WORKER_ID_LENGTH = 128
#: Webhook retry schedule by default: the delays between attempts, in seconds.
DEFAULT_WEBHOOK_RETRY_SECONDS = (5.0, 30.0, 120.0, 600.0, 1800.0)
#: Bounds of that schedule: a job record (and so its webhook) lives for the job TTL anyway.
MAX_WEBHOOK_RETRIES = 20
MAX_WEBHOOK_RETRY_DELAY = 7 * 24 * 3600.0
#: Standard Webhooks secrets: ``whsec_`` and the base64 of 24 to 64 random bytes.
WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_KEY_BYTES = (24, 64)


class Settings(BaseSettings):
    """Service configuration; see the configuration table in README.md."""

    # hide_input_in_errors: a refused value may be an API key or a DSN with a password.
    model_config = SettingsConfigDict(env_prefix="HDR_", extra="ignore", hide_input_in_errors=True)

    # --- model and inference -------------------------------------------------------------
    model_repo: Path = Field(Path("model_repo"), description="Model repository root.")
    default_model: str = Field(
        "afunet",
        description="Model a job runs on when it names none; the API records it on the job at"
        " submission, whatever the live workers serve.",
    )
    worker_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated models a worker loads and takes jobs for; empty: every"
        " model of the repository that opens. Splits a mixed fleet into per-model pools.",
    )
    unserved_model_policy: Literal["queue", "refuse"] = Field(
        "refuse",
        description="A job for a model of the repository that no live worker serves: refuse"
        " answers 503 with Retry-After (a fixed fleet, where nobody would take it); queue"
        " accepts it to wait in its model's stream, with a waiting_reason (an autoscaled"
        " fleet, where the waiting job makes KEDA start a worker for it). While no worker has"
        " finished loading, jobs queue under either.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Inference device; auto picks CUDA when available."
    )
    engine: str | None = Field(
        None,
        description="Force a backend (torch, onnxruntime, tensorrt); unset: config.yaml's"
        " backends in order.",
    )
    tile_size: int = Field(
        DEFAULT_TILE_SIZE,
        ge=16,
        description="Tile edge in pixels (x8); set, it overrides config.yaml's tiling.tile_size.",
    )
    tile_overlap: int = Field(
        DEFAULT_TILE_OVERLAP,
        ge=0,
        description="Tile overlap in pixels; set, it overrides config.yaml's tiling.overlap.",
    )
    tile_batch: int = Field(
        DEFAULT_TILE_BATCH,
        ge=1,
        description="Tiles per engine call; set, it overrides config.yaml's tiling.batch.",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Network arithmetic: auto = bf16 on GPU (fp16 where its parity check"
        " passes is opt-in), fp32 on CPU (bf16 on request where the CPU has AVX-512 BF16 or"
        " AMX, behind the same parity check); set, it overrides config.yaml's precision.",
    )
    torch_compile: bool = Field(False, description="torch.compile the network (torch backend).")
    cuda_graphs: bool = Field(
        True, description="Replay the fixed tile shape as a CUDA graph (torch backend, GPU)."
    )
    engine_cache: Path | None = Field(
        None,
        description="Where built ONNX/TensorRT engines are cached; default: the model's"
        " version folder in the repository.",
    )

    # --- Redis and the job queue ---------------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis DSN; unset means `serve` starts an embedded Redis."
    )
    key_prefix: str = Field("hdr", description="Prefix of every Redis key of the service.")
    job_ttl_seconds: int = Field(
        24 * 3600,
        ge=1,
        description="Lifetime of job records, uploads and results, counted from a job's last"
        " state change (queued, started, progress, finished...).",
    )
    visibility_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="A job whose worker stopped renewing its claim (it does so with every"
        " heartbeat) this long is re-delivered: how long a dead worker's job waits.",
    )
    max_attempts: int = Field(3, ge=1, description="Deliveries before a job is dead-lettered.")
    max_queue_length: int = Field(100, ge=1, description="Queued jobs beyond which POST is 429.")

    # --- blob store ----------------------------------------------------------------------
    storage_url: str | None = Field(
        None,
        description="Where uploads and results live: file:///dir (a local or shared"
        " directory) or s3://bucket/prefix. `serve` defaults to a folder next to its"
        " embedded Redis; `api` and `worker` refuse to start without it.",
    )
    presign_seconds: int = Field(
        300,
        ge=1,
        le=7 * 24 * 3600,
        description="Lifetime of the presigned URL a result download is redirected to"
        " (307) when the store has them (S3).",
    )
    sweep_interval_seconds: float = Field(
        600.0,
        gt=0,
        description="How often a worker sweeps the blob store for blobs of expired jobs"
        " (capped at the job TTL, so that no orphan outlives twice the TTL).",
    )

    # --- API limits and auth -------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys; empty disables auth."
    )
    max_upload_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Largest accepted file per exposure, in bytes."
    )
    max_pixels: int = Field(
        24_000_000,
        ge=1,
        description="Largest accepted frame, width x height: sized for a GPU worker (a"
        " 24 MP bracket takes seconds there, but tens of minutes on a CPU worker); lower it,"
        " or set HDR_MAX_TILES_PER_JOB, for CPU-only deployments.",
    )
    max_tiles_per_job: int | None = Field(
        None,
        ge=1,
        description="Most tiles one job may cut its frame into (frame size, tile size and"
        " overlap decide it); past it POST is 422 job_too_large. Unset: no limit beyond"
        " HDR_MAX_PIXELS.",
    )
    max_megapixels_per_key_per_minute: float | None = Field(
        None,
        gt=0,
        description="Frame megapixels each API key (all anonymous clients together when auth"
        " is off) may submit per clock minute; past it POST is 429 rate_limited with"
        " Retry-After. Unset: no limit.",
    )
    min_side: int = Field(16, ge=1, description="Smallest accepted width or height.")
    max_request_bytes: int | None = Field(
        None,
        ge=1,
        description="Largest accepted HTTP request body, checked before the multipart parser"
        " buffers it; default: three exposures of max_upload_bytes plus 1 MiB of form fields.",
    )

    max_concurrent_uploads: int = Field(
        8,
        ge=1,
        description="Submissions the API reads and stores at once; past it POST answers"
        " 503 with Retry-After (bounds the API's memory and temporary disk).",
    )

    # --- HTTP API ------------------------------------------------------------------------
    api_host: str = Field(
        "127.0.0.1",
        description="Address `api` and `serve` listen on; 0.0.0.0 in a container.",
    )
    api_port: int = Field(8000, ge=0, le=65535, description="Port `api` and `serve` listen on.")
    sync_wait_seconds: float = Field(
        30.0,
        ge=0,
        description="How long POST /v1/reconstruct waits for the result before answering 202"
        " with the job instead.",
    )

    # --- hostile input and a stalled Redis -------------------------------------------
    probe_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Deadline for checking a request's three files (headers and the"
        " completeness of their pixel data), run off the event loop; past it the request"
        " is refused with 413.",
    )
    request_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Deadline of each Redis call the API makes for a request (no retry on a"
        " timeout); a Redis that does not answer within it makes the request a 503 with"
        " Retry-After.",
    )
    body_read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest wait for the next piece of a request body; a client that stops"
        " sending is answered 408 and disconnected.",
    )

    # --- worker --------------------------------------------------------------------------
    worker_id: str = Field(
        "",
        pattern=rf"^[A-Za-z0-9_.:-]{{0,{MAX_WORKER_ID_LENGTH}}}$",
        description="This worker's name: its consumer name in the group, its heartbeat key,"
        " what `worker --check` looks up. Default: the host name (one worker per pod or"
        " host); set it per GPU when one host runs several workers. A worker refuses"
        " (exit 2) the name of a live one; a dead one's heartbeat delays it until it"
        " expires. `serve` appends `-serve<pid>` for its worker.",
    )
    heartbeat_interval_seconds: float = Field(
        2.0, gt=0, description="How often a worker renews its heartbeat key."
    )
    heartbeat_ttl_seconds: float = Field(
        10.0,
        gt=0,
        description="Lifetime of a heartbeat key: a worker silent this long counts as gone"
        " (for GET /v1/models and `worker --check`). Must exceed the interval.",
    )
    job_stall_seconds: float = Field(
        600.0,
        gt=0,
        description="A running job whose tiles make no progress this long is presumed hung:"
        " its worker stops keeping it (it is re-delivered after the visibility timeout)"
        " and reports not ready. Until then a live worker keeps its job however slow a"
        " tile batch is, so the visibility timeout only has to detect dead workers.",
    )
    drain_seconds: float = Field(
        25.0,
        ge=0,
        description="On SIGTERM, how long a worker may finish its job before handing it back"
        " for re-delivery; keep it below Kubernetes' terminationGracePeriodSeconds.",
    )
    prefetch_jobs: int = Field(
        1,
        ge=0,
        description="Jobs a worker claims ahead of the one on its engine: they are decoded"
        " (and the previous result encoded and stored) while the engine runs, so the engine"
        " does not wait on the CPU. A job is claimed only once fewer than 1 + this many"
        " are waiting for or on the engine; 0: one job at a time, start to end.",
    )
    batch_delay_ms: float = Field(
        0.0,
        ge=0,
        description="Cross-job tile batching: above 0, the jobs a worker has in hand (1 +"
        " HDR_PREFETCH_JOBS) run on its engine together, and their tile batches of the same"
        " model, tile shape and EV stops are packed into one engine call of up to the tile"
        " batch, a partial call waiting at most this many milliseconds to fill (like"
        " Triton's max_queue_delay). For many small jobs; 0: one job on the engine at a"
        " time, no packing.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1",
        description="Address of the worker's /metrics and health port; loopback unless set"
        " (the Dockerfile, compose file and Kubernetes manifests set 0.0.0.0).",
    )
    worker_metrics_port: int = Field(
        9108,
        ge=0,
        le=65535,
        description="Port of the worker's /metrics, /healthz, /readyz and /v2/health/*;"
        " 0 picks a free one (announced in the heartbeat and the log).",
    )
    embedded_redis_dir: Path | None = Field(
        None,
        description="Where `serve` keeps its embedded Redis (no HDR_REDIS_URL): the"
        " database persists there across restarts and crashes (append-only file synced"
        " every second, plus snapshots); one `serve` at a time may use it. Unset, a"
        " temporary directory is used and jobs are lost when `serve` stops.",
    )

    # --- webhooks (service/webhooks/, delivered by the API process) -------------------------
    webhook_secret: SecretStr | None = Field(
        None,
        description="Signing key of webhooks, `whsec_` followed by base64 (24 to 64 random"
        " bytes); unset, a job's webhook_url is refused (422).",
    )
    webhook_retry_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_SECONDS),
        description="Delays between webhook attempts, comma-separated seconds (jittered by"
        " +-25%); after the last one the delivery is given up. Default: 5,30,120,600,1800.",
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host patterns (fnmatch, e.g. `*.example.com`,"
        " `10.0.0.7`); when set, webhooks go only to matching hosts, which may then be"
        " private or loopback. Unset: any host with public addresses only.",
    )
    webhook_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="Bound on one webhook attempt: DNS, connect, send, read."
    )
    webhook_poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often the API's webhook dispatcher looks for due ones."
    )

    @field_validator(
        "api_keys", "webhook_retry_seconds", "webhook_allowed_hosts", "worker_models", mode="before"
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        # Comma-separated in the environment (NoDecode: not JSON).
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _refuse_weak_keys(cls, keys: list[str]) -> list[str]:
        # A short key can be brute-forced over HTTP; refuse to start rather than serve
        # with one. (The message never repeats a key.)
        weak = sum(1 for key in keys if len(key) < MIN_API_KEY_LENGTH)
        if weak:
            raise ValueError(
                f"{weak} API key(s) shorter than {MIN_API_KEY_LENGTH} characters;"
                " use random ones, e.g. from `python -c 'import secrets;"
                " print(secrets.token_urlsafe())'`"
            )
        return keys

    @field_validator("webhook_retry_seconds")
    @classmethod
    def _check_retry_schedule(cls, delays: list[float]) -> list[float]:
        if len(delays) > MAX_WEBHOOK_RETRIES:
            raise ValueError(f"at most {MAX_WEBHOOK_RETRIES} retries, got {len(delays)}")
        if any(not 0 <= delay <= MAX_WEBHOOK_RETRY_DELAY for delay in delays):
            raise ValueError(
                f"each delay must lie in 0..{MAX_WEBHOOK_RETRY_DELAY:g} seconds, got {delays}"
            )
        return delays

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        # Refuse a malformed key at start-up rather than at the first delivery. The
        # message never repeats the secret.
        if secret is not None:
            webhook_key(secret.get_secret_value())
        return secret

    @model_validator(mode="after")
    def _derive_service_defaults(self) -> Self:
        if not self.worker_id:
            self.worker_id = socket.gethostname() or "worker"
        if self.heartbeat_ttl_seconds <= self.heartbeat_interval_seconds:
            raise ValueError(
                f"heartbeat_ttl_seconds ({self.heartbeat_ttl_seconds}) must exceed"
                f" heartbeat_interval_seconds ({self.heartbeat_interval_seconds})"
            )
        return self

    @model_validator(mode="after")
    def _check_tiles(self) -> Self:
        if self.tile_size % 8:
            raise ValueError(f"tile_size must be a multiple of 8, got {self.tile_size}")
        # Against each other only when both are set: otherwise a model's config.yaml may
        # supply the other one (service.engines.registry.resolve_serving checks the pair).
        both = {"tile_size", "tile_overlap"} <= self.model_fields_set
        if both and 2 * self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be less than half the tile size"
                f" ({self.tile_size})"
            )
        return self


def require_storage_url(settings: Settings) -> str:
    """HDR_STORAGE_URL, or a clear refusal: ``api`` and ``worker`` must share one store.

    No local default for them: an API and workers on different hosts would each write
    to a folder of their own, and jobs would fail on inputs that are not there.
    """
    if not settings.storage_url:
        raise ValueError(
            "HDR_STORAGE_URL is not set: point the API and every worker at one blob store,"
            " file:///shared/dir (a volume all of them mount) or s3://bucket/prefix;"
            " `hdr-service serve` defaults to a local folder"
        )
    return settings.storage_url


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret ``whsec_<base64>``; ValueError if malformed.

    Here rather than in ``service.webhooks`` because the settings validate it at start-up
    and config.py imports nothing of ours.
    """
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {WEBHOOK_SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("webhook secret: the part after whsec_ is not base64") from None
    low, high = WEBHOOK_KEY_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"webhook secret: the key must be {low} to {high} bytes, got {len(key)}")
    return key
