"""API keys: every /v1 route needs one, and a job exists only for the key that made it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.config import Settings
from service.queue import Broker
from tests.factories import bracket_uploads, exposure_files
from tests.worker.harness import api_server

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef01"


@pytest.fixture
def client(service_settings: Settings) -> Iterator[httpx.Client]:
    keyed = service_settings.model_copy(update={"api_keys": [ALICE, BOB]})
    with api_server(keyed) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: httpx.Client, headers: dict[str, str], **extra: str) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        files=exposure_files(bracket_uploads()),
        data={"exposure_values": "-2,0,2"},
        headers={**headers, **extra},
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/jobs"),
        ("POST", "/v1/reconstruct"),
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef"),
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef/result"),
        ("DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef"),
        ("GET", "/v1/models"),
    ],
)
def test_every_v1_route_needs_a_key(client: httpx.Client, method: str, path: str) -> None:
    missing = client.request(method, path)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "not_authenticated"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")

    wrong = client.request(method, path, headers=bearer("mallory-key-0123456789abcdef"))
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "forbidden"


def test_health_and_metrics_need_no_key(client: httpx.Client) -> None:
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_a_job_is_visible_only_with_the_key_that_created_it(client: httpx.Client) -> None:
    job = submit(client, bearer(ALICE)).json()

    assert client.get(job["status_url"], headers=bearer(ALICE)).status_code == 200
    assert client.get(job["status_url"], headers={"X-API-Key": ALICE}).status_code == 200
    for method, path in (
        ("GET", job["status_url"]),
        ("GET", job["result_url"]),
        ("DELETE", job["status_url"]),
    ):
        response = client.request(method, path, headers=bearer(BOB))
        assert response.status_code == 404, (method, path)
    assert client.get(job["status_url"], headers=bearer(ALICE)).json()["status"] == "queued"


def test_idempotency_keys_of_two_api_keys_never_share_a_job(client: httpx.Client) -> None:
    alice = submit(client, bearer(ALICE), **{"Idempotency-Key": "same"}).json()
    bob = submit(client, bearer(BOB), **{"Idempotency-Key": "same"}).json()
    alice_again = submit(client, bearer(ALICE), **{"Idempotency-Key": "same"}).json()

    assert alice["id"] != bob["id"]
    assert alice_again["id"] == alice["id"]


@pytest.mark.anyio
async def test_only_a_hash_of_the_key_is_stored(client: httpx.Client, broker: Broker) -> None:
    job = submit(client, bearer(ALICE)).json()

    record = await broker.get(job["id"])
    assert record is not None and record.owner
    assert ALICE not in record.owner and len(record.owner) == 64
    stored = b"".join(v for v in (await broker.redis.hgetall(broker.keys.job(job["id"]))).values())
    assert ALICE.encode() not in stored
