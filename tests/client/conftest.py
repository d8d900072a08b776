"""A real ``hdr-service serve`` for the client tests: one per test module.

It runs on the test Redis under a key prefix of its own (deleted afterwards) with the
golden checkpoint in a repository whose tiles are 32 pixels, so that the golden bracket
(100x72) runs as several tiles by default and as one exact frame with ``tile_size=0``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.factories import write_model_repo
from tests.worker.harness import delete_keys, serving, wait_for

#: Tile edge of the test repository: several tiles for the 100x72 golden frames.
TILE_SIZE = 32


@dataclass(frozen=True)
class Served:
    """A running service: its base URL and the log it writes."""

    url: str
    log: Path


def _afunet_ready(client: httpx.Client) -> bool:
    try:
        body = client.get("/v1/models").json()
    except httpx.TransportError:
        return False
    return any(m["name"] == "afunet" and m["ready"] for m in body.get("models", []))


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``hdr-service serve`` with a ready golden AFUNet worker, for the module's tests."""
    root = tmp_path_factory.mktemp("served")
    repo = write_model_repo(root / "repo", tile_size=TILE_SIZE, overlap=8, batch=2)
    prefix = f"test-client-{uuid.uuid4().hex[:8]}"
    log = root / "serve.log"
    try:
        with serving(
            repo,
            log,
            HDR_REDIS_URL=redis_url,
            HDR_KEY_PREFIX=prefix,
            HDR_DEVICE="cpu",
            HDR_HEARTBEAT_INTERVAL_SECONDS="0.5",
        ) as (client, _process):
            wait_for(lambda: _afunet_ready(client), 120, "serve with a ready worker", 0.3)
            yield Served(str(client.base_url).rstrip("/"), log)
    finally:
        delete_keys(redis_url, prefix)
