"""Job states, the job record and its Redis hash encoding, job ids; the typed hand-over
between the API and the worker (:class:`JobParams`) and the stage timings.

A record is stored as a flat Redis hash so that the broker's Lua scripts can read and
change single fields (``status``, ``attempts``, ``tiles_done``) atomically without
decoding the whole record. ``None`` is stored as an absent field; dicts as JSON.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Final


class WebhookStatus(str, Enum):
    """Where the notification of a job's final state stands (jobs with a webhook_url)."""

    PENDING = "pending"
    """Queued by the final transition; being tried, or waiting for its next retry."""
    DELIVERED = "delivered"
    """The receiver answered 2xx."""
    FAILED = "failed"
    """Given up: the retries ran out, the receiver refused it (not 5xx), or the URL was."""


class JobState(str, Enum):
    """Lifecycle of a job; ``succeeded``, ``failed`` and ``cancelled`` never change."""

    QUEUED = "queued"
    """Accepted and waiting for a worker (also while waiting to be retried)."""
    RUNNING = "running"
    """A worker has started it; progress fields move."""
    SUCCEEDED = "succeeded"
    """The result is stored and can be downloaded until the job expires."""
    FAILED = "failed"
    """Gave up: an unrecoverable error, or too many attempts; ``error`` says why."""
    CANCELLED = "cancelled"
    """Cancelled by its owner before it finished."""

    @property
    def is_final(self) -> bool:
        """Whether the state can no longer change."""
        return self in FINAL_STATES


FINAL_STATES: Final = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

_JOB_ID = re.compile(r"[0-9a-f]{32}")


def new_job_id() -> str:
    """A fresh job id: 128 random bits as 32 lowercase hex characters.

    Random rather than sequential so that an id cannot be guessed from another one: the
    id is the capability to read a job's result when authentication is off.
    """
    return secrets.token_hex(16)


def is_valid_job_id(job_id: str) -> bool:
    """Whether ``job_id`` has the shape :func:`new_job_id` produces.

    The broker refuses other strings before building key names from them, so a crafted
    id such as ``"<id>:result"`` can never address another key.
    """
    return _JOB_ID.fullmatch(job_id) is not None


#: Hash fields the broker keeps next to the record's own (not part of JobRecord).
FIELD_LAST_ERROR: Final = "last_error"

_INT_FIELDS: Final = frozenset(
    {"width", "height", "tiles_done", "tiles_total", "attempts", "webhook_attempts"}
)
_FLOAT_FIELDS: Final = frozenset({"created_at", "started_at", "finished_at", "estimated_seconds"})


@dataclass(frozen=True)
class JobParams:
    """What the API decided about a job and the worker needs to run it; fixed at submit.

    The one hand-over between the two processes: the API builds it from the validated
    form, the broker stores it as JSON in the record, the worker reads it back. Nobody
    spells its keys.
    """

    exposure_values: tuple[float, ...]
    """EV stops, short to long (the order of ``inputs``)."""
    names: tuple[str, ...]
    """Display names of the uploads (printable, shortened), for messages."""
    formats: tuple[str, ...] = ()
    """Image format of each upload as the API probed it (png, jpeg, tiff)."""
    exposure_source: str = "exposure_values"
    """Where the EVs came from: ``exposure_values``, ``exposure_times`` or ``exif``."""
    tile_size: int | None = None
    """The client's tile size (0: untiled); None: the model's."""
    inputs: tuple[str, ...] = ()
    """Blob names of the uploads in the store, short to long (set by the broker)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> JobParams:
        """Decode :meth:`to_json`; tolerant of the older records' missing keys (a record
        queued before blob references existed still decodes, to fail by its missing
        inputs rather than to crash the worker reading it)."""
        data = json.loads(raw)
        return cls(
            exposure_values=tuple(float(v) for v in data["exposure_values"]),
            names=tuple(str(n) for n in data.get("names") or ()),
            formats=tuple(str(f) for f in data.get("formats", ())),
            exposure_source=str(data.get("exposure_source", "exposure_values")),
            tile_size=None if data.get("tile_size") is None else int(data["tile_size"]),
            inputs=tuple(str(n) for n in data.get("inputs", ())),
        )


@dataclass(frozen=True)
class StageTimings:
    """Seconds a job spent per stage of its successful run (None: not reached).

    The names are the ``stage`` labels of ``hdr_job_stage_seconds`` (metrics.Stage).
    """

    queue_wait: float | None = None
    """Accepted until a worker started it (the last start, for a re-delivered job)."""
    decode: float | None = None
    """Reading the uploads from the blob store and decoding them to pixels."""
    inference: float | None = None
    """Preprocessing, tiled engine calls and blending."""
    encode: float | None = None
    """Writing the float32 OpenEXR result."""
    store: float | None = None
    """Writing the result to the blob store."""

    def as_dict(self) -> dict[str, float]:
        """The stages reached, name -> seconds."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageTimings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in data.items() if k in known})


