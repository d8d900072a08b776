"""/metrics of the API and of a worker after a real job: names, labels and sane values."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.worker.models import ModelSet
from tests.factories import exposure_files, golden_uploads
from tests.worker.harness import api_server, wait_for, worker_thread

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client, url: str) -> tuple[Samples, str]:
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, response.text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_api_and_worker_metrics_after_a_golden_job(
    service_settings: Settings, golden_models: ModelSet
) -> None:
    with (
        api_server(service_settings) as url,
        httpx.Client(base_url=url, timeout=60) as client,
        worker_thread(service_settings, golden_models, health_port=0) as worker,
    ):
        job = client.post(
            "/v1/jobs", files=exposure_files(golden_uploads()), data={"exposure_values": "-2,0,2"}
        ).json()
        wait_for(
            lambda: client.get(job["status_url"]).json()["status"] == "succeeded", 120, "the job"
        )
        worker_url = f"http://127.0.0.1:{worker.health_port}"
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert client.get(worker_url + path).status_code == 200, path
        api, api_text = scrape(client, "/metrics")
        work, work_text = scrape(client, worker_url + "/metrics")

    assert value(api, "hdr_http_requests_total", method="POST", route="/v1/jobs", status="202") == 1
    polls = value(
        api, "hdr_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200"
    )
    assert polls >= 1
    assert job["id"] not in api_text  # routes are templated, never raw ids
    assert value(api, "hdr_http_request_duration_seconds_count", method="POST", route="/v1/jobs")
    assert value(api, "hdr_jobs_submitted_total", model="afunet") == 1
    assert value(api, "hdr_upload_bytes_count") == 1
    assert value(api, "hdr_upload_bytes_sum") == sum(len(data) for _, data in golden_uploads())
    assert value(api, "hdr_redis_up") == 1
    assert value(api, "hdr_queue_depth") == 0
    assert value(api, "hdr_queue_oldest_job_age_seconds") == 0
    assert value(api, "hdr_dead_letter_jobs") == 0
    assert value(api, "hdr_jobs_in_flight") == 0
    assert value(api, "hdr_workers", ready="true") == 1
    assert value(api, "process_resident_memory_bytes") > 0

    assert value(work, "hdr_jobs_total", outcome="succeeded") == 1
    for stage in ("queue_wait", "decode", "inference", "encode", "store"):
        assert value(work, "hdr_job_stage_seconds_count", stage=stage) == 1, stage
    assert value(work, "hdr_job_stage_seconds_sum", stage="inference") > 0
    assert value(work, "hdr_job_latency_seconds_count") == 1
    assert value(work, "hdr_tiles_processed_total", model="afunet") == 1
    assert value(work, "hdr_pixels_processed_total", model="afunet") == 100 * 72
    assert value(work, "hdr_inference_throughput_pixels_per_second", model="afunet") > 0
    info = {"model": "afunet", "version": "1", "architecture": "afunet"}
    info |= {"backend": "torch", "precision": "fp32", "device": "cpu"}
    assert value(work, "hdr_model_info", **info) == 1
    assert value(work, "hdr_worker_engine_busy_seconds_total") > 0
    assert value(work, "hdr_worker_tiles_per_engine_call_count") == 1  # one 128-px tile
    assert value(work, "hdr_worker_tiles_per_engine_call_sum") == 1
    assert value(work, "hdr_worker_prefetch_wait_seconds_count") == 1
    assert value(work, "hdr_worker_ready") == 1
    assert value(work, "hdr_worker_heartbeats_total") >= 1
    assert value(work, "hdr_worker_last_heartbeat_timestamp_seconds") > 0
    assert value(work, "hdr_queue_depth") == 0
    assert "hdr_gpu_memory" not in work_text  # CPU worker: no empty GPU series
