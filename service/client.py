"""A Python client of the v1 API: submit three exposures, follow the job, fetch the result.

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        job = client.submit(["short.tif", "mid.tif", "long.tif"], evs=(-2, 0, 2))
        job.wait(progress=lambda done, total: print(f"{done}/{total} tiles"))
        job.save("out.exr")

It speaks the API's own schemas (:class:`~service.api.schemas.JobPublic`,
:class:`~service.api.schemas.ErrorBody`), so a change of the contract is a type error
here, not a silent drift; importing it loads the schema module (pydantic, the imaging
and queue types it names), never the app, the routes or torch.

Busy and unavailable answers (429 queue full, 503 not ready) are retried after the
server's ``Retry-After``, within a bounded number of attempts and a bounded total wait:
a client that retries at once, or forever, only deepens the overload it was told about.
A submission carries an ``Idempotency-Key`` (a random one unless the caller gives one),
so sending it again after a lost answer never queues a second job.

Every failure is a :class:`ClientError` (a :class:`~service.errors.ServiceError`, the
service's one exception root) carrying the HTTP status and the API's error code and
message; a job that ends failed or cancelled raises :class:`JobFailed` from ``wait``.

The API key travels as ``Authorization: Bearer``, which httpx drops when a redirect leaves
the API's origin: a result answered with a redirect to a presigned blob-store URL is
followed without handing the key to the store.
"""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeAlias

import httpx
import numpy as np
from pydantic import ValidationError

from service.api.schemas import ErrorBody, JobPublic, ModelList
from service.errors import ServiceError
from service.imaging import ExrDtype, ResultFormat
from service.queue import JobState

log = logging.getLogger(__name__)

#: What ``submit`` takes as one exposure: a file's path, its bytes, or an ``HxWx3`` array.
Exposure: TypeAlias = "str | os.PathLike[str] | bytes | np.ndarray"
#: ``progress(tiles_done, tiles_total)``, called when the job's progress changes.
ProgressCallback: TypeAlias = Callable[[int, int], object]

DEFAULT_URL: Final = "http://127.0.0.1:8000"
#: Statuses that mean "not now": the same request may pass later.
RETRY_STATUSES: Final = frozenset({429, 503})
#: Pause before a retry when the answer has no (readable) Retry-After.
DEFAULT_RETRY_AFTER_SECONDS: Final = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long a 429/503 is retried: at most ``attempts`` sends of one request, and no
    pause that would take the total wait past ``max_wait_seconds`` (then the error is
    raised at once rather than after a pause that cannot end in success in time)."""

    attempts: int = 5
    max_wait_seconds: float = 120.0


class ClientError(ServiceError):
    """A request that failed: the API's answer (``status``, ``code``, ``message`` from its
    :class:`~service.api.schemas.ErrorBody`), or no answer at all (``status`` None).

    It carries any of the API's errors, so ``retryable`` is decided per instance, from
    the status: no answer, 429, 503 and other 5xx may pass later; another 4xx never does.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "client_error",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.code = code
        self.http_status = status or 0
        self.retryable = status is None or status in RETRY_STATUSES or status >= 500

    def __str__(self) -> str:
        prefix = f"{self.status} {self.code}" if self.status is not None else self.code
        return f"{prefix}: {self.message}"


