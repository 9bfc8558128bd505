"""The OpenAPI document as generated clients read it, validated, and the streamed events and
WebSocket frames a real turn sends checked against the schemas it documents."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import websockets
from openapi_spec_validator import validate
from pydantic import BaseModel

from api.events import SSE_EVENTS, WS_SERVER_FRAMES
from services.core.errors import ChatifyError
from tests.api.conftest import API, Live, collect
from tests.api.test_ws import turn_events, ws_url


async def spec_of(live: Live) -> dict[str, Any]:
    """The document the service serves."""
    spec: dict[str, Any] = (await live.client.get("/openapi.json")).json()
    return spec


def conforms(model: type[BaseModel], data: Any) -> bool:
    """Whether data fits the model's JSON Schema, as a generated client would read it."""
    return bool(jsonschema_rs.validator_for(model.model_json_schema()).is_valid(data))


async def test_the_document_is_valid_and_reads_well_in_generated_clients(live: Live) -> None:
    spec = await spec_of(live)
    validate(spec)
    operations = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    ids = [op["operationId"] for _, _, op in operations]
    assert len(ids) == len(set(ids))
    assert {"create_session", "send_message", "stream_message", "list_user_sessions"} <= set(ids)
    assert all("api_v1" not in name and len(name) <= 32 for name in ids), ids

    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer" and schemes["apiKeyAuth"]["in"] == "header"
    for path, _, op in operations:
        assert ("security" in op) == (path not in ("/health", "/ready")), path
        for status, response in op["responses"].items():
            if status[0] in "45":
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (path, status)
    assert "HTTPValidationError" not in json.dumps(spec)

    codes = set(spec["components"]["schemas"]["ErrorInfo"]["properties"]["code"]["enum"])
    pending = list(ChatifyError.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        assert cls.code in codes, cls
    assert {"validation_error", "bad_frame", "method_not_allowed"} <= codes

    schemas = spec["components"]["schemas"]
    assert schemas["MessageBody"]["properties"]["timestamp"]["format"] == "date-time"
    ended = schemas["SessionDetail"]["properties"]["ended_at"]["anyOf"]
    assert {"type": "string", "format": "date-time"} in ended

    stream = spec["paths"][f"{API}/session/{{session_id}}/message/stream"]["post"]
    events = stream["responses"]["200"]["content"]["text/event-stream"]["x-sse-events"]
    assert set(events) == {"start", "delta", "tool_call", "tool_result", "done", "error"}
    socket = spec["x-websocket"]
    assert set(socket["serverFrames"]) == set(WS_SERVER_FRAMES)
    for ref in [
        *events.values(),
        *socket["serverFrames"].values(),
        *socket["clientFrames"].values(),
    ]:
        assert ref["$ref"].rsplit("/", 1)[1] in schemas


async def test_real_events_and_frames_fit_their_documented_schemas(live: Live) -> None:
    session_id = await live.create_session()
    async with live.stream(session_id, "hi", body={"client_message_id": "s1"}) as response:
        sse = await collect(response)
    assert sse[0].event == "start" and sse[-1].event == "done"
    for event in sse:
        assert conforms(SSE_EVENTS[event.event], event.json()), event

    async with websockets.connect(ws_url(live, session_id)) as ws:
        frames = [json.loads(await ws.recv())]
        await ws.send(
            json.dumps({"type": "user_message", "message": "yo", "client_message_id": "w"})
        )
        frames += await turn_events(ws)
        await ws.send(json.dumps({"type": "typing"}))
        frames += await turn_events(ws)
    assert [f["type"] for f in frames][0] == "chat_history" and frames[-1]["type"] == "error"
    for frame in frames:
        assert conforms(WS_SERVER_FRAMES[frame["type"]], frame), frame
    assert not conforms(WS_SERVER_FRAMES["ai_response"], {"type": "ai_response"})
