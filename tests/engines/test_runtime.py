"""Process tuning: the CPU count comes from the affinity mask and the cgroup quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.cpus import usable_cpus
from service.engines.runtime import tune_cpu_threads

AFFINITY = len(os.sched_getaffinity(0))


def _v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: int, period: int) -> Path:
    folder = root / "cpu"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


def test_a_v2_quota_of_one_and_a_half_cpus_gives_two_threads_at_most(tmp_path: Path) -> None:
    root = _v2(tmp_path, "150000 100000\n")
    assert usable_cpus(root) == min(2, AFFINITY)


def test_a_v2_quota_below_one_cpu_still_gives_one_thread(tmp_path: Path) -> None:
    assert usable_cpus(_v2(tmp_path, "20000 100000\n")) == 1


def test_no_v2_quota_leaves_the_affinity_mask(tmp_path: Path) -> None:
    assert usable_cpus(_v2(tmp_path, "max 100000\n")) == AFFINITY


def test_a_v1_quota_caps_the_count(tmp_path: Path) -> None:
    assert usable_cpus(_v1(tmp_path, 100000, 100000)) == 1


def test_a_v1_quota_of_minus_one_means_no_limit(tmp_path: Path) -> None:
    assert usable_cpus(_v1(tmp_path, -1, 100000)) == AFFINITY


def test_no_cgroup_files_leave_the_affinity_mask(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path / "absent") == AFFINITY


def test_garbage_in_cpu_max_is_ignored(tmp_path: Path) -> None:
    assert usable_cpus(_v2(tmp_path, "lots\n")) == AFFINITY


def test_tuning_sets_the_openmp_pool_unless_the_operator_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _v2(tmp_path, "100000 100000\n")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert tune_cpu_threads(root) == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert tune_cpu_threads(root) == 3
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
