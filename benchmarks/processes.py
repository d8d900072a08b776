"""Service processes for the benchmarks that run the real API and workers: one way to
start them with their logs in a folder, wait until the workers are ready, and stop them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

from benchmarks.child import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Children started from the repository root, each logging to ``<log_dir>/<name>.log``;
    stopped in reverse order (workers before the API before Redis) when the block ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def spawn(
        self, args: Sequence[str], name: str, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(log)
        process = subprocess.Popen(
            list(args), cwd=REPO, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
        self._processes.append(process)
        return process

    def check(self) -> None:
        """RuntimeError naming a child that has exited, with the end of its log: service
        processes run until stopped, so one that ended failed (its log goes with the
        caller's temporary folder, hence the tail here)."""
        for process, log in zip(self._processes, self._logs, strict=True):
            if process.poll() is not None:
                log.flush()
                tail = Path(log.name).read_text(errors="replace")[-3000:]
                name = Path(log.name).stem
                raise RuntimeError(f"{name} exited with status {process.returncode}:\n{tail}")

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.terminate()
        for process in self._processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in self._logs:
            log.close()


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    children = Processes(log_dir)
    try:
        yield children
    finally:
        children.stop()


def service_env(redis_url: str, blobs: Path, repo: Path, **settings: str) -> dict[str, str]:
    """The environment of a benchmark's API and workers: this process's own without any
    ``HDR_`` variable of the caller's shell (a benchmark measures what it sets), a file
    blob store at ``blobs``, the model repository ``repo``, a queue no benchmark fills,
    worker metrics on a free port, and ``settings`` (``HDR_`` names) over all that."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HDR_")}
    return env | {
        "HDR_REDIS_URL": redis_url,
        "HDR_STORAGE_URL": f"file://{blobs.resolve()}",
        "HDR_MODEL_REPO": str(repo),
        "HDR_DEVICE": "cpu",
        "HDR_MAX_QUEUE_LENGTH": "100000",
        "HDR_WORKER_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }


def start_service(
    children: Processes, env: Mapping[str, str], workers: int, worker_args: Sequence[str]
) -> tuple[subprocess.Popen[bytes], int]:
    """The API on a free port and ``workers`` worker processes (``python`` with
    ``worker_args``), named ``w0``, ``w1``, ... by ``HDR_WORKER_ID``; returns the API
    process and its port."""
    port = free_port()
    api = children.spawn([sys.executable, "-m", "service", "api", "--port", str(port)], "api", env)
    for i in range(workers):
        children.spawn(
            [sys.executable, *worker_args], f"worker{i}", {**env, "HDR_WORKER_ID": f"w{i}"}
        )
    return api, port


def wait_for_workers(client: httpx.Client, workers: int, timeout: float, log_dir: Path) -> None:
    """Until ``workers`` workers are alive and ready (GET /v1/models), or RuntimeError."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
            body = client.get("/v1/models").json()
            ready = sum(m["workers"] for m in body["models"] if m["ready"])
            if body["workers"] >= workers and ready >= workers:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"service did not come up; logs in {log_dir}")
        time.sleep(0.2)
