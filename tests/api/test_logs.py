"""LOG_FORMAT=json: one JSON object per line, with the request id, the request's route, status
and latency, and a turn's fields; message text only with LOG_MESSAGE_CONTENT=true. (The real
process, with several workers, is tests/drills/test_workers.py.)"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from api.logs import JsonFormatter
from api.middleware import CredentialRedactor
from tests.api.conftest import API
from tests.conftest import FakeClock, SettingsFactory, running_app

SECRET = "my secret diary entry"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def backend() -> str:
    """Logging does not depend on the store: SQLite only."""
    return "sqlite"


@pytest.fixture
def json_lines(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """What a JSON handler on the root logger writes, as ``python -m api`` configures it."""
    caplog.set_level(logging.INFO)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CredentialRedactor())
    logging.getLogger().addHandler(handler)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)


def parsed(text: str) -> list[dict[str, Any]]:
    """Every line as JSON (each must parse)."""
    return [json.loads(line) for line in text.splitlines() if line]


def one(lines: list[dict[str, Any]], logger: str, **fields: Any) -> dict[str, Any]:
    """The only line of ``logger`` with these fields."""
    found = [
        line
        for line in lines
        if line["logger"] == logger and all(line.get(k) == v for k, v in fields.items())
    ]
    assert len(found) == 1, (logger, fields, lines)
    return found[0]


@pytest.mark.parametrize("log_content", [False, True])
async def test_a_turn_logs_one_json_line_with_its_fields(
    make_settings: SettingsFactory,
    clock: FakeClock,
    json_lines: io.StringIO,
    log_content: bool,
) -> None:
    async with running_app(make_settings(log_message_content=log_content), clock) as chat:
        session_id = await chat.create_session("pirate")
        response = await chat.send(session_id, SECRET, client_message_id="c1")
    body = response.json()
    assert response.headers["x-request-id"]
    lines = parsed(json_lines.getvalue())

    turn = one(lines, "services.conversation.turns", session_id=session_id)
    assert TIMESTAMP.match(turn["timestamp"]) and turn["level"] == "INFO"
    assert turn["request_id"] == response.headers["x-request-id"]
    expected = {
        "turn": 1,
        "template": "pirate",
        "provider": "default",
        "model": "gpt-test-pirate",
        "prompt_tokens": body["usage"]["prompt_tokens"],
        "completion_tokens": body["usage"]["completion_tokens"],
    }
    assert {key: turn[key] for key in expected} == expected
    assert isinstance(turn["latency_ms"], float) and turn["latency_ms"] >= 0
    # The text of the messages only where LOG_MESSAGE_CONTENT=true asks for it.
    assert (SECRET in turn["message"]) is log_content
    assert (body["response"] in turn["message"]) is log_content
    others = [line for line in lines if line is not turn]
    assert all(SECRET not in json.dumps(line) for line in others)

    request = one(lines, "chatify.requests", request_id=response.headers["x-request-id"])
    route = f"{API}/session/{{session_id}}/message"
    assert (request["method"], request["route"], request["status"]) == ("POST", route, 200)
    assert request["path"] == f"{API}/session/{session_id}/message"
    assert isinstance(request["latency_ms"], float)


async def test_a_client_request_id_is_every_lines_request_id(
    make_settings: SettingsFactory, clock: FakeClock, json_lines: io.StringIO
) -> None:
    async with running_app(make_settings(), clock) as chat:
        session_id = await chat.create_session()
        response = await chat.client.post(
            f"{API}/session/{session_id}/message",
            json={"message": "hi"},
            headers={"X-Request-ID": "client-id-42"},
        )
    assert response.headers["x-request-id"] == "client-id-42"
    tagged = [line for line in parsed(json_lines.getvalue()) if line.get("request_id")]
    assert {line["logger"] for line in tagged if line["request_id"] == "client-id-42"} >= {
        "services.conversation.turns",
        "chatify.requests",
    }


def test_an_exception_is_one_line_with_its_traceback() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "failed" and "ValueError: broken" in data["exception"]


@pytest.mark.parametrize(
    "query",
    [
        "token=s3cret-value",
        "%74oken=s3cret-value",
        "%74%6F%6B%65%6E=s3cret-value",
        "To%4Ben=s3cret-value",
        "%2574oken=s3cret-value",
        "access%5Ftoken=s3cret-value",
        "api%5fkey=s3cret-value",
        "k%65y=s3cret-value",
        "%61uthorization=Bearer%20s3cret-value",
        "X%2DApi%2DKey=s3cret-value",
        "x=1&%74oken=s3cret-value&y=2",
    ],
)
def test_a_credential_in_a_query_string_is_redacted_however_its_key_is_spelled(
    query: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(CredentialRedactor())
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.addHandler(handler)
    try:  # as uvicorn's WebSocket protocol logs a handshake
        uvicorn.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:50000", f"/ws?{query}")
    finally:
        uvicorn.removeHandler(handler)
    line = stream.getvalue()
    assert "[accepted]" in line and "[redacted]" in line
    assert "s3cret" not in line


def test_other_query_parameters_are_left_alone() -> None:
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, "GET %s", ("/x?monkey=1&tokens=2&k=3",), None
    )
    assert CredentialRedactor().filter(record)
    assert record.getMessage() == "GET /x?monkey=1&tokens=2&k=3"
