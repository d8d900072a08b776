"""Queue throughput: jobs per second through API, Redis and workers, with a zero-cost model.

The model is replaced by :class:`ZeroEngine` (defined here, registered only in this
script's worker processes), so what is measured is the service around the model: HTTP
upload and validation, Redis Streams hand-out, decode, tiling and blending, EXR encode,
result storage and acks. Every process is the real one: ``hdr-service api`` and
``hdr-service worker`` subprocesses against one Redis, jobs submitted over HTTP by a
pool of client threads.

Two figures:

- **end to end**: N jobs (three 64x48 16-bit TIFFs each) submitted concurrently; time from
  the first POST to the last job succeeded, for 1 and 2 workers;
- **API intake only**: the same POSTs with no worker running, until all are queued;
- **broker only**: submit -> receive -> start -> complete in one process, no HTTP, no
  images: the ceiling the queue itself sets.

Usage (Redis from HDR_REDIS_URL, default redis://127.0.0.1:6379/15; keys under a fresh
prefix, deleted afterwards)::

    python -m benchmarks.queue_throughput --jobs 200 --workers 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import tifffile

from benchmarks.processes import (
    processes,
    service_env,
    start_service,
    wait_for_workers,
)
from service.config import Settings
from service.engines.base import TileBatch
from service.engines.registry import BACKENDS, ServingConfig
from service.model_repo import ModelSpec
from service.queue import Broker, Keys, connect
from service.queue.jobs import JobParams, StageTimings
from service.storage import result_name
from service.storage.file import FileStore

DEFAULT_REDIS = "redis://127.0.0.1:6379/15"
ZERO_MODEL = "zero"


class ZeroEngine:
    """The zero-cost model: each tile's reference (middle) exposure, as linear floats.

    No network and no preprocessing, only a cast; but an image with real content, so that
    encoding and storing the result cost what they cost for a real one (an all-black EXR
    would compress to nothing).
    """

    backend = "zero"
    device = "cpu"
    precision = "fp32"
    batch_invariant = True

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        """Nothing to warm."""

    def run(self, batch: TileBatch) -> np.ndarray:
        reference = batch.frames[:, 1].transpose(0, 3, 1, 2)  # (B, 3, h, w) uint16
        return reference.astype(np.float32) * np.float32(1 / 65536)


def _zero_factory(_spec: ModelSpec, _serving: ServingConfig, _settings: Settings) -> ZeroEngine:
    return ZeroEngine()


def install_zero_backend() -> None:
    """Register the zero engine for the ``bench-zero`` architecture (this process only)."""
    BACKENDS[("bench-zero", "zero")] = _zero_factory


def write_zero_model(repo: Path, tile_size: int = 256) -> None:
    """A model folder served by the zero engine (an empty weights file: it needs none)."""
    folder = repo / ZERO_MODEL
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.pth").write_bytes(b"")
    (folder / "config.yaml").write_text(
        "architecture: bench-zero\nbackends: [zero]\n"
        f"tiling:\n  tile_size: {tile_size}\n  overlap: 32\n  batch: 2\n"
    )


def tiff(frame: np.ndarray) -> bytes:
    stream = io.BytesIO()
    tifffile.imwrite(stream, frame, photometric="rgb")
    return stream.getvalue()


def bracket(height: int, width: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Three 16-bit exposures of one random scene, EV -2, 0, +2."""
    rng = np.random.default_rng(seed)
    radiance = rng.random((height, width, 3)) * 0.6 + 0.02
    frames = []
    for ev in (-2, 0, 2):
        ldr = np.clip(radiance * 2.0**ev, 0, 1) ** (1 / 2.2)
        frames.append((f"ev{ev:+d}.tif", tiff(np.round(ldr * 65535).astype(np.uint16))))
    return frames


