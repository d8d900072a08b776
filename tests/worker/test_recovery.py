"""Real worker processes dying and stopping: nothing is lost, nothing runs twice.

Each worker here is the real ``hdr-service worker`` CLI in a subprocess (the launcher
only registers the test engines' backends). Jobs are queued through the broker the way
the API queues them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.config import Settings
from service.engines.tiling import TilePlan
from service.imaging import decode_exr
from service.queue import Broker, JobState
from service.storage import job_prefix, result_name
from service.worker.runner import EXIT_ENGINE_FAULT, EXIT_OK
from tests.factories import REPO, bracket_uploads, job_params, write_model_repo
from tests.worker import engines
from tests.worker.harness import api_server, until, worker_env, worker_process

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def submit(
    broker: Broker, uploads: list[tuple[str, bytes]], model: str | None = None, **params: Any
) -> str:
    record = await broker.submit(
        job_params(uploads, **params), [data for _, data in uploads], model=model
    )
    return record.id


async def ready_workers(broker: Broker, ids: set[str], timeout: float = 90) -> dict[str, Any]:
    """Wait until every worker of ``ids`` has a live, ready heartbeat; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        beats = {b["worker_id"]: b for b in await broker.live_workers() if b.get("ready")}
        if ids <= set(beats):
            return beats
        assert time.monotonic() < deadline, f"workers not ready: {ids - set(beats)}"
        await anyio.sleep(0.2)


