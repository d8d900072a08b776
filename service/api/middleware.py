"""Pure ASGI middleware of the API: the API key gate, the upload limit, the request-body
bounds (size, read timeout) and request metrics.

Pure ASGI rather than ``BaseHTTPMiddleware`` because they must see the raw ``receive``
and ``send`` streams: the key gate, the upload limit and the bound answer before the
multipart parser reads (and spools to disk) a single byte of the body, and the metrics
need the status even of answers sent by other middleware.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Final

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import OWNER_STATE, authenticate
from service.api.errors import (
    HTTP_METHODS,
    BodyTimeout,
    RequestTooLarge,
    Unavailable,
    handle_service_error,
)
from service.errors import ServiceError
from service.metrics import ApiMetrics

#: Paths under API keys (health, metrics and the docs are open).
PROTECTED_PREFIX: Final = "/v1/"
#: Retry-After of a submission refused because the upload slots are all taken.
UPLOAD_RETRY_AFTER_SECONDS: Final = 2


async def _answer_error(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    """Answer ``error`` without reading the body; close the connection, whose unread
    body would otherwise have to be drained first."""
    response = handle_service_error(error)
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _protected(scope: Scope) -> bool:
    """Whether ``scope`` is an HTTP request for a /v1 route.

    Judged on the path the router matches, without the ``root_path`` that uvicorn's
    ``--root-path`` puts in front of ``scope["path"]``: behind a prefix, the gate must
    still see the same requests that reach the /v1 routes.
    """
    if scope["type"] != "http":
        return False
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    if root and path.startswith(root + "/"):
        path = path[len(root) :]
    return path.startswith(PROTECTED_PREFIX)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class ApiKeyGate:
    """Refuse (401/403) a /v1 request without an accepted API key from its headers alone,
    and name the owner of one with an accepted key.

    Before this gate, a 57 MB POST without a key was parsed in full before it got its
    401. It is the one place a key is checked and hashed: the owner it resolves (None
    when auth is off) goes into the request's state under ``OWNER_STATE``, where the
    route dependency ``get_owner`` reads it.
    """

    def __init__(self, app: ASGIApp, key_hashes: Sequence[str]) -> None:
        self.app = app
        self.key_hashes = tuple(key_hashes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _protected(scope):
            presented = _header(scope, b"x-api-key")
            if not presented:
                scheme, _, credentials = (_header(scope, b"authorization") or "").partition(" ")
                presented = credentials.strip() if scheme.lower() == "bearer" else None
            try:
                owner = authenticate(presented, self.key_hashes)
            except ServiceError as exc:
                await _answer_error(scope, receive, send, exc)
                return
            scope.setdefault("state", {})[OWNER_STATE] = owner
        await self.app(scope, receive, send)


class UploadLimit:
    """At most ``limit`` submissions (POST under /v1 with a body) are read at once.

    Past it the answer is 503 with ``Retry-After`` before a byte of the body is read, so
    the API's memory and temporary disk stay bounded however many clients upload (12
    concurrent 58 MB uploads took it from 107 MB to 552 MB RSS before). A counter, not a
    queue of waiters: a client told to retry costs nothing, a waiter holds a socket.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST" or not _protected(scope):
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            error = Unavailable(
                f"{self.limit} uploads are in progress, the server's limit; retry in"
                f" {UPLOAD_RETRY_AFTER_SECONDS} s",
                retry_after=UPLOAD_RETRY_AFTER_SECONDS,
            )
            await _answer_error(scope, receive, send, error)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


#: Route label of requests that matched no route (keeps label values bounded).
UNMATCHED = "unmatched"
#: Methods counted by name; any other verb a client invents is counted as "other".
KNOWN_METHODS = frozenset(HTTP_METHODS)


class _Tripwire:
    """Runs the app with a ``receive`` that may trip with a :class:`ServiceError`; once it
    has tripped, whatever the app answers (FastAPI reports a failed body read as a 400) is
    replaced by that error's answer, and the connection is closed."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.error: ServiceError | None = None
        self.started = False

    def trip(self, error: ServiceError) -> ServiceError:
        self.error = error
        return error

    async def _guarded_send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self.started:
                return
            self.started = True
            if self.error is not None:
                await _answer_error(self.scope, self.receive, self.send, self.error)
                return
        elif self.error is not None:
            return  # the body of the answer the error replaced
        await self.send(message)

    async def run(self, app: ASGIApp, receive: Receive) -> None:
        try:
            await app(self.scope, receive, self._guarded_send)
        except ServiceError as exc:
            if exc is not self.error:
                raise
            if not self.started:
                await _answer_error(self.scope, self.receive, self.send, exc)


class BodySizeLimit:
    """Refuse (413) a request body over ``max_bytes`` before anything buffers it.

    A declared ``Content-Length`` over the limit is refused before the app runs, without
    reading a byte. A body without one (chunked) or lying about it is counted as it
    streams in: the chunk that crosses the limit raises inside the app's ``receive``, and
    whatever the app then answers (FastAPI reports a failed body read as a 400) is
    replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        too_large = RequestTooLarge(f"request body exceeds the limit of {self.max_bytes} bytes")
        if declared is not None and declared > self.max_bytes:
            await _answer_error(scope, receive, send, too_large)
            return
        wire = _Tripwire(scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise wire.trip(too_large)
            return message

        await wire.run(self.app, limited_receive)


class BodyReadTimeout:
    """Answer 408 and close when a client stops sending its body for ``seconds``.

    uvicorn bounds idle keep-alive connections but not a body that never comes: a client
    that sends headers (a large ``Content-Length``) and then nothing held its connection
    and a request slot for as long as it liked. The wait for each piece of the body is
    bounded, not the whole upload, so a slow but steady client still gets through. Once
    the body is complete ``receive`` is passed through untouched (it then only reports a
    disconnect, which may rightly take as long as the answer does). As in
    :class:`BodySizeLimit`, whatever the app answers after the timeout (FastAPI reports
    a failed body read as a 400) is replaced by the 408.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = BodyTimeout(f"no request body received for {self.seconds:g} s")
        wire = _Tripwire(scope, receive, send)
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.seconds)
            except TimeoutError:
                raise wire.trip(error) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await wire.run(self.app, timed_receive)


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


class RequestMetrics:
    """Count and time every request by method, route template and status.

    The label is the route's template (``/v1/jobs/{job_id}``), never the raw path, so
    random ids and probing scanners cannot blow up the number of series.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, router: Router) -> None:
        self.app = app
        self.metrics = metrics
        self.router = router

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        for candidate in self.router.routes:  # not routed (answered by a middleware)
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                return str(getattr(candidate, "path", UNMATCHED))
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = self._route(scope)
            method = scope.get("method", "GET")
            method = method if method in KNOWN_METHODS else "other"
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.request_seconds.labels(method=method, route=route).observe(
                time.perf_counter() - started
            )
