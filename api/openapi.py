"""The OpenAPI document as generated clients read it: short operation ids, the two ways to
authenticate, one typed error body with its codes as an enum, timestamps as ``date-time``,
and the SSE events and WebSocket frames as schemas (``x-sse-events``, ``x-websocket``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from api.errors import DOCS, error_codes
from api.events import SSE_EVENT_SCHEMA, SSE_EVENTS, WS_CLIENT_FRAMES, WS_SERVER_FRAMES

PUBLIC_PATHS = {"/health", "/ready"}
TIMESTAMP_FIELDS = {
    "created_at",
    "last_activity",
    "ended_at",
    "timestamp",
    "exported_at",
    "saved_at",
    "updated_at",
    "createdAt",
    "updatedAt",
    "last_used",
    "resets_at",
}
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, or a Firebase ID token (AUTH_MODE=firebase)",
    },
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
STREAM_PATH = "/api/v1/chatbot/session/{session_id}/message/stream"
# Every route that streams a turn's events: a message, a regenerate, an edit.
TURN_STREAMS = (
    (STREAM_PATH, "post"),
    ("/api/v1/chatbot/session/{session_id}/regenerate/stream", "post"),
    ("/api/v1/chatbot/session/{session_id}/messages/{seq}/stream", "patch"),
)
WS_PATH = "/api/v1/chatbot/session/{session_id}/ws"
_REF = "#/components/schemas/{model}"


def operation_id(route: APIRoute) -> str:
    """The route function's name: ``create_session``, ``send_message``… A function that
    serves PUT beside PATCH (Chatify's frontend uses both) is ``…_put`` for PUT."""
    return f"{route.name}_put" if route.methods == {"PUT"} else route.name


def install_openapi(app: FastAPI) -> None:
    """Serve the refined document at /openapi.json (built once)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = refine(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def refine(spec: dict[str, Any]) -> dict[str, Any]:
    """Apply every refinement to FastAPI's document."""
    schemas: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})
    spec["components"]["securitySchemes"] = SECURITY_SCHEMES
    _unique_operation_ids(spec)
    for path, _, operation in _operations(spec):
        if path not in PUBLIC_PATHS:
            operation["security"] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
        _one_error_body(operation)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["ErrorInfo"]["properties"]["code"]["enum"] = error_codes()
    _add_models(
        schemas, [*SSE_EVENTS.values(), *WS_CLIENT_FRAMES.values(), *WS_SERVER_FRAMES.values()]
    )
    _stream_events(spec)
    spec["x-websocket"] = {
        "path": WS_PATH,
        "description": "Turns over one socket; see docs/streaming.md. Authenticate like HTTP "
        "or with `?token=`. Closes with 4401, 4403, 4404, 4409 or 4429.",
        "clientFrames": {name: _ref(model) for name, model in WS_CLIENT_FRAMES.items()},
        "serverFrames": {name: _ref(model) for name, model in WS_SERVER_FRAMES.items()},
    }
    for schema in schemas.values():
        _timestamps(schema)
    return spec


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            yield path, method, operation


def _unique_operation_ids(spec: dict[str, Any]) -> None:
    """One function serving PUT and PATCH gets one id per method: ``update_rules`` (PATCH)
    and ``update_rules_put``."""
    seen: set[str] = set()
    for _, method, operation in sorted(_operations(spec), key=lambda o: o[1] != "patch"):
        name = operation["operationId"]
        if name in seen:
            name = operation["operationId"] = f"{name}_{method}"
        seen.add(name)


def _one_error_body(operation: dict[str, Any]) -> None:
    for status, response in operation.get("responses", {}).items():
        if status.startswith(("4", "5")):
            response["content"] = {
                "application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}
            }
            if status == "422":
                response["description"] = DOCS[422]


def _add_models(schemas: dict[str, Any], models: list[type[BaseModel]]) -> None:
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        for name, nested in schema.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas.setdefault(model.__name__, schema)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _stream_events(spec: dict[str, Any]) -> None:
    for path, method in TURN_STREAMS:
        content = spec["paths"][path][method]["responses"]["200"]["content"]
        content["text/event-stream"] = {
            "schema": {**SSE_EVENT_SCHEMA, "description": "One event; `data` per `x-sse-events`"},
            "x-sse-events": {name: _ref(model) for name, model in SSE_EVENTS.items()},
        }


def _timestamps(schema: Any) -> None:
    """``format: date-time`` on every timestamp property, nullable ones included."""
    if not isinstance(schema, dict):
        return
    for name, prop in schema.get("properties", {}).items():
        if name in TIMESTAMP_FIELDS:
            for option in [prop, *prop.get("anyOf", [])]:
                if option.get("type") == "string":
                    option["format"] = "date-time"
