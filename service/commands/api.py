"""``hdr-service api``: the HTTP API alone, against the Redis of HDR_REDIS_URL."""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

from service.config import Settings, require_storage_url

HELP = "run the HTTP API (needs HDR_REDIS_URL; workers run as separate processes)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default HDR_API_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default HDR_API_PORT, 8000)")


def with_listen_address(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with ``--host``/``--port`` applied."""
    update = {k: v for k, v in (("api_host", args.host), ("api_port", args.port)) if v is not None}
    return Settings.model_validate({**settings.model_dump(), **update}) if update else settings


def serve_http(app: object, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn until SIGINT/SIGTERM, then return after a graceful stop.

    uvicorn re-raises the signal that stopped it once it is done; with the handlers
    installed here that becomes a normal return instead of death by signal, so callers
    can clean up (``serve`` stops its worker and its Redis) and exit with status 0.
    """
    import uvicorn

    def _stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=30,
    )
    try:
        uvicorn.Server(config).run()
    except SystemExit:
        log.info("HTTP server stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_url:
        raise ValueError(
            "HDR_REDIS_URL is not set; `hdr-service serve` runs everything on an embedded Redis"
        )
    require_storage_url(settings)
    from service.api.app import create_app

    settings = with_listen_address(settings, args)
    serve_http(create_app(settings), settings.api_host, settings.api_port)
    return 0
