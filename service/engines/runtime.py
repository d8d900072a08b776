"""Process-level tuning for inference, applied once at start-up, never at import."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ONE_GIB = 1 << 30

#: Where the process's cgroup is visible (its own root inside a container).
CGROUP_ROOT = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")
#: CPU flags of native bf16 arithmetic: AVX-512 BF16 dot products, AMX tiles.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its current program.

    Read from ``VmHWM`` on Linux: ``getrusage``'s ``ru_maxrss`` survives ``execve``, so a
    child spawned by a big parent would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def keep_freed_memory() -> bool:
    """Stop glibc from handing large freed blocks back to the kernel.

    Every activation of a 256-pixel tile is tens of MB; by default glibc serves those
    with fresh ``mmap``s and unmaps them on free, so each op first page-faults its output
    in, zero-filled. Keeping freed memory in the heap made a CPU forward about 20 % faster
    here (see README, Benchmarks). Peak RSS is unchanged: memory is reused, not grown.
    Returns whether the allocator accepted the settings (False off glibc).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _ONE_GIB) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2 * _ONE_GIB) == 1 and ok
    except (OSError, AttributeError):
        return False
    log.debug("glibc mallopt applied: %s", ok)
    return ok


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


def tune_cpu_threads(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Size the OpenMP pool (torch, oneDNN, MKL) to :func:`usable_cpus`, with idle threads
    that sleep instead of spinning; returns the thread count in force.

    Must run before ``torch`` is imported: OpenMP reads its environment once, when the
    library loads. Variables already set by the operator win. ``OMP_WAIT_POLICY=PASSIVE``
    because a spinning OpenMP thread burns the time slice that its sibling (or another
    process on a shared or quota-limited machine) needs: under load, a 100x72 ``infer``
    took 2.9x the CPU time with spinning threads (see README, Start-up).
    """
    cpus = usable_cpus(cgroup_root)
    os.environ.setdefault("OMP_NUM_THREADS", str(cpus))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        threads = int(os.environ["OMP_NUM_THREADS"])
    except ValueError:
        threads = cpus
    log.debug("OpenMP threads: %d, wait policy %s", threads, os.environ["OMP_WAIT_POLICY"])
    return threads


def native_bf16_cpu(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), per ``/proc/cpuinfo``.

    Elsewhere oneDNN emulates bf16 matmuls with fp32 instructions plus conversions, slower
    than fp32 itself, so reduced precision only pays on these CPUs.
    """
    try:
        with open(cpuinfo) as info:
            for line in info:
                if line.startswith("flags"):
                    return not BF16_FLAGS.isdisjoint(line.split(":", 1)[-1].split())
    except OSError:
        pass
    return False
