"""Webhooks end to end: the API's dispatcher POSTs signed job JSON to a real receiver on
loopback, retries, survives a restart, gives up, and never delivers twice.

Jobs reach their final state by a real worker (the reference test engine) or, cheaper,
by being cancelled while queued: both are final transitions that queue the notification.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from service.config import Settings
from service.queue import Keys
from service.webhooks import verify
from tests.factories import bracket_uploads, exposure_files
from tests.webhooks.receiver import Receiver, receiver
from tests.worker.engines import serving_only
from tests.worker.harness import api_server, wait_for, worker_thread

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def hook_settings(service_settings: Settings) -> Settings:
    """The service with webhooks on: loopback allowlisted, a fast retry schedule."""
    return service_settings.model_copy(
        update={
            "webhook_secret": SecretStr(SECRET),
            "webhook_allowed_hosts": ["127.0.0.1"],
            "webhook_retry_seconds": [0.1, 0.1, 0.1],
            "webhook_poll_seconds": 0.05,
            "webhook_timeout_seconds": 2.0,
        }
    )


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as state:
        yield state


def with_(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


def submit(client: httpx.Client, webhook_url: str, seed: int = 0) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        files=exposure_files(bracket_uploads(seed=seed)),
        data={"exposure_values": "-2,0,2", "webhook_url": webhook_url},
    )


def cancelled_job(client: httpx.Client, webhook_url: str, seed: int = 0) -> str:
    """A job with a webhook, cancelled while queued: final at once, no worker needed."""
    accepted = submit(client, webhook_url, seed)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["webhook"] == {"status": None, "attempts": 0, "error": None}
    job_id: str = accepted.json()["id"]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
    return job_id


def webhook_state(client: httpx.Client, job_id: str) -> dict[str, Any]:
    state: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()["webhook"]
    return state


def settled(client: httpx.Client, job_id: str, timeout: float = 15) -> dict[str, Any]:
    return wait_for(
        lambda: (s := webhook_state(client, job_id))["status"] in ("delivered", "failed") and s,
        timeout,
        f"the webhook of job {job_id} to settle",
    )


def test_each_finished_job_gets_exactly_one_verified_delivery(
    hook_settings: Settings, hook: Receiver
) -> None:
    models = serving_only()
    with api_server(hook_settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        cancelled_id = cancelled_job(client, f"{hook.url}/hooks/cancelled", seed=1)
        with worker_thread(hook_settings, models):
            done = submit(client, f"{hook.url}/hooks/done")
            assert done.status_code == 202, done.text
            done_id = done.json()["id"]
            wait_for(lambda: hook.count() >= 2, 60, "two deliveries")
        for job_id in (done_id, cancelled_id):
            assert settled(client, job_id) == {"status": "delivered", "attempts": 1, "error": None}
        jobs = {
            job_id: client.get(f"/v1/jobs/{job_id}").json() for job_id in (done_id, cancelled_id)
        }
        wait_for(lambda: not webhook_pending(client), 5, "no webhook left due")

    deliveries = hook.deliveries(hook_settings)
    assert len(deliveries) == hook.count() == 2  # exactly one each, nothing more
    by_job = {body["id"]: (msg_id, body) for msg_id, body in deliveries}
    assert set(by_job) == {done_id, cancelled_id}
    for job_id, job in jobs.items():
        msg_id, body = by_job[job_id]
        assert msg_id == f"msg_{job_id}"
        assert body == {k: v for k, v in job.items() if k != "webhook"}
    assert by_job[done_id][1]["status"] == "succeeded"
    assert by_job[cancelled_id][1]["status"] == "cancelled"
    paths = {r.path for r in hook.received}
    assert paths == {"/hooks/done", "/hooks/cancelled"}
    first = hook.received[0]
    assert first.headers["content-type"] == "application/json"
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", first.headers["webhook-signature"])


def webhook_pending(client: httpx.Client) -> bool:
    """Whether the API's metrics still count a due or retrying notification."""
    text = client.get("/metrics").text
    match = re.search(r"^hdr_webhooks_pending (\S+)$", text, re.MULTILINE)
    return match is None or float(match.group(1)) > 0


