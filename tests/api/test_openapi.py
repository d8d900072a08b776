"""The OpenAPI document: stable operation ids, file uploads, no null, security as configured.

What the server does with requests the document describes is fuzzed in
tests/api/test_schema_fuzz.py; these tests pin the parts client generators rely on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.config import Settings
from service.imaging import EXPOSURE_COUNT
from tests.worker.harness import api_server

KEY = "openapi-key-0123456789abcdef"
OPERATION_IDS = {
    ("post", "/v1/jobs"): "createJob",
    ("get", "/v1/jobs/{job_id}"): "getJob",
    ("delete", "/v1/jobs/{job_id}"): "cancelJob",
    ("get", "/v1/jobs/{job_id}/result"): "getResult",
    ("post", "/v1/reconstruct"): "reconstruct",
    ("get", "/v1/models"): "listModels",
    ("get", "/healthz"): "checkLiveness",
    ("get", "/readyz"): "checkReadiness",
    ("get", "/v2/health/live"): "checkLivenessV2",
    ("get", "/v2/health/ready"): "checkReadinessV2",
    ("get", "/metrics"): "getMetrics",
}
UPLOADS = (("post", "/v1/jobs"), ("post", "/v1/reconstruct"))


def document(api_keys: list[str]) -> dict[str, Any]:
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0", api_keys=api_keys)).openapi()


def operations(spec: dict[str, Any]) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield (method, path), operation


def form_schema(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    body = spec["paths"][path][method]["requestBody"]["content"]["multipart/form-data"]
    name = body["schema"]["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = spec["components"]["schemas"][name]
    return schema


def test_every_operation_has_its_stable_id() -> None:
    spec = document([])

    ids = {key: operation["operationId"] for key, operation in operations(spec)}

    assert ids == OPERATION_IDS


@pytest.mark.parametrize(("method", "path"), UPLOADS)
def test_exposures_are_exactly_three_binary_files(method: str, path: str) -> None:
    form = form_schema(document([]), method, path)

    exposures = form["properties"]["exposures"]
    assert form["required"] == ["exposures"]
    assert exposures["type"] == "array"
    assert exposures["minItems"] == exposures["maxItems"] == EXPOSURE_COUNT
    assert exposures["items"]["type"] == "string"
    assert exposures["items"]["format"] == "binary"  # what generators turn into a file


def test_form_fields_and_parameters_are_never_null() -> None:
    spec = document([KEY])
    null = {"type": "null"}

    form = form_schema(spec, "post", "/v1/jobs")
    for name, field in form["properties"].items():
        assert null not in field.get("anyOf", []), name
        assert "type" in field, name  # collapsed to the value's own schema
    tile_size = form["properties"]["tile_size"]  # the constraints survive the collapse
    assert (tile_size["type"], tile_size["minimum"], tile_size["maximum"]) == ("integer", 0, 1024)
    assert form["properties"]["model"]["pattern"]
    for key, operation in operations(spec):
        for parameter in operation.get("parameters", []):
            assert null not in parameter["schema"].get("anyOf", []), (key, parameter["name"])


def test_without_keys_the_document_declares_no_security() -> None:
    spec = document([])

    assert "securitySchemes" not in spec.get("components", {})
    for key, operation in operations(spec):
        assert "security" not in operation, key
        assert not {"401", "403"} & set(operation["responses"]), key


def test_with_keys_every_v1_operation_declares_both_schemes() -> None:
    spec = document([KEY])

    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for (method, path), operation in operations(spec):
        if path.startswith("/v1/"):
            assert operation["security"] == [{"bearer": []}, {"apiKey": []}], (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
        else:
            assert "security" not in operation, (method, path)


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/jobs/0123456789abcdef0123456789abcdef", "GET, DELETE"),
        ("PUT", "/v1/jobs/0123456789abcdef0123456789abcdef", "GET, DELETE"),
        ("PATCH", "/v1/jobs", "POST"),
        ("DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef/result", "GET"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_a_405_allows_every_method_of_the_path(
    client: httpx.Client, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)

    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed"
    assert method in error["message"] and allow in error["message"]
