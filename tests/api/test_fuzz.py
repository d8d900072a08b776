"""Hundreds of malformed requests against the real server: never a 5xx, always our error body.

Hypothesis composes requests from the contract's routes with hostile parts: random and
truncated files, bombs, PNG headers of any size, wrong field names and types, odd
headers, raw bodies with lying content types. No worker runs (a valid job just queues).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.config import Settings
from service.queue import Keys
from tests.factories import bracket_uploads, tiff_file
from tests.imaging.builders import png_bomb, png_ihdr, tiff_bytes
from tests.worker.harness import api_server

VALID = bracket_uploads(24, 32)
FIELDS = ("exposures", "exposure_values", "exposure_times", "tile_size", "model")
JOB_ID = "0123456789abcdef0123456789abcdef"

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
numbers = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**9), 10**9)),
    max_size=5,
).map(lambda xs: ",".join(str(x) for x in xs))
files = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([data for _, data in VALID]),
    st.sampled_from([data for _, data in VALID]).flatmap(
        lambda data: st.integers(0, len(data)).map(lambda n: data[:n])
    ),
    st.tuples(st.integers(0, 2**31), st.integers(0, 2**31)).map(
        lambda wh: b"\x89PNG\r\n\x1a\n" + png_ihdr(wh[0], wh[1], 8, 2)
    ),
    st.just(png_bomb()),
    st.just(tiff_file(np.zeros((4, 4, 3), np.uint8))),
    st.just(tiff_bytes(np.zeros((20, 20), np.uint16))),  # grayscale
)
random_parts = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(FIELDS), printable),
        st.one_of(
            files.map(lambda b: ("file", b)),
            st.one_of(printable, numbers).map(lambda t: ("text", t)),
        ),
    ),
    max_size=6,
)
#: Forms close to a valid one (mostly three images and the known fields), so that the
#: checks past the parser (probe, sizes, EVs, tile size, model) get exercised too.
near_valid_parts = st.builds(
    lambda images, fields: (
        [("exposures", ("file", image)) for image in images]
        + [(name, ("text", text)) for name, text in fields.items()]
    ),
    st.one_of(
        st.just([data for _, data in VALID]),
        st.permutations([data for _, data in VALID]),
        st.lists(st.one_of(st.sampled_from([data for _, data in VALID]), files), max_size=4),
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "exposure_values": st.one_of(st.just("-2,0,2"), st.just("1 3 2"), numbers, printable),
            "exposure_times": st.one_of(st.just("0.01,0.04,0.16"), numbers),
            "tile_size": st.one_of(st.integers(-10, 5000).map(str), printable),
            "model": st.one_of(st.just("afunet"), printable),
        },
    ),
)
parts = st.one_of(random_parts, near_valid_parts)
headers = st.dictionaries(
    st.sampled_from(["Idempotency-Key", "Authorization", "X-API-Key", "Content-Type", "Accept"]),
    printable,
    max_size=3,
)


@pytest.fixture(scope="module")
def client(
    redis_url: str, golden_repo: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    prefix = f"test-fuzz-{uuid.uuid4().hex[:8]}"
    fuzz_settings = Settings(
        redis_url=redis_url,
        storage_url=f"file://{tmp_path_factory.mktemp('fuzz-blobs')}",
        key_prefix=prefix,
        model_repo=golden_repo,
        max_queue_length=20,
        job_ttl_seconds=60,
        sync_wait_seconds=0.1,
        max_upload_bytes=200_000,
        max_pixels=1_000_000,
    )
    with api_server(fuzz_settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http
    cleanup = redis.Redis.from_url(redis_url) if "://" in redis_url else None
    if cleanup is not None:
        keys = list(cleanup.scan_iter(match=Keys(prefix).all_keys_pattern(), count=500))
        if keys:
            cleanup.delete(*keys)
        cleanup.close()


def check(response: httpx.Response) -> None:
    event(f"status {response.status_code}")  # --hypothesis-show-statistics shows the mix
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str) and error["message"]


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(["/v1/jobs", "/v1/reconstruct"]),
    form=parts,
    extra_headers=headers,
    query=st.dictionaries(st.sampled_from(["format", "dtype"]), printable, max_size=2),
)
def test_malformed_submissions_never_get_a_5xx(
    client: httpx.Client,
    path: str,
    form: list[tuple[str, tuple[str, Any]]],
    extra_headers: dict[str, str],
    query: dict[str, str],
) -> None:
    multipart: list[tuple[str, Any]] = []
    for name, (kind, payload) in form:
        if kind == "file":
            multipart.append((name, ("upload.bin", payload)))
        else:
            multipart.append((name, (None, payload)))
    extra_headers.pop("Content-Type", None)  # httpx sets the multipart boundary
    try:
        response = client.post(path, files=multipart or None, headers=extra_headers, params=query)
    except httpx.LocalProtocolError:
        return  # a header httpx itself refuses to send
    check(response)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
    path=st.one_of(
        st.sampled_from(
            [
                "/v1/jobs",
                "/v1/reconstruct",
                f"/v1/jobs/{JOB_ID}",
                f"/v1/jobs/{JOB_ID}/result",
                "/v1/models",
                "/healthz",
                "/readyz",
                "/metrics",
            ]
        ),
        printable.map(lambda text: "/v1/jobs/" + text.replace("?", "").replace("#", "")),
    ),
    body=st.binary(max_size=2000),
    content_type=st.one_of(
        st.sampled_from(
            [
                "multipart/form-data",
                "multipart/form-data; boundary=x",
                "application/json",
                "application/x-www-form-urlencoded",
                "text/plain",
            ]
        ),
        printable,
    ),
)
def test_raw_bodies_and_paths_never_get_a_5xx(
    client: httpx.Client, method: str, path: str, body: bytes, content_type: str
) -> None:
    try:
        response = client.request(
            method, path, content=body, headers={"Content-Type": content_type}
        )
    except (httpx.LocalProtocolError, httpx.InvalidURL):
        return
    check(response)
