"""End-to-end latency of one job, split by stage, and the API's overhead per job.

Real processes (``hdr-service api`` and one ``hdr-service worker``, subprocesses on one
Redis), a client that uploads over HTTP, polls the job every 5 ms and downloads the
float32 EXR. Two cases:

- **golden**: the golden case (three 100x72 16-bit TIFFs) on the golden AFUNet checkpoint,
  with the shipped tiling (256 px tiles, batch 2; the frame is one tile);
- **1000x1500**: three 1000x1500 16-bit TIFFs (9 MB each). ``--large-model zero`` (the
  default) runs them on the zero-cost engine of ``queue_throughput.py``, so the figure is
  the service's own cost; ``--large-model afunet`` runs the real model (minutes on a CPU).

The API's overhead per job is end-to-end minus the worker's inference stage: upload,
validation, storing the uploads in Redis, queue hand-out, decode, EXR encode, storing
the result, and the download.

Usage (Redis from HDR_REDIS_URL, default redis://127.0.0.1:6379/15)::

    python -m benchmarks.service_latency --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from benchmarks.child import REPO
from benchmarks.queue_throughput import (
    DEFAULT_REDIS,
    bracket,
    running_service,
    write_zero_model,
)

GOLDEN = Path(os.environ.get("HDR_GOLDEN_DIR", REPO.parent / "shared" / "golden")) / "afunet-seed0"
STAGES = ("queue_wait", "decode", "inference", "encode")


def write_afunet(repo: Path) -> None:
    """afunet/1/model.pth -> the golden checkpoint, with the shipped config.yaml."""
    folder = repo / "afunet"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.pth").symlink_to(
        Path(os.environ.get("HDR_GOLDEN_DIR", GOLDEN.parent)) / "afunet-seed0" / "checkpoint.pth"
    )
    (folder / "config.yaml").write_text(
        (REPO / "model_repo" / "afunet" / "config.yaml").read_text()
    )


def one_job(client: httpx.Client, uploads: list[tuple[str, bytes]], model: str) -> dict[str, float]:
    """Submit, poll every 5 ms, download; seconds per step and per server-side stage."""
    began = time.perf_counter()
    response = client.post(
        "/v1/jobs",
        files=[("exposures", upload) for upload in uploads],
        data={"exposure_values": "-2,0,2", "model": model},
    )
    response.raise_for_status()
    posted = time.perf_counter()
    job = response.json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.005)
        job = client.get(job["status_url"]).json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job['error']}")
    finished = time.perf_counter()
    result = client.get(job["result_url"], params={"format": "exr", "dtype": "float32"})
    result.raise_for_status()
    done = time.perf_counter()
    return {
        "end_to_end": done - began,
        "post": posted - began,
        "wait": finished - posted,
        **{stage: float(job["timings"][stage]) for stage in STAGES},
        "download": done - finished,
        "api_overhead": done - began - float(job["timings"]["inference"]),
        "result_mb": len(result.content) / 1e6,
    }


#: What each figure is, as printed.
LABELS = {
    "end_to_end": "end to end (client: POST sent -> result downloaded)",
    "post": "  POST: upload, validation, uploads stored in Redis",
    "wait": "  POST answered -> client sees succeeded (5 ms polls)",
    "queue_wait": "    worker: queue wait (from acceptance; overlaps POST)",
    "decode": "    worker: fetch uploads + decode",
    "inference": "    worker: inference (preprocess, tiles, blend)",
    "encode": "    worker: encode float32 EXR",
    "download": "  GET result (float32 EXR, as stored)",
    "api_overhead": "API overhead = end to end - inference",
}


def report(title: str, runs: list[dict[str, float]]) -> None:
    print(f"{title}: median of {len(runs)} runs, seconds (min..max)")
    for key, label in LABELS.items():
        values = [run[key] for run in runs]
        median = statistics.median(values)
        print(f"  {label:55s} {median:8.4f}  ({min(values):.4f}..{max(values):.4f})")
    print(f"  result size: {runs[0]['result_mb']:.2f} MB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--large-runs", type=int, default=3)
    parser.add_argument("--large-model", choices=("zero", "afunet"), default="zero")
    parser.add_argument("--redis-url", default=os.environ.get("HDR_REDIS_URL", DEFAULT_REDIS))
    args = parser.parse_args(argv)

    golden = [(p.name, p.read_bytes()) for p in sorted(GOLDEN.glob("input_*.tif"))]
    large = bracket(1000, 1500)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        write_afunet(repo)
        write_zero_model(repo)
        with running_service(args.redis_url, repo, workers=1) as (client, _prefix):
            one_job(client, golden, "afunet")  # warm: first request, first job
            report(
                "golden 100x72 on AFUNet",
                [one_job(client, golden, "afunet") for _ in range(args.runs)],
            )
            one_job(client, large, args.large_model)
            runs = [one_job(client, large, args.large_model) for _ in range(args.large_runs)]
            upload_mb = sum(len(data) for _, data in large) / 1e6
            report(f"1000x1500 16-bit ({upload_mb:.0f} MB upload) on {args.large_model}", runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
