"""The ``file:///dir`` blob store: a local or shared directory (NFS, EFS, a RWX volume).

Every write goes to a temporary file in the object's own directory and is renamed over
the final name once complete, so a reader (another process, another host on the same
volume) sees the old object or the whole new one, never a part: a rename within one
directory is atomic on POSIX file systems and on NFS. The temporary name starts with a
dot and is never listed, so the sweeper never counts a half-written upload as a blob.

Object names are checked against the shapes :mod:`service.storage.base` builds (job id
plus a fixed file name): whatever reaches this class, a name can never leave the root.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import unquote, urlsplit

from service.storage.base import (
    CHUNK_BYTES,
    JOBS_PREFIX,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

#: The only object names the service writes: jobs/<32 hex>/(input-<n>|result-<variant>).
_NAME: Final = re.compile(r"jobs/[0-9a-f]{32}/(input-[0-9]{1,3}|result-[a-z0-9-]{1,32})")
#: A prefix the sweeper or a cleanup may list or delete: jobs/ or one job's folder.
_PREFIX: Final = re.compile(r"(jobs/([0-9a-f]{32}/)?)?")
#: Temporary files of writes in progress (never listed, never read).
_TEMP_PREFIX: Final = ".tmp-"


def _check_name(name: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise ValueError(f"not a blob name of this service: {name[:100]!r}")
    return name


class FileStore(BlobStore):
    """Blobs as files under ``root``: ``<root>/jobs/<id>/input-0`` and so on."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        """``fsync``: flush each object to the disk before the rename, so that a power cut
        cannot leave a renamed but empty file (off only for tests and benchmarks)."""
        self.root = Path(root)
        self.fsync = fsync
        self.url = f"file://{self.root}"

    @classmethod
    def from_url(cls, url: str) -> FileStore:
        """``file:///absolute/dir``; the directory is created when missing."""
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise ValueError(f"a file store URL is file:///absolute/path, got {url!r}")
        path = Path(unquote(parts.path))
        if not path.is_absolute() or not parts.path:
            raise ValueError(f"a file store URL needs an absolute path, got {url!r}")
        return cls(path)

    def _path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def put(self, name: str, source: BinaryIO | bytes) -> int:
        target = self._path(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=target.parent)
        except OSError as exc:
            raise _unavailable("cannot write", name, exc) from exc
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, bytes | bytearray | memoryview):
                    out.write(source)
                    size = len(source)
                else:
                    while chunk := source.read(CHUNK_BYTES):
                        out.write(chunk)
                        size += len(chunk)
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(temp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise _unavailable("cannot write", name, exc) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return size

    def open(self, name: str) -> BinaryIO:
        try:
            return self._path(name).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {name} not found") from None
        except OSError as exc:
            raise _unavailable("cannot read", name, exc) from exc

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, names: Iterable[str]) -> None:
        folders: set[Path] = set()
        for name in names:
            path = self._path(name)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise _unavailable("cannot delete", name, exc) from exc
            folders.add(path.parent)
        for folder in folders:  # an empty job folder goes with its last blob
            with contextlib.suppress(OSError):
                folder.rmdir()

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        if _PREFIX.fullmatch(prefix) is None:
            raise ValueError(f"not a blob prefix of this service: {prefix[:100]!r}")
        jobs = self.root / JOBS_PREFIX
        folders = [self.root / prefix] if prefix.count("/") == 2 else _subdirs(jobs)
        for folder in folders:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _unavailable("cannot list", prefix, exc) from exc
            for entry in entries:
                name = f"{JOBS_PREFIX}{Path(folder).name}/{entry.name}"
                if entry.name.startswith(_TEMP_PREFIX) or _NAME.fullmatch(name) is None:
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    stat = entry.stat()
                except OSError:  # deleted meanwhile
                    continue
                yield BlobInfo(name=name, size=stat.st_size, modified=stat.st_mtime)

    def delete_prefix(self, prefix: str) -> int:
        count = super().delete_prefix(prefix)
        if prefix.count("/") == 2:  # a job folder: also drop stale temporary files
            with contextlib.suppress(OSError):
                shutil.rmtree(self.root / prefix)
        return count

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable", str(self.root))
            usage = shutil.disk_usage(self.root)
        except OSError as exc:
            raise StoreUnavailable(f"blob store {self.url} is unavailable: {_why(exc)}") from exc
        if usage.free < CHUNK_BYTES:
            raise StoreUnavailable(f"blob store {self.url} is full ({usage.free} bytes free)")


def _subdirs(folder: Path) -> list[str]:
    try:
        return sorted(e.path for e in os.scandir(folder) if e.is_dir() and e.name[0] != ".")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreUnavailable(f"cannot list {folder}: {_why(exc)}") from exc


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _unavailable(action: str, name: str, exc: OSError) -> StoreUnavailable:
    """A file-system error as the store fault it is (full disk, read-only, permissions)."""
    return StoreUnavailable(f"blob store {action} {name}: {_why(exc)}")
