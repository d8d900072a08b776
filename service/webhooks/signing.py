"""Standard Webhooks signatures (https://www.standardwebhooks.com/): sign and verify.

A message is signed as ``base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))`` where the
key is the base64 part of the secret ``whsec_<base64>``, and sent with three headers:
``webhook-id`` (the same for every retry of one event, so receivers can deduplicate),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``
(``v1,<signature>``; several space-separated while a key is being rotated). The timestamp
is part of what is signed so that a receiver can refuse replays of old messages.

:func:`verify` is what a receiver written in Python runs; the tests use it, and the
README shows it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final

from service.config import webhook_key

#: Signature scheme version of Standard Webhooks' symmetric signatures.
SCHEME: Final = "v1"
#: How far a message's timestamp may be from the receiver's clock (the spec's default).
DEFAULT_TOLERANCE_SECONDS: Final = 300


class SignatureError(ValueError):
    """A webhook that does not verify: missing header, stale timestamp, wrong signature."""


def message_id(job_id: str) -> str:
    """The ``webhook-id`` of a job's final-state event: one event per job, so derived from
    its id, which makes it the same for every retry without storing anything."""
    return f"msg_{job_id}"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
    return f"{SCHEME},{base64.b64encode(digest).decode()}"


def signature_headers(secret: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> str:
    """Check a received webhook; returns its ``webhook-id``, raises :class:`SignatureError`.

    ``headers`` is looked up case-insensitively (any mapping: a dict, an ``http.server``
    message, a Starlette ``Headers``); ``body`` must be the raw bytes as received, before
    any JSON parsing.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        raw_timestamp = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as missing:
        raise SignatureError(f"missing header {missing.args[0]}") from None
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureError(f"webhook-timestamp {timestamp} is outside the tolerance")
    _, expected = sign(secret, msg_id, timestamp, body).split(",", 1)
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == SCHEME and hmac.compare_digest(value, expected):
            return msg_id
    raise SignatureError("no webhook-signature matches")
