"""The OpenAPI document, made to say exactly what this server does.

FastAPI derives the document from the routes; two things it derives cannot be right
from the declarations alone, and are corrected here, in one place:

- **Security.** The ``/v1`` routes always depend on the key schemes (that dependency is
  what lets a request through when ``HDR_API_KEYS`` is empty), so FastAPI always lists
  them. Without keys the server asks for none and never answers 401 or 403: the document
  then declares no security schemes, no ``security`` and no 401/403 answers.
- **Null.** Form fields, headers and query parameters arrive as text: a client cannot
  send null, and the text "null" is refused by an integer or pattern-checked field. An
  optional one is documented as not required, without the ``null`` branch that pydantic
  gives an ``X | None`` field (which also keeps generated clients from offering
  ``None`` as a value to send).

Everything else (operation ids, the file array of ``exposures``, error bodies) is
declared where the route or the schema is, and :func:`install_openapi` only rewrites
what those declarations produce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from fastapi import FastAPI

#: Request body media types whose fields are text parts, never JSON values.
FORM_MEDIA_TYPES: Final = ("multipart/form-data", "application/x-www-form-urlencoded")
#: Answers only a server with API keys gives.
AUTH_STATUSES: Final = ("401", "403")
_NULL: Final = {"type": "null"}


def install_openapi(app: FastAPI, *, auth: bool) -> None:
    """Serve ``app``'s document corrected as the module docstring says; ``auth``: keys set."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()  # FastAPI's own, cached until the routes change
        contract(document, auth=auth)
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented hook


def contract(document: dict[str, Any], *, auth: bool) -> dict[str, Any]:
    """Correct ``document`` in place (idempotent: it may run on the cached document again)."""
    components = document.get("components", {})
    if not auth:
        components.pop("securitySchemes", None)
    for operation in _operations(document):
        if not auth:
            operation.pop("security", None)
            for status in AUTH_STATUSES:
                operation.get("responses", {}).pop(status, None)
        for parameter in operation.get("parameters", []):
            if "schema" in parameter:
                parameter["schema"] = _without_null(parameter["schema"])
        for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
            if media_type in FORM_MEDIA_TYPES:
                form = _resolve(document, content.get("schema", {}))
                properties = form.get("properties", {})
                for name, schema in properties.items():
                    properties[name] = _without_null(schema)
    return document


def _operations(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for item in document.get("paths", {}).values():
        for method, operation in item.items():
            if method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}:
                yield operation


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a local ``$ref`` points at (``#/components/schemas/JobCreate``)."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    target: dict[str, Any] = document
    for part in ref[2:].split("/"):
        target = target[part]
    return target


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its ``null`` branch: ``anyOf [X, null]`` becomes X itself."""
    branches = schema.get("anyOf")
    if not isinstance(branches, list) or _NULL not in branches:
        return schema
    rest = [branch for branch in branches if branch != _NULL]
    outer = {key: value for key, value in schema.items() if key != "anyOf"}
    if len(rest) == 1:
        return {**rest[0], **outer}
    return {**outer, "anyOf": rest}