@dataclass
class JobRecord:
    """Everything the service knows about one job; times are unix seconds."""

    id: str
    status: JobState
    created_at: float
    owner: str | None = None
    model: str | None = None
    engine: str | None = None
    worker: str | None = None
    width: int | None = None
    height: int | None = None
    tiles_done: int = 0
    tiles_total: int = 0
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    timings: StageTimings = field(default_factory=StageTimings)
    params: JobParams | None = None
    webhook_url: str | None = None
    """Where the job's final state is POSTed (checked by the SSRF guard at submission)."""
    webhook_status: WebhookStatus | None = None
    """Set by the final transition when there is a webhook_url, then by the dispatcher."""
    webhook_attempts: int = 0
    webhook_error: str | None = None
    """The last failed attempt's outcome (kept after a later success, for the record)."""
    request_digest: str | None = None
    """SHA-256 of what the client asked for (see ``uploads.Submission.request_digest``):
    a later submit under the same Idempotency-Key must match it."""
    estimated_seconds: float | None = None
    """Expected run time when it was queued (see ``Broker.submit``); None: nothing to
    estimate from yet."""

    def to_redis(self) -> dict[str, str]:
        """The hash mapping to HSET; ``None`` fields are left out."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, JobParams):
                out[f.name] = value.to_json()
            elif isinstance(value, StageTimings):
                out[f.name] = json.dumps(value.as_dict(), separators=(",", ":"), sort_keys=True)
            elif isinstance(value, (JobState, WebhookStatus)):
                out[f.name] = value.value
            elif f.name in _FLOAT_FIELDS:
                out[f.name] = repr(float(value))
            else:
                out[f.name] = str(value)
        return out

    @classmethod
    def from_redis(cls, mapping: Mapping[Any, Any]) -> JobRecord:
        """Decode an HGETALL reply (bytes or str keys and values).

        Unknown fields (the broker's own, such as ``last_error``) are ignored.
        """
        text = {_text(k): _text(v) for k, v in mapping.items()}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = text.get(f.name)
            if raw is None:
                continue
            if f.name == "status":
                kwargs[f.name] = JobState(raw)
            elif f.name == "webhook_status":
                kwargs[f.name] = WebhookStatus(raw)
            elif f.name in _INT_FIELDS:
                kwargs[f.name] = int(raw)
            elif f.name in _FLOAT_FIELDS:
                kwargs[f.name] = float(raw)
            elif f.name == "params":
                kwargs[f.name] = JobParams.from_json(raw)
            elif f.name == "timings":
                kwargs[f.name] = StageTimings.from_dict(json.loads(raw))
            else:
                kwargs[f.name] = raw
        return cls(**kwargs)

    @classmethod
    def from_flat(cls, reply: Sequence[Any]) -> JobRecord:
        """Decode the flat field/value list a Lua script's HGETALL returns."""
        return cls.from_redis(dict(zip(reply[::2], reply[1::2], strict=True)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
