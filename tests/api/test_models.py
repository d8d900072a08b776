"""GET /v1/models and the `model` form field, as the live workers' heartbeats decide them."""

from __future__ import annotations

from pathlib import Path

import httpx

from service.config import Settings
from service.worker.models import ModelSet
from tests.factories import bracket_uploads, exposure_files
from tests.worker import engines
from tests.worker.harness import api_server, wait_for, worker_thread


def submit(client: httpx.Client, **fields: str) -> httpx.Response:
    data = {"exposure_values": "-2,0,2", **fields}
    return client.post("/v1/jobs", files=exposure_files(bracket_uploads()), data=data)


def live_models(client: httpx.Client) -> dict:
    """GET /v1/models once a live worker reports its models loaded."""

    def loaded() -> dict | None:
        body = client.get("/v1/models").json()
        statuses = {m["status"] for m in body["models"]}
        return body if body["workers"] and "loading" not in statuses else None

    return wait_for(loaded, 10, "a ready worker's heartbeat")


def test_models_show_what_the_live_worker_serves(
    service_settings: Settings, golden_models: ModelSet
) -> None:
    with (
        api_server(service_settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        worker_thread(service_settings, golden_models),
    ):
        body = live_models(client)

    assert body["default_model"] == "afunet"
    (afunet,) = body["models"]
    assert afunet == {
        "name": "afunet",
        "status": "serving",
        "ready": True,
        "default": True,
        "version": 1,
        "architecture": "afunet",
        "backend": "torch",
        "precision": "fp32",
        "precision_note": None,
        "device": "cpu",
        "tile_size": 128,
        "tile_overlap": 8,
        "tile_batch": 1,
        "tile_source": "config",
        "sources": {
            "engine": "config",
            "precision": "default",
            "tile_size": "config",
            "tile_overlap": "config",
            "tile_batch": "config",
        },
        "workers": 1,
        "reason": None,
    }


def test_without_workers_repository_models_are_listed_absent_and_jobs_still_queue(
    service_settings: Settings,
) -> None:
    with api_server(service_settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = client.get("/v1/models").json()
        queued = submit(client, model="afunet")
        unknown = submit(client, model="nope")

    # HDR_DEFAULT_MODEL, whatever the fleet: nothing has loaded yet to say otherwise.
    assert body["workers"] == 0 and body["default_model"] == "afunet"
    assert [(m["name"], m["status"], m["reason"]) for m in body["models"]] == [
        ("afunet", "absent", "no live worker")
    ]
    assert queued.status_code == 202 and queued.json()["model"] == "afunet"
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "model_unavailable"
    assert "afunet" in unknown.json()["error"]["message"]


def test_model_without_weights_is_reported_absent_with_the_reason(
    service_settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "afunet").mkdir(parents=True)
    (repo / "afunet" / "config.yaml").write_text("architecture: afunet\nbackends: [torch]\n")
    engines.write_test_model(repo, "fallback", "test-reference")
    engines.install()
    settings = service_settings.model_copy(update={"model_repo": repo})
    with (
        api_server(settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        worker_thread(settings),
    ):
        body = live_models(client)
        refused = submit(client, model="afunet")
        by_default = submit(client)
        accepted = submit(client, model="fallback")

    models = {m["name"]: m for m in body["models"]}
    assert models["fallback"]["status"] == "serving" and not models["fallback"]["default"]
    assert models["afunet"]["status"] == "absent" and not models["afunet"]["ready"]
    assert models["afunet"]["default"] and body["default_model"] == "afunet"
    assert "model.pth" in models["afunet"]["reason"]
    # HDR_UNSERVED_MODEL_POLICY=refuse (the default): a known model nobody serves is a
    # 503 to retry, naming why it is absent and what is served.
    for answer in (refused, by_default):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "no_worker_for_model"
        assert answer.headers["Retry-After"] == "30"
        message = answer.json()["error"]["message"]
        assert "model.pth" in message and "available: fallback" in message
    assert "HDR_DEFAULT_MODEL" in by_default.json()["error"]["message"]
    assert accepted.status_code == 202 and accepted.json()["model"] == "fallback"
