"""The one child-process harness the benchmarks share (a fresh interpreter per
measurement), and the whole-process timing of ``benchmarks.infer_process``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.child import ChildFailed, run_in_child
from benchmarks.infer_process import _run_infer
from tests.factories import GOLDEN_CHECKPOINT, GOLDEN_SEED0, REPO


def test_a_child_returns_what_its_function_returns() -> None:
    # json.loads is a real module:function that returns a dict: no test double needed.
    assert run_in_child("json:loads", {"s": '{"peak_rss_bytes": 1}'}) == {"peak_rss_bytes": 1}


def test_a_failing_child_reports_its_exception() -> None:
    with pytest.raises(ChildFailed, match="JSONDecodeError"):
        run_in_child("json:loads", {"s": "not json"})


def test_a_child_past_its_time_is_stopped() -> None:
    with pytest.raises(ChildFailed, match="timed out after 1 s"):
        run_in_child("signal:pause", {}, timeout=1)  # waits for a signal that never comes


def test_the_infer_process_is_timed_with_the_inference_time_it_prints(tmp_path: Path) -> None:
    wall, cpu, inference = _run_infer(
        GOLDEN_SEED0, GOLDEN_CHECKPOINT, tmp_path / "out.exr", timeout=300
    )
    assert (tmp_path / "out.exr").stat().st_size > 0
    assert 0 < inference < wall
    assert cpu > 0


def run_worker_throughput(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The worker benchmark as a process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.worker_throughput", *args],
        cwd=REPO,
        timeout=timeout,
        capture_output=True,
        text=True,
    )


def worker_throughput(args: list[str], out: Path) -> dict:
    """Run the worker benchmark; its JSON figures (its output in the failure otherwise)."""
    done = run_worker_throughput(args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads(out.read_text()))


@pytest.mark.slow
def test_worker_throughput_quick_run_writes_every_figure(redis_url: str, tmp_path: Path) -> None:
    """The worker benchmark end to end at toy size (figures are checked for shape and
    sense, not speed: this machine is shared)."""
    out = tmp_path / "worker.json"
    args = ["--quick", "--prefetch", "0", "1", "--json", str(out), "--redis-url", redis_url]
    figures = worker_throughput(args, out)
    assert figures["engine_seconds"] == 0.05
    assert [run["prefetch"] for run in figures["runs"]] == [0, 1]
    for run in figures["runs"]:
        assert run["jobs_per_s"] > 0
        assert 0 < run["engine_busy"] <= 1.05  # engine time over wall time, timer jitter
    small = figures["small_jobs"]
    assert small["engine_calls_solo"] == 4  # one tile each, nothing packed
    assert 1 <= small["engine_calls_batched"] <= small["engine_calls_solo"]


@pytest.mark.slow
def test_worker_throughput_runs_the_real_afunet_engine(tmp_path: Path) -> None:
    """gpu_check.sh's worker step (AFUNet through the real worker path, a private Redis)
    at toy size on the CPU: the same code path as on CUDA at 1000x1500."""
    out = tmp_path / "worker.json"
    args = [
        *("--model", "afunet", "--checkpoint", str(GOLDEN_CHECKPOINT), "--device", "cpu"),
        *("--backend", "torch", "--precision", "fp32", "--size", "96x64"),
        *("--tile-size", "64", "--tile-overlap", "16", "--tile-batch", "2"),
        *("--jobs", "3", "--prefetch", "0", "1", "--small-jobs", "0"),
        *("--redis-url", "embedded", "--json", str(out)),
    ]
    figures = worker_throughput(args, out)
    assert figures["engine_seconds"] is None  # no stand-in: the engine's own time
    assert figures["model"]["name"] == "afunet" and figures["size"] == [96, 64]
    assert [run["prefetch"] for run in figures["runs"]] == [0, 1]
    for run in figures["runs"]:
        assert run["jobs_per_s"] > 0
        assert 0 < run["engine_busy"] <= 1.05
        assert run["engine_seconds_per_job"] > 0


def test_worker_throughput_fails_at_once_when_the_worker_cannot_load_its_model(
    tmp_path: Path,
) -> None:
    """A checkpoint the worker cannot load ends the run with the worker's reason, not
    a wait for jobs that never run (gpu_check.sh would only see its timeout)."""
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    args = [
        *("--model", "afunet", "--checkpoint", str(bad), "--size", "96x64"),
        *("--tile-size", "64", "--tile-overlap", "16", "--jobs", "1", "--prefetch", "0"),
        *("--small-jobs", "0", "--redis-url", "embedded"),
    ]
    done = run_worker_throughput(args, timeout=120)
    assert done.returncode != 0
    assert "the worker serves no model (afunet: checkpoint" in done.stderr
