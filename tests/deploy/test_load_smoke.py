"""CI smoke run of the load test: locust, headless, for 20 s against ``hdr-service serve``.

The service runs for real on loopback (API and worker processes, the test Redis, the
weight-free ``classical`` model, frames of at most 128 pixels); locust runs the CI
profile (load_tests/ci.conf) with its whole task mix: async jobs, sync jobs, and bad
uploads that must be refused with the contract's 4xx. Any failure fails the test.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.queue import Keys
from tests.deploy.deployfiles import REPO, tool
from tests.worker.harness import serving, wait_for

pytestmark = pytest.mark.slow

LOCUST_CONFIG = REPO / "load_tests" / "ci.conf"
RUN_SECONDS = 20


def _purge(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=Keys(prefix).all_keys_pattern(), count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def served(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[str]:
    """``hdr-service serve`` with the classical model on a free port; yields its URL."""
    repo = tmp_path / "model_repo"
    (repo / "classical").mkdir(parents=True)
    shutil.copy(REPO / "model_repo" / "classical" / "config.yaml", repo / "classical")
    env = {
        "HDR_REDIS_URL": redis_url,
        "HDR_KEY_PREFIX": key_prefix,
        "HDR_DEFAULT_MODEL": "classical",
        "HDR_DEVICE": "cpu",
        "HDR_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "HDR_DRAIN_SECONDS": "5",
    }
    log = tmp_path / "serve.log"
    _purge(redis_url, key_prefix)
    try:
        with serving(repo, log, stop_timeout=30, **env) as (client, process):

            def workers_ready() -> bool:
                assert process.poll() is None, log.read_text()
                try:
                    ready = client.get("/readyz", timeout=2).json()
                except (httpx.HTTPError, ValueError):
                    return False
                return bool(ready.get("checks", {}).get("workers_ready"))

            wait_for(workers_ready, 60, "serve to report a ready worker", interval=0.2)
            yield str(client.base_url).rstrip("/")
    finally:
        _purge(redis_url, key_prefix)


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def test_locust_ci_profile_runs_without_unexpected_failures(served: str, tmp_path: Path) -> None:
    locust = tool("locust") or pytest.skip("locust is not installed")
    prefix = tmp_path / "smoke"
    command = [locust, "--config", str(LOCUST_CONFIG), "--host", served]
    command += ["--run-time", f"{RUN_SECONDS}s", "--csv", str(prefix), "--loglevel", "WARNING"]
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS + 90,
        check=False,
    )
    output = result.stdout[-4000:] + result.stderr[-4000:]
    rows = _rows(Path(f"{prefix}_stats.csv"))
    total = rows[("", "Aggregated")]
    assert int(total["Failure Count"]) == 0, output
    assert result.returncode == 0, output
    jobs = {name: row for (kind, name), row in rows.items() if kind == "JOB"}
    assert {name.split()[1] for name in jobs} == {"async", "sync"}, sorted(jobs)
    assert sum(int(row["Request Count"]) for row in jobs.values()) >= 20, output
    refusals = [name for (_, name) in rows if name.startswith("/v1/jobs (bad:")]
    assert refusals, "no bad upload was sent"
    # Every size of the CI profile was served (frames of at most 128 px).
    sizes = {name.split()[2] for name in jobs}
    assert sizes <= {"64x64", "96x128", "128x128"} and len(sizes) >= 2
