"""The API and the blob store over real HTTP: uploads land in the store, not Redis; store
and Redis faults are 503s that queue nothing; the API key and the upload limit answer
before a body is read; results stream from the store, converted formats are kept."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.config import Settings
from service.storage import input_name, job_prefix, result_name
from service.storage.file import FileStore
from tests.factories import bracket_uploads, exposure_files
from tests.worker.engines import serving_only
from tests.worker.harness import api_server, free_port, redis_server, wait_for, worker_thread

KEY = "k" * 24


def submit(client: httpx.Client, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        files=exposure_files(bracket_uploads()),
        data={"exposure_values": "-2,0,2"},
        headers=headers,
    )


def stored(store: FileStore) -> list[str]:
    return [info.name for info in store.list("jobs/")]


def queued(settings: Settings) -> int:
    client = redis.Redis.from_url(str(settings.redis_url))
    try:
        return int(client.zcard(f"{settings.key_prefix}:queued"))
    finally:
        client.close()


@pytest.fixture
def client(service_settings: Settings) -> Iterator[httpx.Client]:
    with api_server(service_settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def test_uploads_go_to_the_store_in_exposure_order(
    client: httpx.Client, blob_store: FileStore
) -> None:
    uploads = bracket_uploads()
    response = client.post(
        "/v1/jobs",
        files=exposure_files(list(reversed(uploads))),  # long first: sorted by EV
        data={"exposure_values": "2,0,-2"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert stored(blob_store) == [input_name(job_id, i) for i in range(3)]
    assert [blob_store.read(input_name(job_id, i)) for i in range(3)] == [
        data for _, data in uploads
    ]


def test_an_unavailable_store_is_503_with_retry_after_and_queues_nothing(
    service_settings: Settings, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")  # the store's root cannot be created: every write fails
    broken = service_settings.model_copy(update={"storage_url": f"file://{blocker}/blobs"})
    with api_server(broken) as url, httpx.Client(base_url=url, timeout=60) as client:
        response = submit(client)
        ready = client.get("/readyz")

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "store_unavailable"
    assert "blob store" in response.json()["error"]["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert queued(service_settings) == 0
    assert ready.status_code == 503  # out of the balancer's rotation too


def test_redis_refusing_writes_is_503_naming_redis_and_leaves_no_blobs(
    service_settings: Settings, blob_store: FileStore, tmp_path: Path
) -> None:
    port = free_port()
    own = service_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    with (
        redis_server(tmp_path, "--maxmemory-policy", "noeviction", port=port),
        api_server(own) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        admin = redis.Redis(port=port)
        admin.config_set("maxmemory", 1)  # any write is over the limit
        response = submit(client)
        admin.config_set("maxmemory", 0)
        admin.close()
        accepted = submit(client)

    assert response.status_code == 503, response.text
    assert "Redis" in response.json()["error"]["message"]
    assert "maxmemory" in response.json()["error"]["message"]
    assert response.headers["Retry-After"]
    assert accepted.status_code == 202
    assert stored(blob_store) == [input_name(accepted.json()["id"], i) for i in range(3)]


def _raw_post(url: str, headers: str, body: bytes) -> socket.socket:
    """A POST whose declared body is far larger than what is sent: the rest never comes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(
        (
            "POST /v1/jobs HTTP/1.1\r\nHost: test\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\n{headers}\r\n"
        ).encode()
        + body
    )
    return sock


def _status(sock: socket.socket) -> tuple[int, str]:
    head = sock.recv(4096).decode("latin-1")
    return int(head.split(" ", 2)[1]), head


def test_a_post_without_an_api_key_is_refused_before_its_body_is_read(
    service_settings: Settings,
) -> None:
    keyed = service_settings.model_copy(update={"api_keys": [KEY]})
    with api_server(keyed) as url:
        sock = _raw_post(url, "", b"--b\r\n")
        try:
            status, head = _status(sock)  # answered although 50 MB are still to come
        finally:
            sock.close()
        forbidden = _raw_post(url, "X-API-Key: wrong-key-of-sixteen-chars\r\n", b"--b\r\n")
        try:
            forbidden_status, _ = _status(forbidden)
        finally:
            forbidden.close()
    assert status == 401, head
    assert "Bearer" in head  # WWW-Authenticate
    assert forbidden_status == 403


def test_uploads_past_the_limit_are_503_with_retry_after(service_settings: Settings) -> None:
    limited = service_settings.model_copy(update={"max_concurrent_uploads": 1})
    with api_server(limited) as url, httpx.Client(base_url=url, timeout=60) as client:
        slow = _raw_post(url, "", b"--b\r\n")  # holds the one slot: its body never ends
        try:
            time.sleep(0.3)
            refused = submit(client)
        finally:
            slow.close()
        wait_for(lambda: submit(client).status_code == 202, 10, "the slot to free")
    assert refused.status_code == 503, refused.text
    assert "uploads are in progress" in refused.json()["error"]["message"]
    assert refused.headers["Retry-After"]


def test_results_stream_from_the_store_and_conversions_are_made_once(
    client: httpx.Client, service_settings: Settings, blob_store: FileStore
) -> None:
    models = serving_only()
    with worker_thread(service_settings, models):
        response = submit(client)
        job_id = response.json()["id"]
        wait_for(
            lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded",
            60,
            "the job",
        )
    # The uploads went once the result was stored.
    assert stored(blob_store) == [result_name(job_id)]
    exr = client.get(f"/v1/jobs/{job_id}/result")
    assert exr.status_code == 200
    assert exr.content == blob_store.read(result_name(job_id))

    png = client.get(f"/v1/jobs/{job_id}/result", params={"format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    kept = blob_store.root / result_name(job_id, "png")
    made = kept.stat().st_mtime_ns
    again = client.get(f"/v1/jobs/{job_id}/result", params={"format": "png"})
    assert again.content == png.content
    assert kept.stat().st_mtime_ns == made  # served from the store, not re-encoded
    assert sorted(stored(blob_store)) == [result_name(job_id), result_name(job_id, "png")]

    # A result whose blob is gone is 404, not a 500.
    blob_store.delete_prefix(job_prefix(job_id))
    gone = client.get(f"/v1/jobs/{job_id}/result")
    assert gone.status_code == 404 and "expired" in gone.json()["error"]["message"]


def test_cancelling_a_queued_job_deletes_its_uploads(
    client: httpx.Client, blob_store: FileStore
) -> None:
    job_id = submit(client).json()["id"]
    assert len(stored(blob_store)) == 3
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
    assert stored(blob_store) == []
