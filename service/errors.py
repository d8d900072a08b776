"""One exception root for the whole service.

Every error a user can cause is a ``ServiceError`` subclass carrying a stable machine code
and the HTTP status the API maps it to, so the CLI, the worker and the API report the same
problem in the same words. Only the API's single exception handler turns these into HTTP
responses; nothing below ``api/`` knows about HTTP beyond the status number stored here.

``retryable`` says whether the same request, sent again unchanged, may succeed: a fault
of this process, a missing resource or a busy queue may pass; bad input never does. The
worker fails a job at once and for good on a non-retryable error and retries the rest,
so each subclass decides here, once, instead of in a list kept by the worker.
"""

from __future__ import annotations

from typing import Final

#: Retry-After of a dependency that is away (Redis, the blob store): restarts and
#: failovers take seconds.
UNAVAILABLE_RETRY_AFTER_SECONDS: Final = 5


class ServiceError(Exception):
    """Base of every error the service reports to its users."""

    code: str = "internal_error"
    http_status: int = 500
    retryable: bool = True
    """May trying again unchanged succeed? (An unknown fault: assume it may.)"""
    retry_after: float | None = None
    """Seconds after which it may (the API's ``Retry-After``, whole seconds); None: no
    advice. A class sets its default; an instance may pass its own."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class BadRequest(ServiceError):
    """The request itself is malformed (a form field of the wrong type, a missing part)."""

    code = "bad_request"
    http_status = 400
    retryable = False


class InvalidExposureSet(ServiceError):
    """The exposures do not form a usable bracket: wrong count, sizes or exposure metadata."""

    code = "invalid_exposure_set"
    http_status = 422
    retryable = False


class UnsupportedImage(ServiceError):
    """An input is not an image we can decode, or not an RGB image."""

    code = "unsupported_image"
    http_status = 415
    retryable = False


class IncompleteImage(UnsupportedImage):
    """An input's header is sound but its pixel data is cut short (no IEND or EOI marker,
    a deflate stream that ends early, TIFF strips past the end of the file).

    422, not 415: the format is supported and the file names itself as one; what it
    declares is not all there, so the job would only fail later in the worker.
    """

    code = "incomplete_image"
    http_status = 422


class ImageTooLarge(ServiceError):
    """An input exceeds the configured byte or pixel limits."""

    code = "image_too_large"
    http_status = 413
    retryable = False


class CheckpointError(ServiceError):
    """A checkpoint file cannot be read at all (empty, truncated, not a checkpoint)."""

    code = "checkpoint_invalid"
    http_status = 500
    retryable = True  # the job is not at fault: another worker may hold readable weights


class CheckpointMismatch(CheckpointError):
    """A checkpoint was read but its parameters do not match the architecture."""

    code = "checkpoint_mismatch"


class EngineUnavailable(ServiceError):
    """The requested inference backend or device cannot run here."""

    code = "engine_unavailable"
    http_status = 503
    retryable = True  # another worker or device may run it


class EngineFault(ServiceError):
    """An unrecoverable backend failure (CUDA fault); the worker must exit and be restarted."""

    code = "engine_fault"
    http_status = 500
    retryable = True  # a restarted worker gets a fresh device context


class JobNotFound(ServiceError):
    """No job with this id is visible to the caller (unknown, expired, or another key's)."""

    code = "not_found"
    http_status = 404
    retryable = False


class JobNotFinished(ServiceError):
    """The job's result was asked for before the job succeeded."""

    code = "not_finished"
    http_status = 409
    retryable = True  # the same request succeeds once the job has


class IdempotencyKeyReused(ServiceError):
    """An Idempotency-Key already names a job whose request differed (other files, EVs,
    model or tile size).

    422, as the IETF idempotency-key draft answers a key reused with another payload
    (Stripe's ``idempotency_key_reused`` is the same idea): sending it again unchanged can
    never succeed, and answering the first job would silently drop the new request.
    """

    code = "idempotency_key_reused"
    http_status = 422
    retryable = False


class JobTooLarge(ServiceError):
    """A job would cost more than a configured limit allows (tiles per job, or more
    megapixels than an API key may submit in a minute): sent again, it costs the same.

    422 rather than 413: the request is within the byte and pixel limits; it is the work
    it asks for that is refused.
    """

    code = "job_too_large"
    http_status = 422
    retryable = False


class RateLimited(ServiceError):
    """The API key has used its megapixels of the current minute; retry after ``retry_after``."""

    code = "rate_limited"
    http_status = 429
    retryable = True
    retry_after = 60  # the longest wait for the next minute; callers pass the real one


class QueueFull(ServiceError):
    """The queue holds the configured maximum of waiting jobs; retry after ``retry_after``."""

    code = "queue_full"
    http_status = 429
    retryable = True
    retry_after = 5


class InvalidWebhookUrl(ServiceError):
    """A job's ``webhook_url`` is malformed, or refused by the SSRF guard."""

    code = "invalid_webhook_url"
    http_status = 422
    retryable = False
