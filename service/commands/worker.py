"""``hdr-service worker``: load the models and consume jobs; ``--check`` probes one."""

from __future__ import annotations

import argparse
import asyncio

from service.config import Settings, require_storage_url

HELP = "run a worker: load the model repository, then consume jobs (needs HDR_REDIS_URL)"

#: ``--check`` exit statuses (a Kubernetes exec probe reads them).
CHECK_OK = 0
CHECK_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when this worker's heartbeat is alive and ready, else 1 (exec probe)",
    )
    parser.add_argument(
        "--id", dest="worker_id", help="worker name (default HDR_WORKER_ID, else the host name)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_url:
        raise ValueError("HDR_REDIS_URL is not set: a worker needs the API's Redis")
    if args.worker_id:
        settings = Settings.model_validate({**settings.model_dump(), "worker_id": args.worker_id})
    if args.check:
        from service.worker.check import check_worker

        ok, line = asyncio.run(check_worker(settings))
        print(line)
        return CHECK_OK if ok else CHECK_FAILED
    require_storage_url(settings)
    from service.worker.check import live_namesake

    namesake = asyncio.run(live_namesake(settings))
    if namesake is not None:
        raise ValueError(
            f"a live worker is already named {settings.worker_id!r} (host"
            f" {namesake.get('host')}, pid {namesake.get('pid')}); give each worker its own"
            " name with HDR_WORKER_ID or --id"
        )
    from service.worker.runner import serve_worker

    return asyncio.run(serve_worker(settings))
