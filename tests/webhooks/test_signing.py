"""Standard Webhooks signatures: the spec's own example, and what verify() refuses."""

from __future__ import annotations

import base64
import secrets

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.webhooks import SignatureError, message_id, sign, signature_headers, verify

#: The example of the Standard Webhooks specification and its reference libraries.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def test_signature_matches_the_specification_example() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_verify_accepts_the_specification_example_and_returns_its_id() -> None:
    headers = {
        "Webhook-Id": SPEC_ID,
        "Webhook-Timestamp": str(SPEC_TIMESTAMP),
        "Webhook-Signature": SPEC_SIGNATURE,
    }
    assert verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 10) == SPEC_ID


def test_verify_refuses_a_changed_body_id_or_timestamp() -> None:
    secret = new_secret()
    good = signature_headers(secret, "msg_1", b'{"a":1}', 1_700_000_000)
    now = 1_700_000_000.0
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify(secret, good, b'{"a":2}', now=now)
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify(secret, {**good, "webhook-id": "msg_2"}, b'{"a":1}', now=now)
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify(secret, {**good, "webhook-timestamp": "1700000001"}, b'{"a":1}', now=now)
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify(new_secret(), good, b'{"a":1}', now=now)


def test_verify_refuses_stale_timestamps_and_missing_headers() -> None:
    secret = new_secret()
    headers = signature_headers(secret, "msg_1", b"{}", 1_700_000_000)
    with pytest.raises(SignatureError, match="outside the tolerance"):
        verify(secret, headers, b"{}", now=1_700_000_000 + 301)
    with pytest.raises(SignatureError, match="missing header webhook-signature"):
        verify(secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, b"{}")


def test_verify_accepts_any_of_several_signatures_during_a_key_rotation() -> None:
    old, new = new_secret(), new_secret()
    headers = signature_headers(new, "msg_1", b"{}", 1_700_000_000)
    headers["webhook-signature"] = (
        f"{sign(old, 'msg_1', 1_700_000_000, b'{}')} {headers['webhook-signature']}"
    )
    assert verify(old, headers, b"{}", now=1_700_000_000) == "msg_1"
    assert verify(new, headers, b"{}", now=1_700_000_000) == "msg_1"


def test_message_id_is_one_per_job() -> None:
    assert message_id("a" * 32) == message_id("a" * 32) != message_id("b" * 32)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
    ],
)
def test_a_malformed_secret_stops_the_settings(secret: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        Settings(webhook_secret=secret)
    assert secret not in str(caught.value)


def test_retry_schedule_and_allowed_hosts_are_comma_separated() -> None:
    settings = Settings(webhook_retry_seconds="5, 30,120", webhook_allowed_hosts="a.b,*.c")
    assert settings.webhook_retry_seconds == [5.0, 30.0, 120.0]
    assert settings.webhook_allowed_hosts == ["a.b", "*.c"]
    assert Settings().webhook_retry_seconds == [5.0, 30.0, 120.0, 600.0, 1800.0]
    with pytest.raises(ValidationError, match="each delay"):
        Settings(webhook_retry_seconds="5,-1")
