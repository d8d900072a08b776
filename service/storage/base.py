"""The blob store's one small interface, and the object names every process agrees on.

Redis keeps only job state; every byte of an upload or a result lives in a blob store
(ARCHITECTURE §5b). The interface is synchronous on purpose: both backends are blocking
I/O underneath (files, or boto3 for S3), so async callers run them with
``asyncio.to_thread`` and the thread pool bounds the concurrency, instead of each backend
re-implementing an event-loop flavour of itself.

Object names are built here from the job id alone, never from client input (a client's
file name never reaches the store), so one job can never address another's blobs.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from service.errors import UNAVAILABLE_RETRY_AFTER_SECONDS, ServiceError

#: Folder (key prefix) under which every job's blobs live, one sub-folder per job id.
JOBS_PREFIX: Final = "jobs/"
#: Bytes per read when a blob is streamed out.
CHUNK_BYTES: Final = 1024 * 1024


class StoreUnavailable(ServiceError):
    """The blob store cannot be reached, refused the request or is full.

    Retryable: the store, not the request, is at fault. The API maps it to 503 with
    ``Retry-After``; a worker fails the attempt with this message as the reason.
    """

    code = "store_unavailable"
    http_status = 503
    retry_after = UNAVAILABLE_RETRY_AFTER_SECONDS


class BlobNotFound(ServiceError):
    """No blob of that name: it was never written, or it expired or was swept."""

    code = "not_found"
    http_status = 404
    retryable = False


@dataclass(frozen=True)
class BlobInfo:
    """One stored object, as listed for the sweeper."""

    name: str
    size: int
    modified: float
    """Last write, unix seconds."""


def job_prefix(job_id: str) -> str:
    """The folder of one job's blobs (ends with a slash)."""
    return f"{JOBS_PREFIX}{job_id}/"


def input_name(job_id: str, index: int) -> str:
    """The ``index``-th upload of a job (0 = the shortest exposure, in file order)."""
    return f"{job_prefix(job_id)}input-{index}"


def result_name(job_id: str, variant: str = "exr-float32") -> str:
    """A job's result: the float32 EXR the worker writes, or a converted ``variant``
    (``png``, ``hdr``, ``exr-float16``) made once on first download and kept beside it."""
    return f"{job_prefix(job_id)}result-{variant}"


class BlobStore(abc.ABC):
    """Where uploads and results live. Every method raises :class:`StoreUnavailable` for a
    store fault and :class:`BlobNotFound` for a missing object; nothing else escapes."""

    #: The store's location for logs and /readyz, without credentials.
    url: str

    @abc.abstractmethod
    def put(self, name: str, source: BinaryIO | bytes) -> int:
        """Store ``source`` (read to its end in chunks, never whole into memory) under
        ``name``, replacing any object of that name atomically: a reader sees the old
        object or the whole new one, never a part. Returns the size in bytes."""

    @abc.abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A readable stream of the object; the caller closes it."""

    def read(self, name: str) -> bytes:
        """The whole object (for inputs the worker decodes anyway)."""
        with self.open(name) as stream:
            return stream.read()

    def iter_chunks(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The object in chunks, for streaming responses; opens it first, so a missing
        object raises before the first chunk."""
        stream = self.open(name)

        def chunks() -> Iterator[bytes]:
            with stream:
                while chunk := stream.read(chunk_bytes):
                    yield chunk

        return chunks()

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether an object of that name exists."""

    @abc.abstractmethod
    def delete(self, names: Iterable[str]) -> None:
        """Delete these objects; missing ones are not an error."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Every object whose name starts with ``prefix``."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many there were."""
        names = [info.name for info in self.list(prefix)]
        self.delete(names)
        return len(names)

    def presign(self, name: str, expires_seconds: int) -> str | None:
        """A short-lived URL a client can GET the object from directly, or None where the
        backend has none (the file store): then the API streams the object itself."""
        return None

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers and is writable enough
        to take a job (readiness, and the API's check before it accepts uploads)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections."""
