"""OpenEXR results: the linear HDR image as scanline R, G, B channels.

OpenEXR 3.x's Python binding reads and writes streams, so no temporary file is involved.

Compression runs in OpenEXR's process-wide thread pool: the library cuts the image into
chunks (16 scanlines for ZIP, 32 for PIZ) and compresses them on the pool's threads while
the calling thread writes them out in order, so the bytes do not depend on the thread
count. The binding's per-file ``num_threads`` starts no threads by itself: with the global
pool at 0 (the library's default) every chunk is compressed on the calling thread. The
pool is therefore sized once, on first use, to the CPUs this process may run on, and
stopped around ``os.fork``: threads do not survive a fork, and a child left with the
parent's pool would hang on its first EXR.

The default compressions are measured, not inherited (``python -m benchmarks.exr_encode``,
figures in README.md). A float32 network output barely compresses (its low mantissa bits
are noise to any lossless codec): ZIP saves 4% of an 18 MB frame for about 25 times the
time of writing it raw, so float32 is written uncompressed. Half floats shrink by a quarter
with ZIP, so float16 uses it. ZSTD and HTJ2K take 15-17% off float32, faster than ZIP, but
tools built on an OpenEXR older than 3.5 / 3.4 (2025) cannot open such files.
"""

from __future__ import annotations

import io
import os
import threading
from enum import Enum
from typing import Literal

import numpy as np
import OpenEXR

from service.cpus import usable_cpus
from service.errors import UnsupportedImage

ExrDtype = Literal["float16", "float32"]

HALF_MAX = 65504.0
"""The largest finite half-precision value."""

_CHANNELS = ("R", "G", "B")


class ExrCompression(str, Enum):
    """OpenEXR's compressions, named as the binding's ``*_COMPRESSION`` ones (NO is "none").

    Lossless ones return every float32 and float16 sample exactly; the others say why not.
    """

    NONE = "none"
    """Raw samples: the fastest to write and read, the largest file."""
    RLE = "rle"
    """Run lengths of equal bytes: only flat regions shrink."""
    ZIPS = "zips"
    """Deflate of one scanline at a time."""
    ZIP = "zip"
    """Deflate of 16 scanlines at a time."""
    PIZ = "piz"
    """Wavelet and Huffman coding of 32 scanlines at a time."""
    PXR24 = "pxr24"
    """Lossy for float32: rounds each sample to 24 bits (15 mantissa bits); half is exact."""
    B44 = "b44"
    """Lossy, half channels only (float32 ones are stored raw): 4x4 blocks in 14 bytes."""
    B44A = "b44a"
    """As B44, flat blocks in 3 bytes."""
    DWAA = "dwaa"
    """Lossy (DCT, like JPEG) over 32 scanlines; meant for images viewed, not computed on."""
    DWAB = "dwab"
    """As DWAA over 256 scanlines."""
    ZSTD = "zstd"
    """Lossless Zstandard; needs OpenEXR 3.5 to write and to read."""
    HTJ2K256 = "htj2k256"
    """Lossless High-Throughput JPEG 2000 over 256 scanlines; needs OpenEXR 3.4."""
    HTJ2K32 = "htj2k32"
    """As HTJ2K256 over 32 scanlines."""
    LJ2K = "lj2k"
    """Lossy High-Throughput JPEG 2000; needs OpenEXR 3.5."""


LOSSLESS_COMPRESSIONS = frozenset(
    {
        ExrCompression.NONE,
        ExrCompression.RLE,
        ExrCompression.ZIPS,
        ExrCompression.ZIP,
        ExrCompression.PIZ,
        ExrCompression.ZSTD,
        ExrCompression.HTJ2K256,
        ExrCompression.HTJ2K32,
    }
)
"""The compressions that return every sample exactly, for float32 and float16 alike."""

DEFAULT_EXR_COMPRESSIONS: dict[ExrDtype, ExrCompression] = {
    "float32": ExrCompression.NONE,
    "float16": ExrCompression.ZIP,
}
"""Per sample type: lossless and readable by every OpenEXR tool; why: README.md's EXR table."""


def _binding_compression(compression: ExrCompression) -> object:
    name = "NO" if compression is ExrCompression.NONE else compression.name
    return getattr(OpenEXR, f"{name}_COMPRESSION")


_pool_lock = threading.Lock()
_pool_sized = False


def default_exr_threads() -> int:
    """The CPUs this process may keep busy (affinity mask capped by the cgroup's quota),
    the count the inference pools use too: in a pod limited to 2 CPUs on a 64-core node,
    64 compression threads would only queue for 2 CPUs' worth of time."""
    return usable_cpus()