class JobFailed(ClientError):
    """The job reached ``failed`` or ``cancelled``: it has no result. ``job`` says why.

    Not retryable: the worker already retried what could pass (``job.attempts``).
    """

    retryable = False

    def __init__(self, job: JobPublic) -> None:
        reason = f": {job.error}" if job.error else ""
        super().__init__(f"job {job.id} {job.status.value}{reason}", code=f"job_{job.status.value}")
        self.retryable = False
        self.job = job


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The pause a ``Retry-After`` header asks for: delay-seconds or an HTTP date (RFC 9110
    section 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a bare one is read as such
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_from(response: httpx.Response) -> ClientError:
    """The :class:`ClientError` of an error answer, its code and message from ErrorBody."""
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    try:
        detail = ErrorBody.model_validate_json(response.content).error
        code, message = detail.code, detail.message
    except ValidationError:  # not the API's body: a proxy, a load balancer
        code = "http_error"
        text = response.text.strip().replace("\n", " ")
        message = text[:200] or response.reason_phrase or "no message"
    return ClientError(message, status=response.status_code, code=code, retry_after=retry_after)


def encode_array(frame: np.ndarray) -> tuple[str, bytes]:
    """An ``HxWx3`` uint8 or uint16 frame as an upload: 8-bit PNG or 16-bit TIFF, exact.

    These are formats the API reads losslessly at the array's own bit depth, so the
    service sees the very samples the caller holds.
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"an exposure array must be HxWx3 (RGB), got shape {frame.shape}")
    if frame.dtype == np.uint8:
        from PIL import Image

        stream = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(stream, format="PNG")
        return "png", stream.getvalue()
    if frame.dtype == np.uint16:
        import tifffile

        stream = io.BytesIO()
        tifffile.imwrite(stream, np.ascontiguousarray(frame), photometric="rgb")
        return "tif", stream.getvalue()
    raise ValueError(f"an exposure array must be uint8 or uint16, got {frame.dtype}")


def _upload(index: int, exposure: Exposure) -> tuple[str, bytes]:
    """(file name, bytes) of one exposure; the name is for messages, the bytes decide."""
    if isinstance(exposure, np.ndarray):
        extension, data = encode_array(exposure)
        return f"exposure-{index + 1}.{extension}", data
    if isinstance(exposure, bytes | bytearray | memoryview):
        return f"exposure-{index + 1}", bytes(exposure)
    path = Path(exposure)
    return path.name, path.read_bytes()


def _numbers(values: Sequence[float] | str | None) -> str | None:
    """A form field of numbers: ``(-2, 0, 2)`` becomes ``"-2,0,2"``; text passes as is."""
    if values is None or isinstance(values, str):
        return values
    return ",".join(format(float(v), "g") for v in values)


class Client:
    """A connection to one API server; use it as a context manager or call :meth:`close`.

    ``timeout`` bounds each HTTP request (not a job: see :meth:`Job.wait`).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            follow_redirects=True,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request, retrying 429/503 per :attr:`retry`; raise on any error answer."""
        waited = 0.0
        attempt = 1
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException as exc:
                raise ClientError(
                    f"{self.url} did not answer {method} {path} in time ({type(exc).__name__})",
                    code="timeout",
                ) from exc
            except httpx.TransportError as exc:
                raise ClientError(
                    f"cannot reach {self.url}: {exc or type(exc).__name__}", code="unreachable"
                ) from exc
            if response.is_success:
                return response
            error = _error_from(response)
            pause = error.retry_after
            if pause is None:
                pause = DEFAULT_RETRY_AFTER_SECONDS * 2 ** (attempt - 1)
            if (
                response.status_code not in RETRY_STATUSES
                or attempt >= self.retry.attempts
                or waited + pause > self.retry.max_wait_seconds
            ):
                raise error
            log.info(
                "%s %s: %s; retrying in %.1f s (attempt %d of %d)",
                method,
                path,
                error,
                pause,
                attempt + 1,
                self.retry.attempts,
            )
            time.sleep(pause)
            waited += pause
            attempt += 1

    def submit(
        self,
        exposures: Sequence[Exposure],
        evs: Sequence[float] | str | None = None,
        exposure_times: Sequence[float] | str | None = None,
        model: str | None = None,
        tile_size: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a job for three exposures (paths, file bytes or ``HxWx3`` uint8/uint16
        arrays) with their EV stops, their exposure times in seconds, or neither (EXIF).

        The server checks everything before queuing (a 4xx names the problem); the
        count is left to it too, so its message is the one callers see.
        """
        uploads = [_upload(i, exposure) for i, exposure in enumerate(exposures)]
        form = {
            "exposure_values": _numbers(evs),
            "exposure_times": _numbers(exposure_times),
            "model": model,
            "tile_size": None if tile_size is None else str(tile_size),
        }
        response = self.request(
            "POST",
            "/v1/jobs",
            files=[("exposures", upload) for upload in uploads],
            data={name: value for name, value in form.items() if value is not None},
            headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex},
        )
        return Job(self, JobPublic.model_validate_json(response.content))

    def job(self, job_id: str) -> Job:
        """A job submitted earlier (by this key), as the server sees it now."""
        return Job(self, self.job_info(job_id))

    def models(self) -> ModelList:
        """``GET /v1/models``: what the workers serve and which model is the default."""
        return ModelList.model_validate_json(self.request("GET", "/v1/models").content)

    def job_info(self, job_id: str) -> JobPublic:
        """``GET /v1/jobs/{id}``: the job's state now."""
        return JobPublic.model_validate_json(self.request("GET", f"/v1/jobs/{job_id}").content)


