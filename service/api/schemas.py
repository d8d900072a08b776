"""Request and response bodies of the v1 API: ``JobCreate``, ``JobPublic``, ``ModelPublic``...

These are the contract (ARCHITECTURE section 4) as the OpenAPI document shows it: every
field has a description, and the error body is one schema for every status.

``JobPublic`` (with its ``Progress`` and ``WebhookPublic``) is defined in
:mod:`service.job_public`, below the API, because the webhook dispatcher sends the same
JSON; it is re-exported here as the part of this contract it is.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

from service.imaging import EXPOSURE_COUNT
from service.job_public import JobPublic as JobPublic
from service.job_public import Progress as Progress
from service.job_public import WebhookPublic as WebhookPublic

#: Largest tile edge a client may ask for; bigger tiles buy little and risk GPU memory.
MAX_TILE_SIZE: Final = 1024
#: Model names as the repository's folder names may be spelled.
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: How the OpenAPI document describes ``exposures``: exactly three files. ``format:
#: binary`` beside OpenAPI 3.1's ``contentMediaType`` is what client generators read as a
#: file parameter; the count is checked by the server (a 422 naming the count), not by the
#: form parser, so it is declared here rather than as a validation constraint.
EXPOSURES_SCHEMA: Final[JsonDict] = {
    "items": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"},
    "minItems": EXPOSURE_COUNT,
    "maxItems": EXPOSURE_COUNT,
}


class JobCreate(BaseModel):
    """The multipart form of ``POST /v1/jobs`` and ``POST /v1/reconstruct``."""

    model_config = ConfigDict(extra="forbid")

    exposures: list[UploadFile] = Field(
        json_schema_extra=EXPOSURES_SCHEMA,
        description=f"Exactly {EXPOSURE_COUNT} exposures of one scene, the field repeated once"
        " per file: PNG, JPEG or TIFF (RGB, 8 or 16 bits per sample) or HEIC (RGB, 8, 10 or"
        " 12 bits), all of one size. The"
        " format is read from the bytes, never from the name. Any order: they are sorted"
        " short to long by exposure.",
    )
    exposure_values: str | None = Field(
        None,
        max_length=200,
        examples=["-2,0,2"],
        description="EV stops of the exposures in upload order, plain decimal numbers"
        " separated by commas or spaces. They are shifted so that the shortest exposure is"
        " 0, the convention of the model's training data (exposure time = 2**EV): -2,0,2 and"
        " 0,2,4 are the same request. Distinct, spanning at most 64 stops.",
    )
    exposure_times: str | None = Field(
        None,
        max_length=200,
        examples=["0.01,0.04,0.16"],
        description="Exposure times in seconds in upload order (plain decimal numbers,"
        " e.g. 0.004), instead of exposure_values; converted to EV stops relative to the"
        " shortest (EV = log2(t / t_shortest)). Without"
        " either field the EXIF ExposureTime of each file decides (FNumber and ISO too when"
        " every file has them and they differ).",
    )
    tile_size: int | None = Field(
        None,
        ge=0,
        le=MAX_TILE_SIZE,
        description="Tile edge in pixels, a multiple of 8 larger than twice the model's"
        " tile overlap; 0 runs the frame untiled (frames of at most 1024x1024 pixels only)."
        " Default: the model's.",
    )
    model: str | None = Field(
        None,
        pattern=MODEL_NAME_PATTERN,
        description="A model of GET /v1/models; default: the service's default model.",
    )
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        examples=["https://example.com/hooks/hdr"],
        description="http(s) URL that receives the job's JSON (as GET /v1/jobs/{id} shows"
        " it) when it succeeds, fails or is cancelled, signed per Standard Webhooks"
        " (webhook-id, webhook-timestamp, webhook-signature headers); retried on 5xx,"
        " timeouts and connection errors. Must resolve to public addresses unless the"
        " server allows the host; a refused URL is 422.",
    )


class ErrorDetail(BaseModel):
    """What went wrong, for a program (``code``) and for a person (``message``)."""

    code: str = Field(description="Stable machine-readable error code, e.g. `queue_full`.")
    message: str = Field(description="What is wrong, naming the field or file at fault.")


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorDetail


#: What each error status means, for the OpenAPI document.
ERROR_MEANINGS: Final = {
    400: "Malformed request: a form field of the wrong type or range, an unknown field.",
    401: "No API key, while HDR_API_KEYS is set.",
    403: "An API key that is not accepted.",
    404: "Unknown or expired job, or another key's.",
    409: "The job has no result (yet), or cannot be cancelled any more.",
    413: "Too large: the request body, a file's bytes, or a frame's pixel count.",
    415: "A file is not a PNG, JPEG, TIFF or HEIC RGB image (judged by its content).",
    422: "Invalid exposure set (count, sizes, exposure metadata), an unknown model, or a"
    " refused webhook_url.",
    429: "The queue is full; retry after the Retry-After header's seconds.",
    503: "The job queue (Redis) is unreachable, or not ready; retry after Retry-After.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer.

    A ``4XX`` entry says that any other client error has the same body; it also keeps
    FastAPI from documenting its own 422 validation body, which this API never sends
    (validation errors are 400 with :class:`ErrorBody`).
    """
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": ERROR_MEANINGS[status]} for status in statuses
    }
    responses["4XX"] = {"model": ErrorBody, "description": "Any other client error."}
    return responses