def set_exr_threads(count: int) -> None:
    """Size OpenEXR's process-wide compression pool; 0 compresses on the calling thread.

    Every encode and decode in the process shares the pool. Without a call the pool is
    sized to :func:`default_exr_threads` on the first encode or decode.
    """
    global _pool_sized
    if count < 0:
        raise ValueError(f"the OpenEXR thread count must be 0 or more, got {count}")
    with _pool_lock:
        OpenEXR.set_global_thread_count(count)
        _pool_sized = True


def exr_threads() -> int:
    """The threads OpenEXR's pool holds now (0 until the first encode, decode or set)."""
    return int(OpenEXR.global_thread_count())


def _ensure_pool() -> None:
    global _pool_sized
    if _pool_sized:
        return
    with _pool_lock:
        if not _pool_sized:
            OpenEXR.set_global_thread_count(default_exr_threads())
            _pool_sized = True


_threads_before_fork = 0


def _stop_pool_before_fork() -> None:
    """Join the pool's threads: a forked child inherits the pool but not its threads, and
    its next encode (or resize) would wait on them for ever."""
    global _threads_before_fork
    _pool_lock.acquire()
    _threads_before_fork = int(OpenEXR.global_thread_count())
    if _threads_before_fork:
        OpenEXR.set_global_thread_count(0)


def _restart_pool_after_fork() -> None:
    """Parent and child each start their own threads again, as many as before."""
    if _threads_before_fork:
        OpenEXR.set_global_thread_count(_threads_before_fork)
    _pool_lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_stop_pool_before_fork,
        after_in_parent=_restart_pool_after_fork,
        after_in_child=_restart_pool_after_fork,
    )


def _check_hdr(hdr: np.ndarray) -> None:
    if hdr.ndim != 3 or hdr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {hdr.shape}")
    if hdr.shape[0] == 0 or hdr.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {hdr.shape}")


def encode_exr(
    hdr: np.ndarray,
    dtype: ExrDtype = "float32",
    compression: ExrCompression | str | None = None,
) -> bytes:
    """The bytes of a single-part scanline EXR with channels R, G, B.

    ``float16`` halves the file at about three decimal digits of precision; values beyond
    the half range (|x| > 65504, infinities included) are clamped to +-65504 instead of
    becoming infinities that poison every later average. AFUNet outputs lie in [0, 1], so
    only the classical fallback model can reach the clamp. NaNs are written as NaNs.

    ``compression`` defaults to :data:`DEFAULT_EXR_COMPRESSIONS` of ``dtype``; one outside
    :data:`LOSSLESS_COMPRESSIONS` changes the samples (its :class:`ExrCompression` member
    says how). Raises ``ValueError`` for an unknown name.
    """
    _check_hdr(hdr)
    if dtype not in DEFAULT_EXR_COMPRESSIONS:
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    codec = _codec(DEFAULT_EXR_COMPRESSIONS[dtype] if compression is None else compression)
    if dtype == "float32":
        samples = hdr.astype(np.float32, copy=False)
    else:
        samples = np.clip(hdr.astype(np.float32, copy=False), -HALF_MAX, HALF_MAX)
        samples = samples.astype(np.float16)
    channels = {
        channel: np.ascontiguousarray(samples[:, :, i]) for i, channel in enumerate(_CHANNELS)
    }
    header = {"compression": codec, "type": OpenEXR.scanlineimage}
    _ensure_pool()
    stream = io.BytesIO()
    OpenEXR.File(header, channels).write(stream)
    return stream.getvalue()


def _codec(compression: ExrCompression | str) -> object:
    try:
        return _binding_compression(ExrCompression(compression))
    except ValueError:
        names = ", ".join(c.value for c in ExrCompression)
        raise ValueError(f"unknown EXR compression {compression!r}: use one of {names}") from None


def decode_exr(data: bytes) -> np.ndarray:
    """The R, G, B channels of an EXR file as H x W x 3 float32 (half samples widened)."""
    _ensure_pool()
    try:
        exr = OpenEXR.File(io.BytesIO(data), separate_channels=True)
        channels = exr.channels()
    except Exception as exc:  # the binding reports every unreadable file as RuntimeError
        raise UnsupportedImage(f"not a readable OpenEXR file ({exc})") from exc
    missing = [name for name in _CHANNELS if name not in channels]
    if missing:
        raise UnsupportedImage(
            f"OpenEXR file lacks channel(s) {', '.join(missing)}; has {', '.join(channels)}"
        )
    return np.stack([channels[name].pixels for name in _CHANNELS], axis=-1).astype(np.float32)