def wait_exit(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    return process.wait(timeout)


async def test_job_of_a_worker_killed_mid_job_completes_on_another_exactly_once(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    repo = write_model_repo(tmp_path / "repo", tile_size=64, overlap=8, batch=1)
    settings = service_settings.model_copy(
        update={"model_repo": repo, "visibility_timeout_seconds": 2.0}
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with (
        worker_process(worker_env(settings, HDR_WORKER_ID="w-a"), tmp_path / "a.log") as a,
        worker_process(worker_env(settings, HDR_WORKER_ID="w-b"), tmp_path / "b.log") as b,
    ):
        procs = {"w-a": a, "w-b": b}
        beats = await ready_workers(broker, set(procs))
        job_id = await submit(broker, bracket_uploads(128, 192))  # 12 tiles of 64 px
        running = await until(broker, job_id, lambda r: r.tiles_done >= 2, timeout=90, interval=0.1)
        victim = running.worker
        assert victim in procs
        procs[victim].send_signal(signal.SIGKILL)
        assert wait_exit(procs[victim]) == -signal.SIGKILL

        # The survivor reruns all 12 tiles: on a 2-core machine under a load of 12 it had
        # done 6 after 90 s, so wait as long as the test timeout allows.
        record = await until(broker, job_id, lambda r: r.status.is_final, timeout=300, interval=0.1)
        survivor = next(w for w in procs if w != victim)
        metrics = httpx.get(f"http://127.0.0.1:{beats[survivor]['metrics_port']}/metrics").text

    assert record.status is JobState.SUCCEEDED, record
    assert record.worker == survivor and record.attempts == 2
    assert record.tiles_done == record.tiles_total == 12
    assert decode_exr(broker.store.read(result_name(job_id))).shape == (128, 192, 3)
    # Exactly one result, and the uploads went once it was stored.
    assert [b.name for b in broker.store.list(job_prefix(job_id))] == [result_name(job_id)]
    assert 'hdr_jobs_total{outcome="succeeded"} 1.0' in metrics
    # Nothing left behind: no pending entry, nothing queued, nothing dead-lettered.
    assert await broker.running_count() == 0
    assert await broker.queue_depth() == 0
    assert await broker.dead_letter_depth() == 0
    assert await broker.redis.xlen(broker.keys.stream(broker.settings.default_model)) == 0


async def test_engine_fault_exits_non_zero_and_the_job_survives(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    engines.write_test_model(repo, "faulty", "test-fault-once")
    marker = tmp_path / "fault-once"
    marker.touch()
    settings = service_settings.model_copy(update={"model_repo": repo})
    env = worker_env(settings, HDR_WORKER_ID="w-fault", TEST_ENGINE_FAULT_MARKER=str(marker))

    with worker_process(env, tmp_path / "first.log") as first:
        await ready_workers(broker, {"w-fault"})
        job_id = await submit(broker, bracket_uploads(), model="faulty")
        assert wait_exit(first) == EXIT_ENGINE_FAULT
    record = await broker.get(job_id)
    assert record is not None and record.status is JobState.QUEUED and record.attempts == 1
    assert record.error is not None and "engine fault" in record.error
    assert engines.CUDA_FAULT in record.error
    assert "engine fault" in (tmp_path / "first.log").read_text()

    with worker_process(env, tmp_path / "restarted.log"):  # what a supervisor does
        done = await until(broker, job_id, lambda r: r.status.is_final, timeout=90, interval=0.1)
    assert done.status is JobState.SUCCEEDED and done.attempts == 2


async def test_sigterm_hands_an_unfinished_job_back_and_exits_zero(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    engines.write_test_model(repo, "slow", "test-reference")
    settings = service_settings.model_copy(update={"model_repo": repo, "drain_seconds": 0.5})
    env = worker_env(settings, HDR_WORKER_ID="w-drain", TEST_ENGINE_DELAY="0.3")

    with worker_process(env, tmp_path / "worker.log") as process:
        await ready_workers(broker, {"w-drain"})
        job_id = await submit(broker, bracket_uploads(128, 128), "slow", tile_size=32)  # 25 tiles
        await until(broker, job_id, lambda r: r.tiles_done >= 1, timeout=90, interval=0.1)
        process.send_signal(signal.SIGTERM)
        assert wait_exit(process) == EXIT_OK

    record = await broker.get(job_id)
    assert record is not None and record.status is JobState.QUEUED
    assert record.attempts == 0  # handed back: the interrupted attempt is not spent
    assert await broker.queue_depth() == 1
    assert not [b for b in await broker.live_workers() if b["worker_id"] == "w-drain"]
    assert "handed back" in (tmp_path / "worker.log").read_text()


async def test_drain_ends_at_its_deadline_from_the_signal_even_mid_tile_batch(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    """Tile batches of 4 s and a 1 s drain: the worker hands the job back and exits about
    1 s after SIGTERM, not at the end of the batch it is in (issue 12: a 25 s drain
    exited 36 s after the signal, and ``serve`` SIGKILLs at drain + 10 s)."""
    repo = tmp_path / "repo"
    engines.write_test_model(repo, "slow", "test-reference")
    drain, batch_seconds = 1.0, 4.0
    settings = service_settings.model_copy(update={"model_repo": repo, "drain_seconds": drain})
    env = worker_env(settings, HDR_WORKER_ID="w-deadline", TEST_ENGINE_DELAY=str(batch_seconds))

    with worker_process(env, tmp_path / "worker.log") as process:
        await ready_workers(broker, {"w-deadline"})
        job_id = await submit(broker, bracket_uploads(128, 128), "slow", tile_size=32)
        # Just after a batch ended: the next one has (almost) all of its 4 s to go.
        await until(broker, job_id, lambda r: r.tiles_done >= 1, timeout=90, interval=0.05)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert wait_exit(process) == EXIT_OK
        took = time.monotonic() - signalled

    assert took < drain + 2.0 < batch_seconds, f"exited {took:.2f} s after SIGTERM"
    record = await broker.get(job_id)
    assert record is not None and record.status is JobState.QUEUED
    assert record.attempts == 0 and record.tiles_done == 0  # handed back, not spent
    assert "handed back" in (tmp_path / "worker.log").read_text()


def check(settings: Settings, worker_id: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(settings, HDR_WORKER_ID=worker_id)
    return subprocess.run(
        [sys.executable, "-m", "service", "worker", "--check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_worker_check_exits_zero_only_while_that_worker_is_ready(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    engines.write_test_model(repo, "quick", "test-reference")
    settings = service_settings.model_copy(update={"model_repo": repo})

    with worker_process(worker_env(settings, HDR_WORKER_ID="w-probe"), tmp_path / "w.log") as w:
        await ready_workers(broker, {"w-probe"})
        alive = check(settings, "w-probe")
        other = check(settings, "w-nobody")
        w.send_signal(signal.SIGTERM)
        assert wait_exit(w) == EXIT_OK
    gone = check(settings, "w-probe")

    assert alive.returncode == 0, alive.stdout + alive.stderr
    assert "ready" in alive.stdout and "quick" in alive.stdout
    assert other.returncode == 1 and "no live heartbeat" in other.stdout
    assert gone.returncode == 1


async def test_heartbeat_announces_models_and_health_port(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    engines.write_test_model(repo, "quick", "test-reference")
    (repo / "afunet").mkdir()  # no weights: must be reported, not fatal
    settings = service_settings.model_copy(update={"model_repo": repo})
    with worker_process(worker_env(settings, HDR_WORKER_ID="w-beat"), tmp_path / "w.log"):
        beat = (await ready_workers(broker, {"w-beat"}))["w-beat"]
        port = beat["metrics_port"]
        ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready")
        live = httpx.get(f"http://127.0.0.1:{port}/healthz")

    assert beat["state"] == "ready" and beat["default_model"] == "quick"
    assert beat["models"]["quick"]["ready"] and beat["models"]["quick"]["backend"] == "test"
    assert "model.pth" in beat["unavailable"]["afunet"]
    assert beat["pid"] != os.getpid()
    assert ready.status_code == 200 and live.status_code == 200
    assert json.loads(ready.text)["status"] == "ready"


async def test_worker_announces_and_serves_the_tile_variables_it_was_started_with(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    """Set variables win over config.yaml (64 px tiles, overlap 8, batch 1) in what the
    worker runs, what its heartbeat says and what GET /v1/models shows."""
    repo = tmp_path / "repo"
    engines.write_test_model(repo, "quick", "test-reference", tile_size=64)
    settings = service_settings.model_copy(update={"model_repo": repo})
    env = worker_env(settings, HDR_WORKER_ID="w-env", HDR_TILE_SIZE="96", HDR_TILE_BATCH="2")
    with worker_process(env, tmp_path / "w.log"), api_server(settings) as url:
        beat = (await ready_workers(broker, {"w-env"}))["w-env"]
        listed = httpx.get(f"{url}/v1/models").json()["models"]
        job_id = await submit(broker, bracket_uploads(128, 192), model="quick")
        record = await until(broker, job_id, lambda r: r.status.is_final, timeout=60)

    announced = beat["models"]["quick"]
    assert (announced["tile_size"], announced["tile_overlap"], announced["tile_batch"]) == (
        96,
        8,
        2,
    )
    assert announced["sources"] == {
        "engine": "config",
        "precision": "default",
        "tile_size": "environment",
        "tile_overlap": "config",
        "tile_batch": "environment",
    }
    (shown,) = [m for m in listed if m["name"] == "quick"]
    assert shown["tile_size"] == 96 and shown["sources"] == announced["sources"]
    assert record.status is JobState.SUCCEEDED
    assert record.tiles_total == len(TilePlan.build(128, 192, 96, 8)) != 12  # 64 px: 12


async def test_worker_is_not_ready_until_its_models_are_warm(
    broker: Broker, service_settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    engines.write_test_model(repo, "sluggish", "test-reference")
    settings = service_settings.model_copy(update={"model_repo": repo})
    env = worker_env(settings, HDR_WORKER_ID="w-warm", TEST_ENGINE_DELAY="3")  # a slow warm-up

    with worker_process(env, tmp_path / "w.log"):
        deadline = time.monotonic() + 60
        while not (beats := [b for b in await broker.live_workers() if b["worker_id"] == "w-warm"]):
            assert time.monotonic() < deadline, "no heartbeat"
            await anyio.sleep(0.1)
        (loading,) = beats
        port = loading["metrics_port"]
        while_loading = httpx.get(f"http://127.0.0.1:{port}/readyz")
        probe_while_loading = check(settings, "w-warm")
        await ready_workers(broker, {"w-warm"})
        once_warm = httpx.get(f"http://127.0.0.1:{port}/readyz")

    assert loading["state"] == "loading" and not loading["ready"]
    assert while_loading.status_code == 503
    assert while_loading.json()["error"]["code"] == "not_ready"
    assert probe_while_loading.returncode == 1 and "not ready" in probe_while_loading.stdout
    assert once_warm.status_code == 200
