"""One webhook POST to a checked target: address pinning and the fallback between the
addresses a name resolved to (real sockets on loopback)."""

from __future__ import annotations

import anyio
import httpx
import pytest

from service.metrics import WebhookResult
from service.webhooks import WebhookTarget
from service.webhooks.dispatcher import post
from tests.webhooks.receiver import receiver

pytestmark = pytest.mark.anyio


def target(url: str, host: str, *addresses: str) -> WebhookTarget:
    return WebhookTarget(url=httpx.URL(url), host=host, addresses=addresses, allowlisted=True)


async def test_an_unreachable_address_falls_back_to_the_next_checked_one() -> None:
    with receiver([503]) as hook:
        port = hook.url.rsplit(":", 1)[1]
        # 127.0.0.2 is loopback too, but nobody listens there: connection refused.
        named = target(f"http://hooks.test:{port}/x", "hooks.test", "127.0.0.2", "127.0.0.1")
        async with httpx.AsyncClient(trust_env=False) as client:
            outcome = await post(client, named, {"webhook-id": "msg_1"}, b"{}")

    assert (outcome.result, outcome.detail) == (WebhookResult.SERVER_ERROR, "HTTP 503")
    (received,) = hook.received
    assert received.headers["host"] == f"hooks.test:{port}"  # the name, not the address
    assert (received.path, received.body) == ("/x", b"{}")


async def test_when_no_checked_address_connects_the_error_is_raised() -> None:
    with receiver() as hook:
        port = hook.url.rsplit(":", 1)[1]
        nowhere = target(f"http://hooks.test:{port}/x", "hooks.test", "127.0.0.2", "127.0.0.3")
        async with httpx.AsyncClient(trust_env=False) as client:
            with pytest.raises(httpx.ConnectError):
                await post(client, nowhere, {}, b"{}")
    assert hook.count() == 0


async def test_an_endless_answer_is_not_read_to_its_end() -> None:
    with receiver([500]) as hook:
        hook.endless = True
        ip = target(f"{hook.url}/x", "127.0.0.1", "127.0.0.1")
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            with anyio.fail_after(10):  # reading it all would take minutes, or forever
                outcome = await post(client, ip, {}, b"{}")
    assert (outcome.result, outcome.detail) == (WebhookResult.SERVER_ERROR, "HTTP 500")
