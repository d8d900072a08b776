"""How many CPUs this process may keep busy: what every thread pool of the service is
sized to (torch's OpenMP pool, ONNX Runtime's, OpenEXR's), in one place below the
packages that use it (imaging must not import engines)."""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Where the process's cgroup is visible (its own root inside a container).
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_limit(root: Path) -> float | None:
    """CPUs the cgroup quota allows (``quota / period``), or None where there is no quota.

    cgroup v2 writes ``"<quota> <period>"`` or ``"max <period>"`` in ``cpu.max``; v1 keeps
    ``cpu.cfs_quota_us`` (-1: none) and ``cpu.cfs_period_us`` under the ``cpu`` controller.
    """
    try:
        quota_text, _, period_text = (root / "cpu.max").read_text().strip().partition(" ")
        if quota_text == "max":
            return None
        return int(quota_text) / int(period_text or 100_000)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    for controller in ("cpu", "cpu,cpuacct"):
        folder = root / controller
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """How many CPUs this process may keep busy: its affinity mask, capped by the cgroup's
    CPU quota rounded up.

    ``os.cpu_count()`` is the host's count: in a container limited to 2 CPUs on a 64-core
    host, 64 OpenMP threads share 2 CPUs' worth of time slices and each parallel op waits
    for the slowest thread to be scheduled again.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)
