"""The job routes over real HTTP with a real worker: submit, poll, download, cancel, sync.

The golden case runs on the golden checkpoint (one 128-pixel tile covers its 100x72
frame, so the tiled pipeline equals the official full-frame forward). The API shifts EVs
to the shortest exposure, so its reference is the model on (0, 2, 4), not the official
output for the golden file's unshifted (-2, 0, 2). Other tests use the reference test
engine, which costs nothing, or its slow variant.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.imaging import decode_exr, decode_radiance
from service.worker.models import ModelSet
from tests.factories import (
    GOLDEN_SEED0,
    bracket_uploads,
    exposure_files,
    golden_output,
    golden_uploads,
)
from tests.worker.engines import ReferenceEngine, serving_only
from tests.worker.harness import api_server, wait_for, worker_thread

#: The official output for the golden exposure.txt as written: EVs -2, 0, 2 unshifted.
OFFICIAL_UNSHIFTED = np.load(GOLDEN_SEED0 / "model_output.npy")[0].transpose(1, 2, 0)


@pytest.fixture
def client(service_settings: Settings) -> Iterator[httpx.Client]:
    with api_server(service_settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def submit(client: httpx.Client, uploads: list[tuple[str, bytes]], **fields: Any) -> dict:
    response = client.post("/v1/jobs", files=exposure_files(uploads), data=fields)
    assert response.status_code == 202, response.text
    return response.json()


def wait_final(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    def final() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(final, timeout, f"job {job_id} to finish", interval=0.1)


def reference_models(delay: float = 0.0) -> ModelSet:
    return serving_only(ReferenceEngine(delay))


def test_golden_job_result_equals_the_model_output_in_every_format(
    client: httpx.Client, service_settings: Settings, golden_models: ModelSet
) -> None:
    expected = golden_output((0.0, 2.0, 4.0))
    with worker_thread(service_settings, golden_models):
        accepted = submit(client, golden_uploads(), exposure_values="-2,0,2")
        assert accepted["status"] == "queued"
        assert accepted["status_url"] == f"/v1/jobs/{accepted['id']}"
        job = wait_final(client, accepted["id"])

        assert job["status"] == "succeeded", job
        assert (job["width"], job["height"]) == (100, 72)
        assert job["model"] == "afunet" and job["engine"] == "torch"
        assert job["progress"] == {"tiles_done": 1, "tiles_total": 1}
        assert {"queue_wait", "decode", "inference", "encode"} <= set(job["timings"])
        result = job["result_url"]

        exr = client.get(result, params={"format": "exr", "dtype": "float32"})
        assert exr.headers["content-type"] == "image/x-exr"
        assert np.abs(decode_exr(exr.content) - expected).max() <= 1e-4

        half = client.get(result, params={"format": "exr", "dtype": "float16"})
        assert np.abs(decode_exr(half.content) - expected).max() <= 1e-3

        hdr = client.get(result, params={"format": "hdr"})
        assert hdr.headers["content-type"] == "image/vnd.radiance"
        assert np.allclose(decode_radiance(hdr.content), expected, rtol=0.02, atol=1e-4)

        png = client.get(result, params={"format": "png"})
        assert png.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(png.content)) as image:
            assert image.format == "PNG" and image.size == (100, 72) and image.mode == "RGB"


def test_shifted_evs_and_exposure_times_of_one_bracket_give_identical_results(
    client: httpx.Client, service_settings: Settings, golden_models: ModelSet
) -> None:
    """-2,0,2 and 0,2,4 stops, and 0.25, 1, 4 seconds, are one request: the same bytes back."""
    forms = (
        {"exposure_values": "-2,0,2"},
        {"exposure_values": "0,2,4"},
        {"exposure_times": "0.25 1 4"},
    )
    with worker_thread(service_settings, golden_models):
        jobs = [
            wait_final(client, submit(client, golden_uploads(), **form)["id"]) for form in forms
        ]

    assert [job["status"] for job in jobs] == ["succeeded"] * 3, jobs
    assert [job["exposure_values"] for job in jobs] == [[0.0, 2.0, 4.0]] * 3
    params = {"format": "exr", "dtype": "float32"}
    results = [client.get(job["result_url"], params=params).content for job in jobs]
    assert results[0] == results[1] == results[2]
    hdr = decode_exr(results[0])
    assert np.abs(hdr - golden_output((0.0, 2.0, 4.0))).max() <= 1e-4
    # Had -2,0,2 gone through unshifted, the result would be the official one for it.
    assert np.abs(hdr - OFFICIAL_UNSHIFTED).max() > 0.1


def test_exposures_in_any_order_are_sorted_by_exposure(
    client: httpx.Client, service_settings: Settings
) -> None:
    uploads = bracket_uploads(evs=(-2.0, 0.0, 2.0))
    shuffled = [uploads[2], uploads[0], uploads[1]]
    with worker_thread(service_settings, reference_models()):
        ordered = wait_final(client, submit(client, uploads, exposure_values="-2,0,2")["id"])
        mixed = wait_final(client, submit(client, shuffled, exposure_values="2 -2 0")["id"])

    assert ordered["exposure_values"] == mixed["exposure_values"] == [0.0, 2.0, 4.0]
    first = client.get(ordered["result_url"]).content
    second = client.get(mixed["result_url"]).content
    assert np.array_equal(decode_exr(first), decode_exr(second))


def test_result_is_409_while_queued_and_the_job_reports_its_state(
    client: httpx.Client,
) -> None:
    job = submit(client, bracket_uploads(), exposure_values="-2,0,2")

    response = client.get(job["result_url"])

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_finished"
    assert client.get(job["status_url"]).json()["status"] == "queued"


def test_unknown_job_is_404_for_every_job_route(client: httpx.Client) -> None:
    for method, path in (
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef"),
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef/result"),
        ("DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef"),
        ("GET", "/v1/jobs/not-an-id"),
    ):
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"


def test_cancelled_queued_job_is_never_processed(
    client: httpx.Client, service_settings: Settings
) -> None:
    doomed = submit(client, bracket_uploads(), exposure_values="-2,0,2")
    cancelled = client.delete(doomed["status_url"])
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"

    engine = ReferenceEngine()
    models = serving_only(engine)
    with worker_thread(service_settings, models):
        later = submit(client, bracket_uploads(seed=1), exposure_values="-2,0,2")
        assert wait_final(client, later["id"])["status"] == "succeeded"

    job = client.get(doomed["status_url"]).json()
    assert job["status"] == "cancelled"
    assert job["started_at"] is None and job["attempts"] == 0
    assert job["progress"]["tiles_done"] == 0
    assert engine.calls == 1 + 1  # warm-up, then the later job's single tile
    assert client.get(doomed["result_url"]).json()["error"]["code"] == "no_result"


def test_cancelling_a_running_job_stops_it_between_tile_batches(
    client: httpx.Client, service_settings: Settings
) -> None:
    with worker_thread(service_settings, reference_models(delay=0.2)):
        job = submit(client, bracket_uploads(128, 128), exposure_values="-2,0,2", tile_size=32)
        wait_for(
            lambda: client.get(job["status_url"]).json()["progress"]["tiles_done"] >= 2,
            30,
            "two tile batches",
        )
        response = client.delete(job["status_url"])
        assert response.status_code == 202  # running: it stops at its next batch
        final = wait_final(client, job["id"], timeout=30)

    assert final["status"] == "cancelled"
    assert final["progress"]["tiles_done"] < final["progress"]["tiles_total"] == 25  # 5 x 5


def test_cancelling_a_succeeded_job_is_409(
    client: httpx.Client, service_settings: Settings
) -> None:
    with worker_thread(service_settings, reference_models()):
        job = wait_final(client, submit(client, bracket_uploads(), exposure_values="-2,0,2")["id"])

    response = client.delete(job["status_url"])

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_cancellable"


def test_reconstruct_answers_the_file_when_the_job_finishes_in_time(
    client: httpx.Client, service_settings: Settings
) -> None:
    with worker_thread(service_settings, reference_models()):
        response = client.post(
            "/v1/reconstruct",
            files=exposure_files(bracket_uploads()),
            data={"exposure_values": "-2,0,2"},
            params={"format": "hdr"},
        )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/vnd.radiance"
    assert decode_radiance(response.content).shape == (48, 64, 3)
    assert response.headers["location"].startswith("/v1/jobs/")


def test_reconstruct_answers_202_with_the_job_when_it_takes_longer(
    service_settings: Settings,
) -> None:
    quick = service_settings.model_copy(update={"sync_wait_seconds": 0.3})
    with api_server(quick) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(
            "/v1/reconstruct",
            files=exposure_files(bracket_uploads()),
            data={"exposure_values": "-2,0,2"},
        )

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["location"] == body["status_url"]
