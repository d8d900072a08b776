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
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Annotated

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


def authenticate(presented: str | None, known: Sequence[str]) -> str | None:
    """The owner id of a presented key; None when auth is off (no ``known`` hashes).

    Raises 401 without a key, 403 for a key that is not one of ``known``. Used twice: by
    the :class:`~service.api.middleware.ApiKeyGate` on the raw headers before a body is
    read, and by :func:`get_owner` for the handlers.
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
    """The caller's owner id (hash of its key); None when auth is off. 401/403 otherwise."""
    presented = header_key or (bearer.credentials if bearer is not None else None)
    return authenticate(presented, request.app.state.key_hashes)


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
