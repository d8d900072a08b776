"""Blobs out of Redis: Redis memory per job in flight, and the API's memory under uploads.

Every process is the real one: a private ``redis-server`` capped at ``--maxmemory 64mb``
(noeviction, so a full Redis refuses writes instead of losing jobs), ``hdr-service api``
and ``hdr-service worker`` subprocesses, the weight-free ``classical`` model, and a
``file://`` blob store in a temporary folder. Each job is a 1000x1500 16-bit RGB TIFF
bracket (3 x 9 MB, 27 MB per job: before the blob store, one job in flight held that much
of Redis, and two results more).

Two figures:

- **API peak RSS** while ``--uploads`` (default 8) brackets are POSTed at once, sampled
  from /proc every 10 ms, next to the API's RSS before;
- **Redis used_memory per job in flight** while ``--jobs`` jobs (default 200) are
  submitted by ``--concurrency`` client threads and run: (used_memory - its value before
  the first job) / (jobs queued or running), at the sample with the most jobs in flight;
  then every job must have succeeded (the exit status says whether they did).

Usage (needs redis-server on PATH)::

    python -m benchmarks.blob_store --jobs 200 --uploads 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import redis
import tifffile

from benchmarks.child import REPO
from benchmarks.processes import (
    free_port,
    processes,
    service_env,
    start_service,
    wait_for_workers,
)
from service.queue.keys import GROUP, Keys

KEYS = Keys("hdr")
#: The one model the workers serve: every job runs on its stream.
MODEL = "classical"
HEIGHT, WIDTH = 1000, 1500
EVS = (-2.0, 0.0, 2.0)


def bracket(seed: int = 0) -> list[bytes]:
    """Three 16-bit TIFFs of one random smooth scene, short to long exposure."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((HEIGHT // 50 + 2, WIDTH // 50 + 2, 3))
    radiance = np.kron(coarse, np.ones((50, 50, 1)))[:HEIGHT, :WIDTH] * 0.6 + 0.02
    files = []
    for ev in EVS:
        ldr = np.clip(radiance * 2.0**ev, 0, 1) ** (1 / 2.2)
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, np.round(ldr * 65535).astype(np.uint16), photometric="rgb")
        files.append(buffer.getvalue())
    return files


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def service(workdir: Path, workers: int) -> Iterator[tuple[httpx.Client, redis.Redis, int]]:
    """Private Redis (64 MB cap), API and workers; yields a client, Redis and the API pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    redis_port = free_port()
    with processes(workdir) as children:
        children.spawn(
            [
                binary,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory",
                "64mb",
                "--maxmemory-policy",
                "noeviction",
            ],
            "redis",
            dict(os.environ),
        )
        repo = workdir / "model_repo" / MODEL
        repo.mkdir(parents=True)
        shutil.copy(REPO / "model_repo" / MODEL / "config.yaml", repo / "config.yaml")
        env = service_env(
            f"redis://127.0.0.1:{redis_port}/0",
            workdir / "blobs",
            repo.parent,
            HDR_DEFAULT_MODEL=MODEL,
            HDR_JOB_TTL_SECONDS="3600",
        )
        api, api_port = start_service(children, env, workers, ["-m", "service", "worker"])
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=600) as client,
            redis.Redis(port=redis_port) as db,
        ):
            wait_for_workers(client, workers, 180, workdir)
            yield client, db, api.pid


def post(client: httpx.Client, files: list[bytes]) -> str:
    """Submit one bracket; retries a 503/429 after its Retry-After."""
    while True:
        response = client.post(
            "/v1/jobs",
            files=[("exposures", (f"{i}.tif", data, "image/tiff")) for i, data in enumerate(files)],
            data={"exposure_values": ",".join(str(ev) for ev in EVS)},
        )
        if response.status_code == 202:
            return str(response.json()["id"])
        if response.status_code in (429, 503):
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        raise RuntimeError(f"POST answered {response.status_code}: {response.text}")


def api_peak_rss(client: httpx.Client, api_pid: int, files: list[bytes], uploads: int) -> None:
    before = rss_bytes(api_pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(api_pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(uploads) as pool:
        ids = list(pool.map(lambda _: post(client, files), range(uploads)))
    done.set()
    sampler.join()
    for job_id in ids:  # not part of the next figure
        client.delete(f"/v1/jobs/{job_id}")
    mb = 1024 * 1024
    print(
        f"  API RSS during {uploads} concurrent {WIDTH}x{HEIGHT} uploads"
        f" ({sum(len(f) for f in files) / mb:.1f} MB each): before {before / mb:.0f} MB,"
        f" peak {peak / mb:.0f} MB"
    )


def redis_per_job(
    client: httpx.Client, db: redis.Redis, files: list[bytes], jobs: int, concurrency: int
) -> bool:
    base = int(db.info("memory")["used_memory"])
    ids: list[str] = []
    best = (0, base)  # (jobs in flight, used_memory) at the most in flight
    peak_memory = base
    stop = threading.Event()
    stream = KEYS.stream(MODEL)

    def sample() -> None:
        nonlocal best, peak_memory
        while not stop.is_set():
            memory = int(db.info("memory")["used_memory"])
            queued = int(db.zcard(KEYS.queued))
            running = 0
            if db.exists(stream):
                running = int(db.xpending(stream, GROUP)["pending"])
            peak_memory = max(peak_memory, memory)
            if queued + running > best[0]:
                best = (queued + running, memory)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        ids = list(pool.map(lambda _: post(client, files), range(jobs)))
    statuses: dict[str, str] = {}
    while len(statuses) < len(ids):
        for job_id in ids:
            if job_id in statuses:
                continue
            status = client.get(f"/v1/jobs/{job_id}").json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                statuses[job_id] = status
        time.sleep(0.5)
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    succeeded = sum(1 for s in statuses.values() if s == "succeeded")
    in_flight, memory = best
    per_job = (memory - base) / in_flight if in_flight else 0.0
    print(f"  {jobs} jobs: {succeeded} succeeded in {elapsed:.0f} s")
    print(
        f"  Redis used_memory: {base / 1024:.0f} KB before, peak {peak_memory / 1024:.0f} KB"
        f" (maxmemory 64 MB); at the most jobs in flight ({in_flight}):"
        f" {per_job / 1024:.1f} KB per job"
    )
    return succeeded == jobs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--uploads", type=int, default=8, help="concurrent uploads for RSS")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    files = bracket()
    print(f"blob store benchmark: {WIDTH}x{HEIGHT} 16-bit brackets, classical model, file store")
    with (
        tempfile.TemporaryDirectory(prefix="hdr-bench-blobs-") as tmp,
        service(Path(tmp), args.workers) as (client, db, api_pid),
    ):
        api_peak_rss(client, api_pid, files, args.uploads)
        ok = redis_per_job(client, db, files, args.jobs, args.concurrency)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
