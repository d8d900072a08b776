"""Process-level tuning for inference, applied once at start-up, never at import."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

from service.cpus import CGROUP_ROOT, usable_cpus

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ONE_GIB = 1 << 30

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
