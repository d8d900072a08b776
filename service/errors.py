"""One exception root for the whole service.

Every error a user can cause is a ``ServiceError`` subclass carrying a stable machine code
and the HTTP status the API maps it to, so the CLI, the worker and the API report the same
problem in the same words. Only the API's single exception handler turns these into HTTP
responses; nothing below ``api/`` knows about HTTP beyond the status number stored here.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to its users."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """The request itself is malformed (a form field of the wrong type, a missing part)."""

    code = "bad_request"
    http_status = 400


class InvalidExposureSet(ServiceError):
    """The exposures do not form a usable bracket: wrong count, sizes or exposure metadata."""

    code = "invalid_exposure_set"
    http_status = 422


class UnsupportedImage(ServiceError):
    """An input is not an image we can decode, or not an RGB image."""

    code = "unsupported_image"
    http_status = 415


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


class CheckpointError(ServiceError):
    """A checkpoint file cannot be read at all (empty, truncated, not a checkpoint)."""

    code = "checkpoint_invalid"
    http_status = 500


class CheckpointMismatch(CheckpointError):
    """A checkpoint was read but its parameters do not match the architecture."""

    code = "checkpoint_mismatch"


class EngineUnavailable(ServiceError):
    """The requested inference backend or device cannot run here."""

    code = "engine_unavailable"
    http_status = 503


class EngineFault(ServiceError):
    """An unrecoverable backend failure (CUDA fault); the worker must exit and be restarted."""

    code = "engine_fault"
    http_status = 500


class JobNotFound(ServiceError):
    """No job with this id is visible to the caller (unknown, expired, or another key's)."""

    code = "not_found"
    http_status = 404


class JobNotFinished(ServiceError):
    """The job's result was asked for before the job succeeded."""

    code = "not_finished"
    http_status = 409


class QueueFull(ServiceError):
    """The queue holds the configured maximum of waiting jobs; retry after ``retry_after``."""

    code = "queue_full"
    http_status = 429

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
