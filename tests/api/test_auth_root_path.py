"""API keys behind a path prefix (uvicorn's ``--root-path``, a proxy that strips it): the
key gate sees the same /v1 requests as the routes, so a keyed request is served and
names its owner."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.config import Settings
from tests.factories import bracket_uploads, exposure_files
from tests.worker.harness import api_server

KEY = "carol-key-0123456789abcdef0"
PREFIX = "/hdr"


@pytest.fixture
def client(service_settings: Settings) -> Iterator[httpx.Client]:
    keyed = service_settings.model_copy(update={"api_keys": [KEY]})
    with (
        api_server(keyed, root_path=PREFIX) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        yield http


def test_keys_are_checked_and_owners_named_behind_a_root_path(client: httpx.Client) -> None:
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"X-API-Key": "mallory"}).status_code == 403
    assert client.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200

    job = client.post(
        "/v1/jobs",
        files=exposure_files(bracket_uploads()),
        data={"exposure_values": "-2,0,2"},
        headers={"X-API-Key": KEY},
    )
    assert job.status_code == 202, job.text
    status_url = job.json()["status_url"]
    assert status_url.startswith(f"{PREFIX}/v1/jobs/")
    mine = client.get(status_url.removeprefix(PREFIX), headers={"X-API-Key": KEY})  # proxied
    assert mine.status_code == 200
    assert mine.json()["id"] == job.json()["id"]