class Job:
    """A submitted job: :attr:`info` is its last known state (the API's ``JobPublic``)."""

    def __init__(self, client: Client, info: JobPublic) -> None:
        self.client = client
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> JobState:
        return self.info.status

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status.value!r})"

    def refresh(self) -> JobPublic:
        """Read the job's state again."""
        self.info = self.client.job_info(self.id)
        return self.info

    def wait(
        self,
        progress: ProgressCallback | None = None,
        poll: float = 0.5,
        timeout: float | None = None,
    ) -> JobPublic:
        """Poll every ``poll`` seconds until the job succeeds; return its final state.

        ``progress(tiles_done, tiles_total)`` is called at the start and whenever the
        progress changes (``tiles_total`` is 0 until a worker plans the tiles). Raises
        :class:`JobFailed` when the job fails or is cancelled, and a ``wait_timeout``
        :class:`ClientError` after ``timeout`` seconds (the job goes on; the message says
        why a queued job waits when no live worker serves its model).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[int, int] | None = None
        info = self.info
        while True:
            current = (info.progress.tiles_done, info.progress.tiles_total)
            if progress is not None and current != seen:
                progress(*current)
                seen = current
            if info.status is JobState.SUCCEEDED:
                return info
            if info.status.is_final:
                raise JobFailed(info)
            if deadline is not None and time.monotonic() >= deadline:
                why = f": {info.waiting_reason}" if info.waiting_reason else ""
                raise ClientError(
                    f"job {self.id} still {info.status.value} after {timeout:g} s{why}",
                    code="wait_timeout",
                )
            pause = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            info = self.refresh()

    def result(self, format: ResultFormat | str = "exr", dtype: ExrDtype = "float32") -> bytes:
        """The result file's bytes: ``exr`` (``dtype`` float32 or float16), ``hdr`` or ``png``.

        A redirect (to a presigned blob-store URL) is followed; 409 while unfinished.
        """
        params: Mapping[str, str] = {"format": ResultFormat(format).value, "dtype": dtype}
        return self.client.request("GET", f"/v1/jobs/{self.id}/result", params=params).content

    def save(self, path: str | os.PathLike[str], dtype: ExrDtype = "float32") -> Path:
        """Write the result to ``path`` in the format its extension names (.exr, .hdr, .png)."""
        target = Path(path)
        fmt = result_format_of(target)
        target.write_bytes(self.result(fmt, dtype))
        return target

    def cancel(self) -> JobPublic:
        """Cancel the job (queued: at once; running: at its next tile batch)."""
        response = self.client.request("DELETE", f"/v1/jobs/{self.id}")
        self.info = JobPublic.model_validate_json(response.content)
        return self.info


def result_format_of(path: Path) -> ResultFormat:
    """The result format a file name's extension names; ValueError naming the choices."""
    try:
        return ResultFormat(path.suffix.lower().lstrip("."))
    except ValueError:
        supported = ", ".join(f".{f.value}" for f in ResultFormat)
        raise ValueError(
            f"cannot tell the result format from {path.name!r}: use one of {supported}"
        ) from None
