"""Issue 12: a frozen Redis makes API requests answer 503 with Retry-After within the
request deadline, instead of holding them for minutes.

Redis is a real server of the test's own, frozen with SIGSTOP (as a stuck or swapping
server behaves: connections stay open, nothing answers) and thawed in teardown.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.queue.jobs import new_job_id
from tests.worker.harness import api_server, redis_server

DEADLINE = 1.0
#: Time beyond the deadline allowed for the answer itself on a busy machine.
MARGIN = 3.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with redis_server(tmp_path) as server:
        yield server


def test_job_status_is_503_within_the_deadline_while_redis_is_frozen(
    own_redis: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, server = own_redis
    settings = Settings(
        redis_url=url,
        key_prefix="deadline",
        request_timeout_seconds=DEADLINE,
        storage_url=(tmp_path / "blobs").as_uri(),
    )
    job_id = new_job_id()
    with api_server(settings) as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404  # Redis answers
        server.send_signal(signal.SIGSTOP)
        for _ in range(2):  # the pooled connection, then a fresh one
            started = time.monotonic()
            response = client.get(f"/v1/jobs/{job_id}")
            elapsed = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) > 0
            error = response.json()["error"]
            assert error["code"] == "unavailable"
            assert "Redis" in error["message"]
            assert elapsed < DEADLINE + MARGIN, f"answered after {elapsed:.1f} s"
        assert client.get("/healthz").status_code == 200  # liveness never touches Redis
        server.send_signal(signal.SIGCONT)
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404  # and it recovers
