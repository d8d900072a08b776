"""Every error the API answers, in one shape, from one handler.

``{"error": {"code": "...", "message": "..."}}`` whatever went wrong: a ``ServiceError``
raised anywhere below (its ``http_status`` and ``code`` decide), a request FastAPI could
not parse or validate (400, with the offending field named), an HTTP error of the router
(404; 405 with every method of the path in ``Allow``), Redis being unreachable (503 with
``Retry-After``), and as a last resort an unexpected exception (500, logged with its
traceback; the tests hunt these down).

The few errors only HTTP has (authentication, readiness, the request body bound) are
``ServiceError`` subclasses defined here, so the one exception root stays the only one.
"""

from __future__ import annotations

import logging
from typing import Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.errors import UNAVAILABLE_RETRY_AFTER_SECONDS, ServiceError
from service.queue.connection import refuses_writes

log = logging.getLogger(__name__)

#: Retry-After of a job refused because no live worker serves its model: a worker being
#: (re)started takes about this long to load and warm up a model.
NO_WORKER_RETRY_AFTER_SECONDS: Final = 30
#: Retry-After of a job naming no model while every live worker is still loading.
LOADING_RETRY_AFTER_SECONDS: Final = 5
#: Longest message echoed from a validation error (inputs can be long).
MAX_DETAIL_CHARS: Final = 300
#: The methods the API knows: those a 405's Allow header may list, in the order it lists
#: them, and those the request metrics count by name.
HTTP_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

_HTTP_CODES: Final = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    503: "unavailable",
}


class NotAuthenticated(ServiceError):
    """No API key came with a request to a /v1 route while keys are configured."""

    code = "not_authenticated"
    http_status = 401
    retryable = False


class Forbidden(ServiceError):
    """An API key came but is not one of the configured keys."""

    code = "forbidden"
    http_status = 403
    retryable = False


class RequestTooLarge(ServiceError):
    """The request body exceeds ``max_request_bytes`` (declared or streamed)."""

    code = "request_too_large"
    http_status = 413
    retryable = False


class BodyTimeout(ServiceError):
    """The client stopped sending its request body for ``body_read_timeout_seconds``."""

    code = "request_timeout"
    http_status = 408


class ModelUnavailable(ServiceError):
    """A job names a model no live worker can run."""

    code = "model_unavailable"
    http_status = 422
    retryable = False


class NoResult(ServiceError):
    """The job ended without a result (failed or cancelled): asking again will not help."""

    code = "no_result"
    http_status = 409
    retryable = False


class NotCancellable(ServiceError):
    """A DELETE for a job that already succeeded or failed."""

    code = "not_cancellable"
    http_status = 409
    retryable = False


class Unavailable(ServiceError):
    """Redis (the queue) cannot be reached; retry after ``retry_after`` seconds."""

    code = "unavailable"
    http_status = 503
    retryable = True
    retry_after = UNAVAILABLE_RETRY_AFTER_SECONDS


class NoWorkerForModel(Unavailable):
    """A job's model is known but no live worker serves it, and HDR_UNSERVED_MODEL_POLICY
    is ``refuse``: retry once a worker for it is up (or name a served model)."""

    code = "no_worker_for_model"
    retry_after = NO_WORKER_RETRY_AFTER_SECONDS


class NotReady(Unavailable):
    """A readiness probe failed: this process cannot serve yet (or any more)."""

    code = "not_ready"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error body of the API."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _validation_message(exc: RequestValidationError) -> str:
    """``field: problem; ...`` naming each offending field as the client spelled it."""
    parts = []
    for error in exc.errors():
        location = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "header")]
        where = ".".join(location) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    message = "; ".join(parts) or "invalid request"
    if len(message) > MAX_DETAIL_CHARS:
        message = message[:MAX_DETAIL_CHARS] + "..."
    return message


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers at the request's path.

    Starlette's 405 names only the methods of the first route whose path matched, so
    ``PUT /v1/jobs/{id}`` would be told ``Allow: GET, HEAD`` although DELETE is there too
    (each method is its own route); RFC 9110 wants the full list. Each method is tried
    against the routes as they match a request (nested included routers too).
    """
    allowed = []
    for method in HTTP_METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def handle_service_error(exc: ServiceError) -> JSONResponse:
    """The answer to a ``ServiceError``: its status and code, and ``Retry-After`` where
    the error advises one (queue full, rate limited, Redis or the blob store away)."""
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(int(exc.retry_after))
    if isinstance(exc, NotAuthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="hdr"'
    if exc.http_status >= 500:
        log.error("request failed: %s (%s)", exc.message, exc.code)
    return error_response(exc.http_status, exc.code, exc.message, headers or None)


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The API's single exception handler (registered for each family below)."""
    if isinstance(exc, ServiceError):
        return handle_service_error(exc)
    if isinstance(exc, RequestValidationError):
        return error_response(400, "bad_request", _validation_message(exc))
    if isinstance(exc, StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else {}
        message = str(exc.detail)
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
            message = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
        return error_response(exc.status_code, code, message, headers or None)
    if refuses_writes(exc):
        log.warning("Redis refuses writes during %s %s: %s", request.method, request.url.path, exc)
        return handle_service_error(
            Unavailable("Redis (the job queue) refuses writes: it is at its maxmemory limit")
        )
    if isinstance(exc, RedisError | ConnectionError | TimeoutError):
        log.warning("Redis unavailable during %s %s: %s", request.method, request.url.path, exc)
        return handle_service_error(
            Unavailable(f"Redis (the job queue) is unavailable or too slow ({type(exc).__name__})")
        )
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception family the API can meet to :func:`handle_error`."""
    for family in (
        ServiceError,
        RequestValidationError,
        StarletteHTTPException,
        RedisError,
        ConnectionError,
        TimeoutError,
        Exception,
    ):
        app.add_exception_handler(family, handle_error)