@contextlib.contextmanager
def running_service(
    redis_url: str,
    repo: Path,
    workers: int,
    extra_env: dict[str, str] | None = None,
    log_dir: Path | None = None,
) -> Iterator[tuple[httpx.Client, str]]:
    """API and ``workers`` worker subprocesses on a fresh key prefix; yields a client."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="hdr-bench-"))
    env = service_env(
        redis_url, log_dir / "blobs", repo, HDR_KEY_PREFIX=prefix, **(extra_env or {})
    )
    try:
        with processes(log_dir) as children:
            worker = ["-m", "benchmarks.queue_throughput", "_worker"]
            _api, port = start_service(children, env, workers, worker)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
                wait_for_workers(client, workers, 300, log_dir)
                yield client, prefix
    finally:
        purge(redis_url, prefix)


def purge(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        client = connect(redis_url)
        keys = [k async for k in client.scan_iter(match=Keys(prefix).all_keys_pattern())]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    asyncio.run(run())


def submit(client: httpx.Client, uploads: list[tuple[str, bytes]], model: str | None = None) -> str:
    data = {"exposure_values": "-2,0,2"} | ({"model": model} if model else {})
    response = client.post(
        "/v1/jobs", files=[("exposures", upload) for upload in uploads], data=data
    )
    response.raise_for_status()
    return str(response.json()["id"])


def wait_done(client: httpx.Client, job_id: str, interval: float = 0.01) -> dict:
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            return dict(job)
        time.sleep(interval)


def end_to_end(redis_url: str, jobs: int, workers: int, concurrency: int) -> float:
    """Jobs per second, first POST to last success, with ``workers`` zero-cost workers.

    With no worker, only the intake is timed: POSTs until all are queued.
    """
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        write_zero_model(repo)
        uploads = bracket(48, 64)
        with running_service(redis_url, repo, workers) as (client, _prefix):
            submit(client, uploads, ZERO_MODEL)  # untimed: connections and caches warm
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                ids = list(pool.map(lambda _: submit(client, uploads, ZERO_MODEL), range(jobs)))
                if workers:
                    list(pool.map(lambda job_id: wait_done(client, job_id, 0.05), ids))
            elapsed = time.perf_counter() - started
    return jobs / elapsed


def broker_only(redis_url: str, jobs: int, models: int = 1) -> float:
    """Jobs per second of submit + receive + start + complete alone (one process).

    ``models`` > 1: the jobs alternate between that many models' streams and the one
    consumer serves them all (each receive looks at every stream: the cost of routing).
    """
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_url, key_prefix=prefix, max_queue_length=jobs + 10)
    names = [settings.default_model] + [f"model{i}" for i in range(1, models)]

    params = JobParams(exposure_values=(-2.0, 0.0, 2.0), names=("a", "b", "c"))

    async def run(blob_dir: Path) -> float:
        client = connect(redis_url)
        broker = Broker(client, settings, FileStore(blob_dir, fsync=False))
        await broker.ensure_group(names)
        blobs = [b"x" * 1000] * 3
        try:
            started = time.perf_counter()
            for i in range(jobs):
                await broker.submit(params, blobs, model=names[i % len(names)])
            for _ in range(jobs):
                delivery = await broker.receive("bench", block_ms=0, models=names)
                assert delivery is not None
                await broker.start(delivery, "bench", "zero")
                broker.store.put(result_name(delivery.job_id), b"result")
                await broker.complete(delivery, StageTimings(inference=0.0), 1, 1)
            return jobs / (time.perf_counter() - started)
        finally:
            await client.aclose()

    try:
        with tempfile.TemporaryDirectory(prefix="hdr-bench-blobs-") as blob_dir:
            return asyncio.run(run(Path(blob_dir)))
    finally:
        purge(redis_url, prefix)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--redis-url", default=os.environ.get("HDR_REDIS_URL", DEFAULT_REDIS))
    args = parser.parse_args(argv)

    print(f"queue throughput, zero-cost model, {args.jobs} jobs of 3 x 64x48 16-bit TIFF")
    rate = broker_only(args.redis_url, 1000)
    print(f"  {'broker only (one process, no HTTP, no images):':47s} {rate:8.1f} jobs/s")
    rate = broker_only(args.redis_url, 1000, models=2)
    print(f"  {'  the same, jobs of 2 models, one consumer:':47s} {rate:8.1f} jobs/s")
    rate = end_to_end(args.redis_url, args.jobs, 0, args.concurrency)
    print(f"  {'API intake only (POSTs queued, no worker):':47s} {rate:8.1f} jobs/s")
    for workers in args.workers:
        rate = end_to_end(args.redis_url, args.jobs, workers, args.concurrency)
        label = f"end to end, {workers} worker(s), {args.concurrency} client threads:"
        print(f"  {label:47s} {rate:8.1f} jobs/s")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        from service.cli import main as cli_main

        install_zero_backend()
        sys.exit(cli_main(["worker"]))
    sys.exit(main())