class ModelPublic(BaseModel):
    """One model of the repository and whether the workers serve it."""

    name: str = Field(description="What a job's `model` field names.")
    status: Literal["serving", "loading", "absent"] = Field(
        description="serving: a live worker runs it; loading: workers are still loading or"
        " warming up; absent: no live worker can run it (`reason` says why)."
    )
    ready: bool = Field(description="Whether some live worker has it loaded and warmed up.")
    default: bool = Field(description="Whether jobs that name no model run on it.")
    version: int | None = Field(None, description="Version folder serving; null when weight-free.")
    architecture: str | None = Field(None, description="Network, e.g. afunet or classical.")
    backend: str | None = Field(None, description="Inference backend, e.g. torch.")
    precision: str | None = Field(None, description="Arithmetic, e.g. fp32.")
    precision_note: str | None = Field(
        None, description="Why this precision, where a parity check or a fallback decided it."
    )
    device: str | None = Field(None, description="Where it runs, e.g. cpu or cuda:0.")
    tile_size: int | None = Field(None, description="Default tile edge in pixels.")
    tile_overlap: int | None = Field(None, description="Overlap between tiles in pixels.")
    tile_batch: int | None = Field(None, description="Tiles per engine call.")
    tile_source: str | None = Field(
        None,
        description="Where the tile geometry comes from: environment, config, default, or"
        " autotuned at start-up (as `sources` gives it for the tile size and batch).",
    )
    sources: dict[str, str] | None = Field(
        None,
        description="Where each serving setting came from (engine, precision, tile_size,"
        " tile_overlap, tile_batch): environment (its HDR_* variable is set), config (the"
        " model's config.yaml), default, or autotuned (measured at start-up).",
    )
    workers: int = Field(0, description="Live workers serving it.")
    reason: str | None = Field(None, description="Why it is absent, as the workers report it.")


class ModelList(BaseModel):
    """What ``GET /v1/models`` answers."""

    default_model: str | None = Field(
        description="The model a job without `model` runs on; null while no worker is live."
    )
    workers: int = Field(description="Live workers (heartbeat not expired).")
    models: list[ModelPublic]


class HealthPublic(BaseModel):
    """A health or readiness answer."""

    status: Literal["ok", "ready", "not_ready"] = Field(description="The verdict.")
    checks: dict[str, Any] = Field(
        default_factory=dict, description="What was checked and what it found."
    )
