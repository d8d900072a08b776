"""What the queue promises through HTTP: idempotency, a bounded queue, expiry, and
readiness that follows Redis down and back up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.worker.models import ModelSet
from tests.factories import bracket_uploads, exposure_files
from tests.worker.engines import ReferenceEngine, served
from tests.worker.harness import api_server, free_port, redis_server, wait_for, worker_thread


def submit(
    client: httpx.Client, key: str | None = None, seed: int = 0, evs: str = "-2,0,2"
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(
        "/v1/jobs",
        files=exposure_files(bracket_uploads(seed=seed)),
        data={"exposure_values": evs},
        headers=headers,
    )


@pytest.fixture
def client(service_settings: Settings) -> Iterator[httpx.Client]:
    with api_server(service_settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


def test_same_idempotency_key_returns_the_same_job(client: httpx.Client) -> None:
    first = submit(client, key="order-42")
    again = submit(client, key="order-42")
    shifted = submit(client, key="order-42", evs="0,2,4")  # the same stops, normalised
    other = submit(client, key="order-43")

    assert first.status_code == again.status_code == shifted.status_code == 202
    assert other.status_code == 202
    assert again.json()["id"] == shifted.json()["id"] == first.json()["id"]
    assert other.json()["id"] != first.json()["id"]
    assert client.get("/metrics").text.count("hdr_queue_depth 2.0") == 1


@pytest.mark.parametrize(
    ("change", "what"),
    [({"evs": "-1,0,1"}, "other EVs"), ({"seed": 1}, "other files")],
)
def test_same_idempotency_key_with_another_request_is_422(
    client: httpx.Client, change: dict[str, object], what: str
) -> None:
    first = submit(client, key="order-7")
    reused = submit(client, key="order-7", **change)  # type: ignore[arg-type]

    assert first.status_code == 202, what
    assert reused.status_code == 422, what
    error = reused.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert first.json()["id"] in error["message"]
    assert "order-7" in error["message"]
    assert client.get("/metrics").text.count("hdr_queue_depth 1.0") == 1


def test_job_of_more_tiles_than_the_limit_is_422_naming_them(
    service_settings: Settings,
) -> None:
    capped = service_settings.model_copy(update={"max_tiles_per_job": 4})
    with api_server(capped) as url, httpx.Client(base_url=url, timeout=30) as client:
        refused = client.post(
            "/v1/jobs",
            files=exposure_files(bracket_uploads(48, 64)),
            data={"exposure_values": "-2,0,2", "tile_size": "24"},  # 2 x 3 tiles
        )
        coarse = client.post(
            "/v1/jobs",
            files=exposure_files(bracket_uploads(48, 64)),
            data={"exposure_values": "-2,0,2", "tile_size": "64"},  # one tile
        )

    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "job_too_large"
    assert "6 tiles" in error["message"] and "HDR_MAX_TILES_PER_JOB" in error["message"]
    assert coarse.status_code == 202


def test_megapixels_per_key_per_minute_past_the_budget_is_429_with_retry_after(
    service_settings: Settings,
) -> None:
    frame = 48 * 64 / 1e6
    limited = service_settings.model_copy(update={"max_megapixels_per_key_per_minute": 2.5 * frame})
    if time.time() % 60 > 50:  # keep the three submits inside one clock minute
        time.sleep(60 - time.time() % 60 + 0.1)
    with api_server(limited) as url, httpx.Client(base_url=url, timeout=30) as client:
        first, second, third = (submit(client) for _ in range(3))

    assert first.status_code == second.status_code == 202
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(third.headers["Retry-After"]) <= 60


def test_202_carries_an_estimate_once_a_job_has_finished(service_settings: Settings) -> None:
    models = ModelSet(served={"afunet": served("afunet", ReferenceEngine(delay=0.05))})
    with (
        api_server(service_settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        worker_thread(service_settings, models),
    ):
        before = submit(client).json()
        wait_for(
            lambda: client.get(before["status_url"]).json()["status"] == "succeeded",
            timeout=60,
            what="the first job to succeed",
        )
        after = submit(client, seed=1).json()

    assert before["estimated_seconds"] is None  # nothing to learn from yet
    assert after["estimated_seconds"] is not None and after["estimated_seconds"] > 0


def test_full_queue_is_429_with_retry_after(service_settings: Settings) -> None:
    small = service_settings.model_copy(update={"max_queue_length": 2})
    with api_server(small) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert submit(client).status_code == 202
        assert submit(client).status_code == 202
        refused = submit(client)

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert "2 jobs" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1


def test_job_is_404_after_its_ttl(service_settings: Settings) -> None:
    short = service_settings.model_copy(update={"job_ttl_seconds": 1})
    with api_server(short) as url, httpx.Client(base_url=url, timeout=30) as client:
        job = submit(client).json()
        assert client.get(job["status_url"]).status_code == 200
        time.sleep(1.5)
        response = client.get(job["status_url"])

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_result_is_404_after_its_ttl(service_settings: Settings) -> None:
    short = service_settings.model_copy(update={"job_ttl_seconds": 2})
    models = ModelSet(served={"afunet": served("afunet", ReferenceEngine())})
    with (
        api_server(short) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        worker_thread(short, models),
    ):
        job = submit(client).json()
        wait_for(lambda: client.get(job["result_url"]).status_code == 200, 10, "the result")
        time.sleep(2.5)
        response = client.get(job["result_url"])

    assert response.status_code == 404


def test_readiness_follows_redis_down_and_back(service_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    own = service_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    with api_server(own) as url, httpx.Client(base_url=url, timeout=30) as client:
        with redis_server(tmp_path, port=port):
            wait_for(lambda: client.get("/readyz").status_code == 200, 10, "readiness")
            assert client.get("/v2/health/ready").status_code == 200

        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "not_ready"
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/healthz").status_code == 200  # alive, just not ready
        refused = submit(client)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "unavailable"
        assert refused.headers["Retry-After"]
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "hdr_redis_up 0.0" in metrics.text

        with redis_server(tmp_path, port=port):
            wait_for(lambda: client.get("/readyz").status_code == 200, 10, "readiness again")
            assert submit(client).status_code == 202