def test_after_two_500s_the_third_attempt_arrives_with_the_same_webhook_id(
    hook_settings: Settings,
) -> None:
    with (
        receiver([500, 500]) as hook,
        api_server(hook_settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        job_id = cancelled_job(client, f"{hook.url}/hook")
        state = settled(client, job_id)

    assert [r.status for r in hook.received] == [500, 500, 200]
    ids = {r.headers["webhook-id"] for r in hook.received}
    assert ids == {f"msg_{job_id}"}
    assert [r.body for r in hook.received] == [hook.received[0].body] * 3
    (delivered,) = hook.deliveries(hook_settings)
    assert delivered[1]["id"] == job_id
    assert state == {
        "status": "delivered",
        "attempts": 3,
        "error": "attempt 2: HTTP 500; retrying",
    }
    gaps = [b.at - a.at for a, b in zip(hook.received, hook.received[1:], strict=False)]
    assert all(gap >= 0.1 * 0.75 for gap in gaps), gaps  # the schedule, jittered


def test_a_restart_in_the_middle_of_the_retries_loses_no_delivery(
    hook_settings: Settings,
) -> None:
    slow_first_retry = with_(hook_settings, webhook_retry_seconds=[2.0, 0.1])
    with receiver([500, 500]) as hook:
        with (
            api_server(slow_first_retry) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            job_id = cancelled_job(client, f"{hook.url}/hook")
            wait_for(lambda: hook.count() == 1, 10, "the first attempt")
            pending = webhook_state(client, job_id)
        # The API is down, and with it the only dispatcher: the retry waits in Redis.
        assert pending == {
            "status": "pending",
            "attempts": 1,
            "error": "attempt 1: HTTP 500; retrying",
        }
        assert hook.count() == 1
        with (
            api_server(slow_first_retry) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            state = settled(client, job_id)

    assert state["status"] == "delivered" and state["attempts"] == 3
    assert [r.status for r in hook.received] == [500, 500, 200]
    assert {r.headers["webhook-id"] for r in hook.received} == {f"msg_{job_id}"}
    assert len(hook.deliveries(hook_settings)) == 1


def test_a_host_name_is_sent_to_its_checked_address_with_the_name_in_host_header(
    hook_settings: Settings, hook: Receiver
) -> None:
    port = hook.url.rsplit(":", 1)[1]
    settings = with_(hook_settings, webhook_allowed_hosts=["localhost"])
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        job_id = cancelled_job(client, f"http://localhost:{port}/named")
        assert settled(client, job_id) == {"status": "delivered", "attempts": 1, "error": None}

    (received,) = hook.received
    assert received.headers["host"] == f"localhost:{port}"
    assert received.path == "/named"


def test_reconstruct_takes_a_webhook_url_too(hook_settings: Settings, hook: Receiver) -> None:
    with (
        api_server(with_(hook_settings, sync_wait_seconds=0.0)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        response = client.post(
            "/v1/reconstruct",
            files=exposure_files(bracket_uploads()),
            data={"exposure_values": "-2,0,2", "webhook_url": f"{hook.url}/sync"},
        )
        assert response.status_code == 202, response.text  # no worker: it waits
        job_id = response.json()["id"]
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        assert settled(client, job_id)["status"] == "delivered"

    ((msg_id, body),) = hook.deliveries(hook_settings)
    assert (msg_id, body["id"], body["status"]) == (f"msg_{job_id}", job_id, "cancelled")


def test_a_receiver_that_keeps_failing_is_given_up_counted_and_recorded(
    hook_settings: Settings,
) -> None:
    with (
        receiver([500] * 10) as hook,
        api_server(with_(hook_settings, webhook_retry_seconds=[0.05, 0.05])) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        job_id = cancelled_job(client, f"{hook.url}/hook")
        state = settled(client, job_id)
        metrics = client.get("/metrics").text

    assert hook.count() == 3  # the first attempt and two retries
    assert state == {
        "status": "failed",
        "attempts": 3,
        "error": "gave up after 3 attempt(s): HTTP 500",
    }
    assert 'hdr_webhook_deliveries_total{outcome="failed"} 1.0' in metrics
    assert 'hdr_webhook_attempts_total{result="server_error"} 3.0' in metrics
    assert "hdr_webhook_attempt_duration_seconds_count 3.0" in metrics


def test_client_errors_and_redirects_are_given_up_at_once(hook_settings: Settings) -> None:
    with (
        receiver([404]) as hook,
        api_server(hook_settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        refused = cancelled_job(client, f"{hook.url}/gone")
        assert settled(client, refused)["error"] == "gave up after 1 attempt(s): HTTP 404"
        hook.redirect_to = f"{hook.url}/moved"
        moved = cancelled_job(client, f"{hook.url}/hook", seed=1)
        assert settled(client, moved) == {
            "status": "failed",
            "attempts": 1,
            "error": "gave up after 1 attempt(s): HTTP 307",
        }

    assert hook.count("/moved") == 0  # never followed
    assert hook.count() == 2


def test_a_timeout_is_retried(hook_settings: Settings) -> None:
    with receiver() as hook:
        hook.stall_seconds = [1.5]
        with (
            api_server(with_(hook_settings, webhook_timeout_seconds=0.5)) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            job_id = cancelled_job(client, f"{hook.url}/hook")
            state = settled(client, job_id)
            metrics = client.get("/metrics").text

    assert state == {
        "status": "delivered",
        "attempts": 2,
        "error": "attempt 1: no answer within 0.5 s; retrying",
    }
    assert 'hdr_webhook_attempts_total{result="timeout"} 1.0' in metrics
    assert 'hdr_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics


def test_a_connection_error_is_retried(hook_settings: Settings) -> None:
    with receiver() as closed:
        dead_url = f"{closed.url}/hook"  # nobody listens there after this block
    with (
        api_server(with_(hook_settings, webhook_retry_seconds=[0.05])) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        job_id = cancelled_job(client, dead_url)
        state = settled(client, job_id)

    assert state["status"] == "failed" and state["attempts"] == 2
    assert state["error"].startswith("gave up after 2 attempt(s): connection error")


def rewrite_webhook_url(settings: Settings, job_id: str, url: str) -> None:
    """What the record would say had the URL's DNS changed since the submission."""
    client = redis.Redis.from_url(str(settings.redis_url))
    try:
        client.hset(Keys(settings.key_prefix).job(job_id), "webhook_url", url)
    finally:
        client.close()


def test_the_guard_runs_again_at_delivery_and_refuses_for_good(
    hook_settings: Settings, hook: Receiver
) -> None:
    with api_server(hook_settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        accepted = submit(client, f"{hook.url}/hook")
        job_id = accepted.json()["id"]
        rewrite_webhook_url(hook_settings, job_id, "http://10.0.0.8/hook")
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        state = settled(client, job_id)
        metrics = client.get("/metrics").text

    assert state["status"] == "failed" and state["attempts"] == 1
    assert state["error"].endswith("host '10.0.0.8' is not one this server sends webhooks to")
    assert 'hdr_webhook_attempts_total{result="refused"} 1.0' in metrics
    assert hook.count() == 0


def test_a_name_that_stops_resolving_is_retried_like_a_connection_error(
    hook_settings: Settings, hook: Receiver
) -> None:
    settings = with_(
        hook_settings,
        webhook_allowed_hosts=["127.0.0.1", "*.invalid"],
        webhook_retry_seconds=[0.05],
    )
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        job_id = submit(client, f"{hook.url}/hook").json()["id"]
        rewrite_webhook_url(settings, job_id, "http://gone.invalid/hook")
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        state = settled(client, job_id)
        metrics = client.get("/metrics").text

    assert state == {
        "status": "failed",
        "attempts": 2,
        "error": "gave up after 2 attempt(s): webhook_url: host 'gone.invalid' does not resolve",
    }
    assert 'hdr_webhook_attempts_total{result="connection_error"} 2.0' in metrics


def test_two_api_replicas_deliver_each_notification_once(hook_settings: Settings) -> None:
    with receiver() as hook:
        hook.stall_seconds = [0.1] * 6  # slow answers: the replicas' polls overlap them
        with (
            api_server(hook_settings) as first,
            api_server(hook_settings) as second,
            httpx.Client(base_url=first, timeout=30) as client,
        ):
            jobs = [cancelled_job(client, f"{hook.url}/hook", seed=i) for i in range(6)]
            for job_id in jobs:
                assert settled(client, job_id)["attempts"] == 1
            assert httpx.get(f"{second}/v1/jobs/{jobs[0]}").json()["webhook"]["attempts"] == 1

    ids = sorted(r.headers["webhook-id"] for r in hook.received)
    assert ids == sorted(f"msg_{job_id}" for job_id in jobs)


@pytest.mark.parametrize(
    ("webhook_url", "allowed", "problem"),
    [
        ("http://127.0.0.1:9/hook", [], "resolves to 127.0.0.1, a loopback address"),
        ("http://localhost:9/hook", [], "a loopback address"),
        ("http://10.0.0.8/hook", [], "resolves to 10.0.0.8, a private address"),
        ("http://169.254.169.254/latest", [], "a link-local address"),
        ("http://[::1]/hook", [], "a loopback address"),
        ("http://10.0.0.8/hook", ["127.0.0.1"], "not one this server sends webhooks to"),
        ("ftp://127.0.0.1/hook", ["127.0.0.1"], "scheme must be http or https, not ftp"),
        ("not a url", ["127.0.0.1"], "scheme must be http or https"),
    ],
)
def test_refused_webhook_urls_are_422_at_submission(
    hook_settings: Settings, webhook_url: str, allowed: list[str], problem: str
) -> None:
    settings = with_(hook_settings, webhook_allowed_hosts=allowed)
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = submit(client, webhook_url)
        depth = client.get("/metrics").text

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_webhook_url"
    assert problem in error["message"] and error["message"].startswith("webhook_url: ")
    assert "hdr_queue_depth 0.0" in depth
    assert 'hdr_jobs_rejected_total{code="invalid_webhook_url"} 1.0' in depth


def test_a_webhook_url_is_422_when_the_server_has_no_signing_key(
    service_settings: Settings,
) -> None:
    with api_server(service_settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = submit(client, "https://93.184.215.14/hook")
        plain = client.post(
            "/v1/jobs",
            files=exposure_files(bracket_uploads()),
            data={"exposure_values": "-2,0,2"},
        )

    assert response.status_code == 422
    assert "no signing key" in response.json()["error"]["message"]
    assert plain.status_code == 202 and plain.json()["webhook"] is None


def test_the_readme_verification_snippet_verifies_a_real_delivery(
    hook_settings: Settings, hook: Receiver
) -> None:
    with api_server(hook_settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        cancelled_job(client, f"{hook.url}/hook")
        wait_for(lambda: hook.count() == 1, 10, "the delivery")
    received = hook.received[0]
    assert verify(SECRET, received.headers, received.body) == received.headers["webhook-id"]
