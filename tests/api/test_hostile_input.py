"""Issue 12: hostile uploads and slow clients cannot freeze the API, and a 202 means the
pixels are all there. Real uvicorn on loopback, real sockets."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from service.config import Settings
from service.queue import Broker
from tests.factories import bracket_frames, exposure_files
from tests.imaging.builders import PNG_SIGNATURE, pillow_bytes, png_bytes, png_chunk, png_ihdr
from tests.worker.harness import api_server

#: The issue's crafted JPEG: SOI, 1.5 M empty comments (6 MB), then a real 96x64 JPEG.
CRAFTED_COMMENTS = 1_500_000
#: The liveness answer must not wait for anyone's upload checks.
HEALTHZ_MEDIAN_SECONDS = 0.1
BODY_TIMEOUT = 0.5


@pytest.fixture
def hardened(service_settings: Settings) -> Settings:
    return service_settings.model_copy(
        update={
            "max_upload_bytes": 8 * 1024 * 1024,
            "max_pixels": 100_000_000,
        }
    )


@pytest.fixture
def url(hardened: Settings) -> Iterator[str]:
    with api_server(hardened) as base:
        yield base


@pytest.fixture
def impatient_url(hardened: Settings) -> Iterator[str]:
    """An API that waits only BODY_TIMEOUT for each piece of a body."""
    with api_server(
        hardened.model_copy(update={"body_read_timeout_seconds": BODY_TIMEOUT})
    ) as base:
        yield base


def _crafted_jpeg(seed: int) -> bytes:
    frame = bracket_frames(64, 96, (0.0,), seed=seed, bits=8)[0]
    return b"\xff\xd8" + b"\xff\xfe\x00\x02" * CRAFTED_COMMENTS + pillow_bytes(frame, "JPEG")


def _big_png(width: int, height: int, seed: int) -> bytes:
    """A valid PNG of ``width x height`` noisy but repeating rows: small to send, ~100 MB
    to inflate, so checking it takes real time off the event loop."""
    row = np.random.default_rng(seed).integers(0, 256, 1 + 3 * width, dtype=np.uint8)
    row[0] = 0  # filter type None
    deflate = zlib.compressobj(1)
    parts = [deflate.compress(row.tobytes() * 100) for _ in range(height // 100)]
    parts += [deflate.compress(row.tobytes() * (height % 100)), deflate.flush()]
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height, 8, 2)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def _assert_error(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], (word, error["message"])


def test_crafted_jpeg_headers_are_refused_quickly_with_415(url: str) -> None:
    uploads = [(f"crafted{i}.jpg", _crafted_jpeg(i)) for i in range(3)]
    with httpx.Client(base_url=url, timeout=60) as client:
        started = time.monotonic()
        response = client.post(
            "/v1/jobs", files=exposure_files(uploads), data={"exposure_values": "-2,0,2"}
        )
        elapsed = time.monotonic() - started
    _assert_error(response, 415, "unsupported_image", "crafted0.jpg", "markers")
    assert elapsed < 10, f"refusing took {elapsed:.1f} s (the unbounded walk took over 20 s)"


@pytest.mark.anyio
async def test_healthz_answers_while_three_crafted_uploads_are_probed(
    url: str, broker: Broker
) -> None:
    """The checks run off the event loop: /healthz stays fast throughout.

    Three requests of three crafted 6 MB JPEGs each, and one of three large PNGs whose
    pixel streams take real work to inflate, are in flight together; /healthz is pinged
    one after another for as long as any of them is, and the median answer must be fast.
    """
    crafted = [[(f"r{r}-{i}.jpg", _crafted_jpeg(i)) for i in range(3)] for r in range(3)]
    sizes = [(6000, 6000), (6000, 6000), (6000, 5992)]  # the last differs: 422 after probing
    heavy = [(f"big{i}.png", _big_png(w, h, i)) for i, (w, h) in enumerate(sizes)]
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        assert (await client.get("/healthz")).status_code == 200  # connection warm

        async def submit(uploads: list[tuple[str, bytes]]) -> httpx.Response:
            return await client.post(
                "/v1/jobs", files=exposure_files(uploads), data={"exposure_values": "-2,0,2"}
            )

        posts = [asyncio.create_task(submit(u)) for u in [*crafted, heavy]]
        latencies: list[float] = []
        while not all(post.done() for post in posts):
            started = time.perf_counter()
            answer = await client.get("/healthz")
            latencies.append(time.perf_counter() - started)
            assert answer.status_code == 200
            await asyncio.sleep(0.01)
        responses = [await post for post in posts]
    for response in responses[:3]:
        _assert_error(response, 415, "unsupported_image", "markers")
    _assert_error(responses[3], 422, "invalid_exposure_set")
    assert await broker.queue_depth() == 0
    assert len(latencies) >= 5, latencies
    median = statistics.median(latencies)
    assert median < HEALTHZ_MEDIAN_SECONDS, (
        f"/healthz median {median * 1000:.0f} ms over {len(latencies)} pings"
    )


@pytest.mark.parametrize("keep", [0.6, 0.9])
def test_an_exposure_cut_short_is_422_naming_the_file(url: str, keep: float) -> None:
    frames = bracket_frames(48, 64, bits=16)
    uploads = [(f"ev{i}.png", png_bytes(frame)) for i, frame in enumerate(frames)]
    name, data = uploads[1]
    uploads[1] = (name, data[: int(len(data) * keep)])
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(
            "/v1/jobs", files=exposure_files(uploads), data={"exposure_values": "-2,0,2"}
        )
    _assert_error(response, 422, "incomplete_image", "ev1.png", "truncated PNG")


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_whose_body_never_comes_is_answered_408_and_closed(impatient_url: str) -> None:
    port = int(impatient_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"
        )
        started = time.monotonic()
        answer = _read_answer(sock)  # the server closes: recv returns b""
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"request_timeout"' in answer
    assert 0.8 * BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + 5  # the server's clock starts first


def test_a_slow_but_steady_body_is_not_cut_off(impatient_url: str) -> None:
    port = int(impatient_url.rsplit(":", 1)[1])
    body = b'--x\r\nContent-Disposition: form-data; name="exposure_values"\r\n\r\n0\r\n--x--\r\n'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for start in range(0, len(body), 16):  # four pieces, each well within the timeout
            time.sleep(BODY_TIMEOUT / 3)
            sock.sendall(body[start : start + 16])
        answer = _read_answer(sock)
    # the whole body arrived: the form is judged (no files), not timed out
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"exposures" in answer


def test_files_whose_checks_outlast_the_probe_deadline_are_413(hardened: Settings) -> None:
    """8000 x 8000 PNGs: 192 MB to inflate each, far more than the 5 ms allowed here."""
    hurried = hardened.model_copy(update={"probe_timeout_seconds": 0.005})
    uploads = [(f"big{i}.png", _big_png(8000, 8000, i)) for i in range(3)]
    with api_server(hurried) as base, httpx.Client(base_url=base, timeout=60) as client:
        response = client.post(
            "/v1/jobs", files=exposure_files(uploads), data={"exposure_values": "-2,0,2"}
        )
        assert client.get("/healthz").status_code == 200
    _assert_error(response, 413, "image_too_large", "big0.png", "took longer than 0.005 s")
