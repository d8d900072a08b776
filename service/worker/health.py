"""The worker's own HTTP port: /metrics, /healthz, /readyz and the KServe v2 health paths.

The only HTTP a worker speaks. It runs in the worker's event loop (inference runs in a
thread, so the loop stays responsive during a job) on a socket bound here, so that a port
already taken is an ``OSError`` the worker can report instead of uvicorn exiting the
process. Signals stay the worker's: uvicorn's own handlers are not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Final, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.metrics import WorkerMetrics, exposition
from service.queue import Broker

log = logging.getLogger(__name__)

#: A readiness answer must come within a probe's usual 1 s timeout.
READY_TIMEOUT_SECONDS: Final = 0.8


class HealthSource(Protocol):
    """What the health app asks the worker."""

    broker: Broker
    metrics: WorkerMetrics

    def not_ready_reason(self) -> str | None:
        """None when ready to take jobs, else why not."""
        ...


def build_health_app(worker: HealthSource) -> Starlette:
    """The Starlette app of the worker's port."""

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        reason = worker.not_ready_reason()
        if reason is None and not await worker.broker.ping(READY_TIMEOUT_SECONDS):
            reason = "Redis (the job queue) does not answer"
        if reason is not None:
            return JSONResponse(
                {"error": {"code": "not_ready", "message": reason}}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    async def metrics(_: Request) -> Response:
        await worker.metrics.queue.refresh(worker.broker)
        body, media_type = exposition(worker.metrics.registry)
        return Response(body, media_type=media_type)

    paths = {
        "/healthz": live,
        "/v2/health/live": live,
        "/readyz": ready,
        "/v2/health/ready": ready,
        "/metrics": metrics,
    }
    return Starlette(
        routes=[Route(path, handler, methods=["GET"]) for path, handler in paths.items()]
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM means "drain" to the worker."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HealthServer:
    """The health app served on ``host:port`` (port 0: any free one) in the running loop."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve; raises ``OSError`` when the port cannot be bound."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(False)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self._app, log_level="warning", access_log=False, lifespan="off")
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            raise OSError(f"the health server did not start: {self._task.exception()!r}")
        log.info("worker metrics and health on http://%s:%s", self._host, self.port)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
