"""The API process itself: torch-free, nothing at import time, every route documented."""

from __future__ import annotations

import pytest

from service.api.app import create_app
from service.cli import EXIT_USER_ERROR, main
from service.config import Settings
from tests.factories import run_python


def test_the_api_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from service.config import Settings\n"
        "from service.api.app import create_app\n"
        "import service.commands.api, service.commands.serve\n"
        "create_app(Settings(redis_url='redis://127.0.0.1:1/0'))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    run_python(code)


def test_openapi_documents_every_route_field_and_error() -> None:
    keyed = Settings(redis_url="redis://127.0.0.1:1/0", api_keys=["app-key-0123456789abcdef"])
    spec = create_app(keyed).openapi()
    paths = spec["paths"]
    assert set(paths) >= {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/result",
        "/v1/reconstruct",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/metrics",
    }
    submit = paths["/v1/jobs"]["post"]
    statuses = {"202", "400", "401", "403", "413", "415", "422", "429", "503", "4XX"}
    assert set(submit["responses"]) == statuses
    schemas = spec["components"]["schemas"]
    form = schemas["JobCreate"]["properties"]
    assert set(form) == {
        "exposures",
        "exposure_values",
        "exposure_times",
        "tile_size",
        "model",
        "webhook_url",
    }
    for schema in ("JobCreate", "JobPublic", "ModelPublic"):
        for name, field in schemas[schema]["properties"].items():
            if "$ref" not in field:
                assert field.get("description"), f"{schema}.{name} has no description"
    assert "HTTPValidationError" not in schemas  # validation errors use ErrorBody (400)
    result = paths["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]
    assert set(result) == {"image/x-exr", "image/vnd.radiance", "image/png"}
    assert {"bearer", "apiKey"} <= set(spec["components"]["securitySchemes"])


@pytest.mark.parametrize("command", [["api"], ["worker"], ["worker", "--check"]])
def test_commands_that_need_redis_refuse_to_start_without_it(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HDR_REDIS_URL", raising=False)

    assert main(command) == EXIT_USER_ERROR

    assert "HDR_REDIS_URL" in capsys.readouterr().err


def test_weak_api_keys_refuse_to_start_and_are_never_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HDR_API_KEYS", "hunter2")
    monkeypatch.setenv("HDR_REDIS_URL", "redis://127.0.0.1:1/0")

    with pytest.raises(ValueError, match="shorter than 16") as refused:
        Settings()

    assert "hunter2" not in str(refused.value)
