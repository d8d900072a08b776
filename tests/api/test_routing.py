"""Routing jobs across a mixed fleet: each job reaches only a worker that serves its model
(one stream and consumer group per model), the default model is decided by configuration
and what the fleet can open, never by heartbeat order, and a model no live worker serves
is refused (503) or queued with a reason, as HDR_UNSERVED_MODEL_POLICY says."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.catalog import Catalog, Route
from service.api.errors import ModelUnavailable, NoWorkerForModel
from service.config import Settings
from service.worker.models import load_models
from tests.factories import REPO, bracket_uploads, exposure_files
from tests.worker.engines import serving_only
from tests.worker.harness import api_server, wait_for, worker_thread


def submit(client: httpx.Client, **fields: str) -> httpx.Response:
    data = {"exposure_values": "-2,0,2", **fields}
    return client.post("/v1/jobs", files=exposure_files(bracket_uploads()), data=data)


def serving(client: httpx.Client, *names: str) -> None:
    """Wait until a ready live worker serves each of ``names``."""

    def ready() -> bool:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        return all(models.get(n, {}).get("status") == "serving" for n in names)

    wait_for(ready, 20, f"workers serving {', '.join(names)}")


def worker_settings(settings: Settings, worker_id: str) -> Settings:
    return settings.model_copy(update={"worker_id": f"{settings.worker_id}-{worker_id}"})


@contextlib.contextmanager
def classical_fleet(settings: Settings) -> Iterator[httpx.Client]:
    """The API and one worker serving only `classical`, ready; yields an API client."""
    with (
        api_server(settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        worker_thread(worker_settings(settings, "classical"), serving_only(name="classical")),
    ):
        serving(client, "classical")
        yield client


def final_job(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(job["status_url"]).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, 60, f"job {job['id']}", interval=0.1)


def test_a_mixed_fleet_runs_every_job_on_a_worker_that_serves_its_model(
    service_settings: Settings,
) -> None:
    """The hostile review's case: one worker with AFUNet, one with only `classical`; of 8
    jobs, 7 failed with "model 'afunet' is not served by this worker" before routing."""
    afunet_worker = worker_settings(service_settings, "afunet")
    classical_worker = worker_settings(service_settings, "classical")
    with (
        api_server(service_settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        worker_thread(afunet_worker, serving_only(name="afunet")),
        worker_thread(classical_worker, serving_only(name="classical")),
    ):
        serving(client, "afunet", "classical")
        asked = ["afunet", "classical", "", "classical", "afunet", "", "classical", "afunet"]
        accepted = [submit(client, **({"model": m} if m else {})) for m in asked]
        assert [a.status_code for a in accepted] == [202] * 8, [a.text for a in accepted]
        jobs = [final_job(client, a.json()) for a in accepted]
        records = [client.get(a.json()["status_url"]).json() for a in accepted]

    assert [j["status"] for j in jobs] == ["succeeded"] * 8, [j["error"] for j in jobs]
    # A job naming no model runs on HDR_DEFAULT_MODEL (afunet), recorded at submission.
    assert [j["model"] for j in jobs] == [m or "afunet" for m in asked]
    assert all(r["waiting_reason"] is None for r in records)
    assert all(j["attempts"] == 1 for j in jobs)


def test_an_unserved_model_queues_with_its_reason_until_a_worker_for_it_starts(
    service_settings: Settings,
) -> None:
    """HDR_UNSERVED_MODEL_POLICY=queue, the autoscaled fleet: the job waits in its model's
    stream (what KEDA scales that model's workers on), says why, and is counted."""
    settings = service_settings.model_copy(update={"unserved_model_policy": "queue"})
    with classical_fleet(settings) as client:
        answer = submit(client, model="afunet")
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert job["status"] == "queued" and job["model"] == "afunet"
        assert "no live worker serves model 'afunet'" in job["waiting_reason"]
        polled = client.get(job["status_url"]).json()
        assert polled["status"] == "queued" and polled["waiting_reason"] == job["waiting_reason"]
        metrics = client.get("/metrics").text
        assert 'hdr_jobs_queued_unserved_total{model="afunet"} 1.0' in metrics
        assert 'hdr_model_stream_length{model="afunet"} 1.0' in metrics
        assert 'hdr_model_workers{model="afunet"} 0.0' in metrics
        # The scaled-up worker for afunet arrives and takes it.
        with worker_thread(worker_settings(settings, "afunet"), serving_only(name="afunet")):
            done = final_job(client, job)

    assert done["status"] == "succeeded" and done["waiting_reason"] is None


def test_the_refuse_policy_answers_503_for_a_model_no_live_worker_serves(
    service_settings: Settings,
) -> None:
    with classical_fleet(service_settings) as client:
        refused = submit(client, model="afunet")
        unknown = submit(client, model="nope")
        accepted = submit(client, model="classical")

    assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
    assert refused.json()["error"]["code"] == "no_worker_for_model"
    assert "available: classical" in refused.json()["error"]["message"]
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "model_unavailable"
    assert accepted.status_code == 202


def test_a_worker_reads_only_the_streams_of_the_models_it_serves(
    service_settings: Settings,
) -> None:
    """A job of a model this worker lacks stays queued for another: never failed here."""
    settings = service_settings.model_copy(update={"unserved_model_policy": "queue"})
    with classical_fleet(settings) as client:
        waiting = submit(client, model="afunet").json()
        ran = final_job(client, submit(client, model="classical").json())
        after = client.get(waiting["status_url"]).json()

    assert ran["status"] == "succeeded"
    assert after["status"] == "queued" and after["attempts"] == 0 and after["error"] is None


# --- the catalog's decisions, from heartbeats as workers send them ------------------------


def beat(served: list[str], unavailable: dict[str, str] | None = None, **extra: Any) -> dict:
    return {
        "ready": True,
        "state": "ready",
        "models": {name: {"tile_size": 64, "tile_overlap": 8} for name in served},
        "unavailable": unavailable or {},
        **extra,
    }


def test_the_default_model_does_not_depend_on_heartbeat_order() -> None:
    fleet = [
        beat(["classical"], default_model="classical"),
        beat(["afunet", "classical"], default_model="afunet"),
        beat(["zeta"], default_model="zeta"),
    ]
    defaults = {
        Catalog(list(order), [], "afunet").resolve(None) for order in itertools.permutations(fleet)
    }
    assert defaults == {Route("afunet")}
    # Scaled to zero, afunet is still the default: its jobs wait for it (queue policy).
    without = Catalog([fleet[0]], ["afunet", "classical"], "afunet", "queue")
    route = without.resolve(None)
    assert route.model == "afunet" and route.waiting_reason is not None


def test_a_fleet_that_cannot_open_the_default_model_runs_default_jobs_on_classical() -> None:
    """A fresh install without AFUNet weights: every ready worker reports afunet unavailable."""
    missing = {"afunet": "no weights: model_repo/afunet/1/model.pth"}
    fresh = Catalog([beat(["classical"], missing)] * 2, ["afunet", "classical"], "afunet")
    assert fresh.default_model == "classical" and fresh.resolve(None) == Route("classical")
    with pytest.raises(NoWorkerForModel, match=r"model\.pth"):
        fresh.resolve("afunet")
    # A pool restricted with HDR_WORKER_MODELS does not report afunet: no fallback then.
    pool = Catalog([beat(["classical"])], ["afunet", "classical"], "afunet")
    assert pool.default_model == "afunet"
    with pytest.raises(NoWorkerForModel, match="HDR_DEFAULT_MODEL"):
        pool.resolve(None)


def test_unknown_models_are_422_and_known_ones_include_those_with_a_stream() -> None:
    catalog = Catalog([beat(["classical"])], [], "afunet", "queue", stream_models=["afunet"])
    assert catalog.resolve("afunet").waiting_reason is not None
    with pytest.raises(ModelUnavailable, match="unknown model 'nope'"):
        catalog.resolve("nope")
    # While every live worker is still loading, any known model queues under refuse too,
    # but a job naming none is asked to come back: its model is not known yet.
    loading = Catalog([{"state": "loading", "models": {}}], ["afunet"], "afunet", "refuse")
    assert loading.resolve("afunet").waiting_reason == "the workers are still loading their models"
    with pytest.raises(NoWorkerForModel, match="still loading") as refused:
        loading.resolve(None)
    assert refused.value.retry_after == 5
    queueing = Catalog([{"state": "loading", "models": {}}], ["afunet"], "afunet", "queue")
    assert queueing.resolve(None).model == "afunet"
    # No worker at all: nothing is loading; jobs queue for HDR_DEFAULT_MODEL.
    assert Catalog([], ["afunet"], "afunet", "refuse").resolve(None).model == "afunet"


def test_hdr_worker_models_restricts_what_a_worker_loads(tmp_path: Path) -> None:
    repo = tmp_path / "repo"  # the shipped repository: afunet without weights, classical
    for config in (REPO / "model_repo").glob("*/config.yaml"):
        (repo / config.parent.name).mkdir(parents=True)
        (repo / config.parent.name / "config.yaml").write_bytes(config.read_bytes())
    everything = load_models(Settings(model_repo=repo, device="cpu"))
    pool = load_models(Settings(model_repo=repo, device="cpu", worker_models=["classical", "zeta"]))

    assert set(everything.served) == {"classical"} and "afunet" in everything.unavailable
    assert set(pool.served) == {"classical"}
    assert "afunet" not in pool.unavailable  # not wanted here: not reported
    assert "not in the model repository" in pool.unavailable["zeta"]
    from_env = Settings.model_validate({"worker_models": "afunet, classical"})
    assert from_env.worker_models == ["afunet", "classical"]
