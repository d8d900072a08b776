"""Retries, redirects and failures of ``service.client`` against real HTTP on loopback.

A small ``http.server`` in a thread plays the API: it answers from a script of
(status, headers, body) per request and records what it received, so that 429/503 with
``Retry-After``, a redirect to another origin, and a body that is not the API's can be
produced on demand, which a healthy service never does.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from service.api.schemas import ErrorBody, ErrorDetail, JobPublic, Progress
from service.client import Client, ClientError, RetryPolicy, retry_after_seconds
from service.queue import JobState

Answer = tuple[int, dict[str, str], bytes]
JOB_ID = "ab" * 16


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    at: float


@dataclass
class Script:
    """Answers to give, in order, and the requests received."""

    answers: list[Answer]
    seen: list[Seen] = field(default_factory=list)


@contextmanager
def scripted_server(*answers: Answer) -> Iterator[tuple[str, Script]]:
    """A loopback HTTP server giving ``answers`` in turn (the last one ever after)."""
    script = Script(list(answers))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            script.seen.append(
                Seen(self.command, self.path, dict(self.headers.items()), time.monotonic())
            )
            status, headers, body = script.answers[min(len(script.seen), len(script.answers)) - 1]
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def scripted_client(*answers: Answer, **options: Any) -> Iterator[tuple[Client, Script]]:
    """A :class:`Client` of a :func:`scripted_server` giving ``answers``."""
    with scripted_server(*answers) as (url, script), Client(url, **options) as client:
        yield client, script


def _job(status: JobState = JobState.QUEUED) -> Answer:
    job = JobPublic(
        id=JOB_ID,
        status=status,
        progress=Progress(tiles_done=0, tiles_total=0),
        model=None,
        engine=None,
        width=100,
        height=72,
        exposure_values=[0.0, 2.0, 4.0],
        attempts=0,
        created_at=datetime.now(timezone.utc),
        started_at=None,
        finished_at=None,
        timings={},
        error=None,
        status_url=f"/v1/jobs/{JOB_ID}",
        result_url=f"/v1/jobs/{JOB_ID}/result",
    )
    return 202, {"Content-Type": "application/json"}, job.model_dump_json().encode()


def _error(status: int, code: str, retry_after: str | None = None) -> Answer:
    body = ErrorBody(error=ErrorDetail(code=code, message=f"{code}, as scripted"))
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return status, headers, body.model_dump_json().encode()


EXPOSURES = [b"short", b"mid", b"long"]  # the scripted server does not look


def test_a_503_is_retried_after_its_retry_after_with_the_same_idempotency_key() -> None:
    with scripted_client(_error(503, "unavailable", "1"), _job()) as (client, script):
        job = client.submit(EXPOSURES, evs=(-2, 0, 2))

    assert job.id == JOB_ID and [s.method for s in script.seen] == ["POST", "POST"]
    assert script.seen[1].at - script.seen[0].at >= 0.9  # it waited as told
    keys = {s.headers["Idempotency-Key"] for s in script.seen}
    assert len(keys) == 1, "a retry is the same submission"


def test_a_429_with_an_http_date_is_retried() -> None:
    when = format_datetime(datetime.now(timezone.utc), usegmt=True)  # "now": no wait
    with scripted_client(_error(429, "queue_full", when), _job(JobState.RUNNING)) as (
        client,
        script,
    ):
        job = client.job(JOB_ID)

    assert job.status is JobState.RUNNING and len(script.seen) == 2
    assert script.seen[0].path == f"/v1/jobs/{JOB_ID}"


def test_retries_stop_after_the_attempts_of_the_policy() -> None:
    policy = RetryPolicy(attempts=3)
    with (
        scripted_client(_error(503, "unavailable", "0"), retry=policy) as (client, script),
        pytest.raises(ClientError) as exc,
    ):
        client.job(JOB_ID)

    assert len(script.seen) == 3
    assert (exc.value.status, exc.value.code) == (503, "unavailable")
    assert exc.value.message == "unavailable, as scripted" and exc.value.retry_after == 0
    assert exc.value.retryable  # later, it may pass


def test_a_retry_after_beyond_the_wait_budget_is_raised_at_once() -> None:
    with (
        scripted_client(_error(429, "queue_full", "3600"), _job()) as (client, script),
        pytest.raises(ClientError) as exc,
    ):
        client.submit(EXPOSURES)

    assert len(script.seen) == 1
    assert (exc.value.status, exc.value.retry_after) == (429, 3600)


def test_other_refusals_are_never_retried() -> None:
    with (
        scripted_client(_error(422, "invalid_exposure_set"), _job()) as (client, script),
        pytest.raises(ClientError) as exc,
    ):
        client.submit(EXPOSURES)

    assert len(script.seen) == 1 and exc.value.code == "invalid_exposure_set"
    assert not exc.value.retryable


def test_an_answer_that_is_not_the_api_s_still_says_what_came_back() -> None:
    page = (502, {"Content-Type": "text/html"}, b"<html>\nBad Gateway\n</html>")
    with scripted_client(page) as (client, _script), pytest.raises(ClientError) as exc:
        client.job(JOB_ID)

    assert (exc.value.status, exc.value.code) == (502, "http_error")
    assert "Bad Gateway" in exc.value.message and "\n" not in exc.value.message


def test_the_result_follows_a_redirect_without_taking_the_key_elsewhere() -> None:
    """How a blob store's presigned URL is reached: the key stays with the API."""
    blob = (200, {"Content-Type": "image/x-exr"}, b"the result bytes")
    with scripted_server(blob) as (store_url, store):
        moved = (307, {"Location": f"{store_url}/bucket/result.exr?signature=x"}, b"")
        answers = (_job(JobState.SUCCEEDED), moved)
        with scripted_client(*answers, api_key="secret-key") as (client, api):
            data = client.job(JOB_ID).result(format="exr", dtype="float32")

    assert data == b"the result bytes"
    assert api.seen[1].path == f"/v1/jobs/{JOB_ID}/result?format=exr&dtype=float32"
    assert api.seen[1].headers["Authorization"] == "Bearer secret-key"
    assert store.seen[0].path == "/bucket/result.exr?signature=x"
    assert "Authorization" not in store.seen[0].headers


def test_an_unreachable_service_is_a_client_error() -> None:
    with scripted_server(_job()) as (url, _script):
        pass  # closed again: nothing listens on its port now
    with Client(url) as client, pytest.raises(ClientError) as exc:
        client.job(JOB_ID)

    assert exc.value.status is None and exc.value.code == "unreachable"
    assert url in exc.value.message


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("Thu, 01 Jan 2026 00:01:40 GMT", 100.0),
        ("Thu, 01 Jan 2026 00:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(
    header: str | None, seconds: float | None
) -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    assert retry_after_seconds(header, now=now) == seconds


def test_a_service_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as listener:  # accepts connections (the backlog), answers nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with Client(url, timeout=0.3) as client, pytest.raises(ClientError) as exc:
            client.job(JOB_ID)

    assert exc.value.status is None and exc.value.code == "timeout"
    assert f"GET /v1/jobs/{JOB_ID}" in exc.value.message
