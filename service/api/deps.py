"""What route handlers receive instead of reaching for globals: ``Annotated`` aliases.

Everything comes from ``app.state``, which the app factory and its lifespan fill: the
settings, the broker (opened in the lifespan), the metrics, the hashes of the API keys.

Authentication: with ``HDR_API_KEYS`` set, every ``/v1`` route needs one of the keys, as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; none is 401, an unknown one 403.
The key's SHA-256 is compared in constant time with each configured key's, and that
hash, never the key, becomes the owner stored with a job: a job is visible only with the
key that created it (to anyone else it does not exist: 404, not 403, so that ids of other
tenants cannot even be confirmed). Without keys there is no owner and the unguessable
job id is the capability.

The key is checked (and hashed) once per request, by the
:class:`~service.api.middleware.ApiKeyGate` on the raw headers, before any body is read;
it leaves the owner in the request's state, where :func:`get_owner` reads it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Annotated, Final

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import Forbidden, NotAuthenticated
from service.config import Settings
from service.errors import JobNotFound
from service.metrics import ApiMetrics
from service.queue import Broker, JobRecord

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="`Authorization: Bearer <key>` with one of HDR_API_KEYS (when set).",
)
_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description="`X-API-Key: <key>`, the same keys as the bearer scheme.",
)


def key_hash(key: str) -> str:
    """The owner id of an API key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_hashes(keys: Sequence[str]) -> tuple[str, ...]:
    """What the app keeps of the configured keys."""
    return tuple(key_hash(key) for key in keys)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


#: Name, in the request's state (``scope["state"]``), of the owner the key gate resolved.
OWNER_STATE: Final = "owner"


def authenticate(presented: str | None, known: Sequence[str]) -> str | None:
    """The owner id of a presented key; None when auth is off (no ``known`` hashes).

    Raises 401 without a key, 403 for a key that is not one of ``known``. Called once per
    ``/v1`` request, by the :class:`~service.api.middleware.ApiKeyGate` on the raw headers
    before a body is read; handlers get its answer through :func:`get_owner`.
    """
    if not known:
        return None
    if not presented:
        raise NotAuthenticated(
            "this API needs a key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
        )
    digest = key_hash(presented)
    accepted = False
    for candidate in known:  # no early exit: the time taken says nothing about which key
        accepted |= hmac.compare_digest(digest, candidate)
    if not accepted:
        raise Forbidden("the API key is not accepted")
    return digest


def get_owner(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> str | None:
    """The caller's owner id (hash of its key), as the key gate resolved it; None when
    auth is off.

    The gate already answered 401/403 for a missing or unknown key, so this neither reads
    nor hashes the key again. ``bearer`` and ``header_key`` are declared only so that the
    OpenAPI document lists the two key schemes on every route that needs a key. A
    request the gate did not see (an app assembled without it) fails with 500 rather
    than passing as a caller without owner: the check fails closed.
    """
    del bearer, header_key  # read by the gate from the raw headers
    state = request.scope.get("state", {})
    if OWNER_STATE not in state:
        raise RuntimeError("no owner in the request state: ApiKeyGate must run before routes")
    owner: str | None = state[OWNER_STATE]
    return owner


OwnerDep = Annotated[str | None, Depends(get_owner)]


async def get_visible_job(
    job_id: Annotated[str, Path(description="The job's id, as POST answered it.")],
    broker: BrokerDep,
    owner: OwnerDep,
) -> JobRecord:
    """The job of that id if the caller may see it; 404 for unknown, expired or foreign."""
    record = await broker.get(job_id)
    if record is None or (record.owner or None) != owner:
        raise JobNotFound(f"job {job_id[:64]} not found (unknown, expired or not yours)")
    return record


VisibleJobDep = Annotated[JobRecord, Depends(get_visible_job)]
