"""Schemathesis against the real server: what the OpenAPI document promises, the server does.

Requests are generated from the document a server serves, with API keys and without,
sent over real HTTP on loopback, and each answer goes through Schemathesis' checks:
never a 5xx; a status, content type, headers and body the document declares for the
operation; a request the document calls invalid refused with a 4xx; a declared auth
scheme enforced (so none may be declared when the server has no keys); a 405 for a
method the path lacks, with an ``Allow`` that lists exactly the documented methods.

Uploads: schema-valid forms carry random bytes (or Schemathesis' 1x1 grey PNG) as images,
so they end in 415, not 2xx; for the two upload operations "schema-valid data is
accepted" becomes "schema-valid forms get past the form parser" (no 400, no 422 for the
count), and tests/api/test_jobs.py submits real brackets.

The documents are built at collection, where ``parametrize`` needs them
(``schemathesis.pytest.from_fixture``, which would fetch them from the running server,
breaks on pytest 9); test_the_documents_are_the_ones_served proves they are the same.
Bounded: a few examples per operation, no Hypothesis database, no shrinking; about 15 s
on a busy 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.api.app import create_app
from service.config import Settings
from tests.worker.harness import fuzz_server

KEY = "schemathesis-key-0123456789abcdef"
#: Both ways of sending the key: Schemathesis also generates an X-API-Key for the
#: declared scheme, and that header would win over the bearer one.
KEY_HEADERS = {"Authorization": f"Bearer {KEY}", "X-API-Key": KEY}
#: Paths whose schema-valid cases carry random bytes as images.
UPLOADS = frozenset({"/v1/jobs", "/v1/reconstruct"})
#: What a schema-valid upload of random bytes gets: not an image (or too large). Not 400,
#: which would mean the form parser refuses what the document allows (as it refused the
#: null the document once allowed), nor 422, a count of files the document allows.
CONTENT_REFUSALS = frozenset({413, 415})
MAX_EXAMPLES = 8


def _document(api_keys: list[str]) -> dict[str, Any]:
    """The document a server with ``api_keys`` serves (building it touches no network)."""
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0", api_keys=api_keys)).openapi()


open_api = schemathesis.openapi.from_dict(_document([]))
keyed_api = schemathesis.openapi.from_dict(_document([KEY]))


@pytest.fixture(scope="module")
def open_url(redis_url: str, golden_repo: Path) -> Iterator[str]:
    with fuzz_server(redis_url, golden_repo, "schema-fuzz") as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url(redis_url: str, golden_repo: Path) -> Iterator[str]:
    with fuzz_server(redis_url, golden_repo, "schema-fuzz-keyed", api_keys=[KEY]) as url:
        yield url


def test_the_documents_are_the_ones_served(open_url: str, keyed_url: str) -> None:
    for url, schema in ((open_url, open_api), (keyed_url, keyed_api)):
        served = httpx.get(f"{url}/openapi.json", timeout=30)
        assert served.status_code == 200
        assert served.json() == schema.raw_schema


FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _validate(case: Case, base_url: str, headers: dict[str, str] | None = None) -> None:
    """Every Schemathesis check, with uploads judged as the module docstring says."""
    uploads = case.operation.path in UPLOADS
    response = case.call_and_validate(
        base_url=base_url,
        headers=headers,
        excluded_checks=[positive_data_acceptance] if uploads else None,
        timeout=30,
    )
    if uploads and case.meta is not None and case.meta.generation.mode.is_positive:
        assert response.status_code < 300 or response.status_code in CONTENT_REFUSALS, (
            response.status_code,
            response.text[:300],
        )


@open_api.parametrize()
@FUZZ
def test_the_server_without_keys_does_what_its_document_says(case: Case, open_url: str) -> None:
    _validate(case, open_url)


@keyed_api.parametrize()
@FUZZ
def test_the_server_with_keys_does_what_its_document_says(case: Case, keyed_url: str) -> None:
    _validate(case, keyed_url, KEY_HEADERS)
