"""The golden job end to end through the real ``hdr-service api`` and ``hdr-service
worker`` processes, on each blob store: ``file://`` and ``s3://`` (moto's server).

What it pins down: the API and the worker share nothing but Redis and the store; the
result equals the model's output for the EVs shifted to the shortest exposure; Redis
holds no bytes; the uploads are gone once the result is stored; a download streams (file)
or redirects to a presigned URL (S3) and streams on ``redirect=false``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from service.config import Settings
from service.imaging import decode_exr
from service.storage import input_name, open_store, result_name
from tests.factories import REPO, exposure_files, free_port, golden_output, golden_uploads
from tests.worker.harness import wait_for, worker_env, worker_process

pytestmark = pytest.mark.slow


@pytest.fixture(params=["file", "s3"])
def storage_url(request: pytest.FixtureRequest, blob_dir: Path) -> str:
    """HDR_STORAGE_URL of the run: the test's folder, or a fresh S3 prefix (the AWS
    variables then point at the moto server, for this process and its children)."""
    if request.param == "file":
        return f"file://{blob_dir}"
    return str(request.getfixturevalue("s3_url"))


@contextmanager
def api_process(env: dict[str, str], log: Path) -> Iterator[str]:
    """``hdr-service api`` as a subprocess on a free port; yields its URL."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "api", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 60, "the API process", interval=0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_golden_job_runs_through_api_and_worker_processes_on_each_store(
    service_settings: Settings, golden_repo: Path, storage_url: str, tmp_path: Path
) -> None:
    settings = service_settings.model_copy(update={"storage_url": storage_url})
    env = worker_env(settings, HDR_MODEL_REPO=str(golden_repo))
    with (
        worker_process(env, tmp_path / "worker.log"),
        api_process(env, tmp_path / "api.log") as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        response = client.post(
            "/v1/jobs",
            files=exposure_files(golden_uploads()),
            data={"exposure_values": "-2,0,2"},
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        def finished() -> dict | None:
            job = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, 180, "the golden job", interval=0.2)
        assert job["status"] == "succeeded", job

        download = client.get(f"/v1/jobs/{job_id}/result")
        if storage_url.startswith("s3://"):
            assert download.status_code == 307  # to a presigned URL of the bucket
            presigned = download.headers["location"]
            assert presigned.startswith("http") and "Signature" in presigned
            exr = httpx.get(presigned, timeout=60).content
            streamed = client.get(f"/v1/jobs/{job_id}/result", params={"redirect": "false"})
            assert streamed.status_code == 200 and streamed.content == exr
        else:
            assert download.status_code == 200
            exr = download.content
        # The API shifts -2,0,2 to the shortest exposure (the one EV convention).
        assert np.abs(decode_exr(exr) - golden_output((0.0, 2.0, 4.0))).max() <= 1e-4

    store = open_store(storage_url)
    try:
        assert store.exists(result_name(job_id))
        assert not any(store.exists(input_name(job_id, i)) for i in range(3))
    finally:
        store.close()
    # Redis holds state only: no key of the run is anywhere near an upload's size.
    client_redis = redis.Redis.from_url(str(settings.redis_url))
    try:
        keys = list(client_redis.scan_iter(match=f"{settings.key_prefix}:*"))
        sizes = {key: client_redis.memory_usage(key) or 0 for key in keys}
    finally:
        client_redis.close()
    assert sizes and max(sizes.values()) < 16 * 1024, sizes
