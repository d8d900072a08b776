"""Where built engines live, and the keys that make a cached engine safe to reuse.

An engine built from ``model.pth`` is only valid for those exact weights, that tile shape
and (for TensorRT) that GPU, compute capability, TensorRT version and precision; every one
of these is in the file name, so a stale or foreign engine is never picked up by mistake.
Files are written to a temporary name and renamed, so concurrent workers never read a
half-written engine.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from service.config import Settings
from service.model_repo import ModelSpec

#: Used when the model's own folder is read-only (a mounted repository, shared weights).
USER_CACHE = Path.home() / ".cache" / "afunet-service"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def engine_dir(spec: ModelSpec, settings: Settings) -> Path:
    """``$HDR_ENGINE_CACHE/<name>/<version>`` when set, else ``<version dir>/engines``,
    else (read-only repository, or weights given by path) a per-user cache. Engines are
    keyed by weight digest, so a shared folder never mixes up two checkpoints."""
    if settings.engine_cache is not None:
        return settings.engine_cache / spec.name / str(spec.version or "external")
    if spec.version is None:  # weights given by path: never write beside someone's file
        return USER_CACHE / spec.name / "external"
    preferred = spec.directory / "engines"
    return preferred if _writable(preferred) else USER_CACHE / spec.name / str(spec.version)


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:12]


def weights_digest(path: Path) -> str:
    """Short content hash of a weights file (memoised per size and modification time)."""
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


def safe_name(*parts: object) -> str:
    """A file-name-safe join of key parts (GPU names have spaces and slashes)."""
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", str(p)).strip("-") for p in parts)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
