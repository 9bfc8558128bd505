"""Every error code this service answers, in the one error format."""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import Live
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the API's error body with this status and code."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if status != 422 or code != "validation_error":
        assert body["detail"] == body["error"]["message"]
    return body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/session/{id}"),
        ("GET", "/session/{id}/messages"),
        ("DELETE", "/session/{id}"),
        ("POST", "/session/{id}/message"),
    ],
)
@pytest.mark.parametrize("session_id", [str(uuid.uuid4()), "not-a-uuid", "a.b$c"])
async def test_unknown_session_is_404(
    chat: RunningApp, method: str, path: str, session_id: str
) -> None:
    body = {"message": "hi"} if method == "POST" else None
    url = API + path.format(id=session_id)
    response = await chat.client.request(method, url, json=body)
    assert_error(response, 404, "session_not_found")


async def test_unknown_template_is_404(chat: RunningApp) -> None:
    response = await chat.client.post(
        f"{API}/session", json={"user_id": "u1", "template_id": "nope"}
    )
    assert_error(response, 404, "template_not_found")


async def test_ended_session_is_409(chat: RunningApp) -> None:
    session_id = await chat.create_session()
    await chat.client.delete(f"{API}/session/{session_id}")
    assert_error(await chat.send(session_id, "hello?"), 409, "session_ended")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"user_id": ""},
        {"user_id": "has space"},
        {"user_id": "x" * 129},
        {"user_id": "u1", "template_id": ""},
        {"user_id": 5},
    ],
)
async def test_invalid_create_body_is_422(chat: RunningApp, body: dict[str, Any]) -> None:
    error = assert_error(
        await chat.client.post(f"{API}/session", json=body), 422, "validation_error"
    )
    assert isinstance(error["detail"], list) and error["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"message": ""},
        {"message": "   \n\t "},
        {"message": "x" * 101},
        {"message": "hi", "client_message_id": ""},
        {"message": "hi", "client_message_id": "x" * 65},
        {"message": ["hi"]},
    ],
)
async def test_invalid_message_body_is_422(
    make_settings: SettingsFactory, clock: FakeClock, body: dict[str, Any], llm: MockLLM
) -> None:
    async with running_app(make_settings(max_message_chars=100), clock) as chat:
        session_id = await chat.create_session()
        response = await chat.client.post(f"{API}/session/{session_id}/message", json=body)
        assert_error(response, 422, "validation_error")
        assert (await chat.send(session_id, "x" * 100)).status_code == 200
    assert len(llm.chat_requests()) == 1


async def test_not_json_is_422(chat: RunningApp) -> None:
    response = await chat.client.post(
        f"{API}/session", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "validation_error")


async def test_bad_query_parameters_are_422(chat: RunningApp) -> None:
    session_id = await chat.create_session()
    for query in ["limit=0", "limit=201", "before=-1", "limit=abc"]:
        response = await chat.client.get(f"{API}/session/{session_id}/messages?{query}")
        assert_error(response, 422, "validation_error")
    response = await chat.client.get(f"{API}/users/u1/sessions?status=sleeping")
    assert_error(response, 422, "validation_error")
    assert_error(await chat.client.get(f"{API}/users/bad user/sessions"), 422, "validation_error")


async def test_body_over_the_limit_is_413_before_parsing(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    async with running_app(make_settings(max_request_bytes=2048), clock) as chat:
        session_id = await chat.create_session()
        big = {"message": "x" * 3000}
        assert_error(await chat.send(session_id, big["message"]), 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"message": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        response = await chat.client.post(
            f"{API}/session/{session_id}/message",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert_error(response, 413, "payload_too_large")


async def test_unknown_route_and_wrong_method(chat: RunningApp) -> None:
    assert_error(await chat.client.get("/api/v1/nothing"), 404, "not_found")
    assert_error(await chat.client.put(f"{API}/session"), 405, "method_not_allowed")


async def test_a_405_allows_every_method_of_the_path(chat: RunningApp) -> None:
    session_id = await chat.create_session()
    detail = f"{API}/session/{session_id}"
    # Three routes serve the session's path: the 405 names all their methods.
    refused = await chat.client.put(detail, json={})
    assert_error(refused, 405, "method_not_allowed")
    assert refused.headers["allow"] == "DELETE, GET, PATCH"
    only_post = await chat.client.get(f"{detail}/message")
    assert_error(only_post, 405, "method_not_allowed")
    assert only_post.headers["allow"] == "POST"
    # HEAD is listed only where the app answers it.
    head = await chat.client.head(detail)
    assert head.status_code == 405 and "HEAD" not in head.headers["allow"].split(", ")
    listing = await chat.client.post(f"{API}/users/u1/sessions")
    assert_error(listing, 405, "method_not_allowed")
    assert listing.headers["allow"] == "GET"


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (Reply(status=500), 502, "llm_error"),
        (Reply(status=401), 502, "llm_error"),
        (Reply(status=400), 502, "llm_error"),
        (Reply(raw_body=b"<html>oops</html>"), 502, "llm_error"),
        (Reply(raw_body=b'{"choices": []}'), 502, "llm_error"),
        (Reply(content=""), 502, "llm_error"),
        (Reply(status=429, retry_after=7), 503, "llm_unavailable"),
        (Reply(drop=True), 503, "llm_unavailable"),
        (Reply(hang=True), 504, "llm_timeout"),
    ],
)
async def test_llm_failures_map_to_api_codes_and_store_nothing(
    make_settings: SettingsFactory,
    clock: FakeClock,
    llm: MockLLM,
    reply: Reply,
    status: int,
    code: str,
) -> None:
    secret = "sk-live-SECRET123 upstream.internal.example"
    if reply.status != 200:
        reply.error_body = {"error": {"message": f"bad key {secret}", "type": "x"}}
    llm.script(reply)
    # A short timeout only where the provider hangs: on a loaded machine it could turn the
    # other failures into timeouts too.
    timeout = 2.0 if reply.hang else 30.0
    async with running_app(make_settings(llm_timeout_seconds=timeout), clock) as chat:
        session_id = await chat.create_session()
        response = await chat.send(session_id, "hi", client_message_id="c1")

        assert_error(response, status, code)
        assert "SECRET" not in response.text and "internal" not in response.text
        if code == "llm_unavailable" and reply.retry_after:
            assert response.headers["retry-after"] == "7"
        detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
        assert detail["message_count"] == 0 and detail["conversation_history"] == []
        assert (await chat.send(session_id, "hi", client_message_id="c1")).status_code == 200


async def test_unreachable_llm_is_503(make_settings: SettingsFactory, clock: FakeClock) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings = make_settings(openai_base_url=f"http://127.0.0.1:{closed_port}/v1")
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session()
        assert_error(await chat.send(session_id, "hi"), 503, "llm_unavailable")


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_locked_store_is_503_and_recovers(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    settings = make_settings(store_timeout_seconds=0.2)
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session()
        blocker = sqlite3.connect(settings.sqlite_path, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            response = await chat.send(session_id, "hi", client_message_id="c1")
            body = assert_error(response, 503, "store_unavailable")
            assert str(settings.sqlite_path) not in body["error"]["message"]
            assert response.headers["retry-after"] == "2"
            created = await chat.client.post(f"{API}/session", json={"user_id": "u1"})
            assert_error(created, 503, "store_unavailable")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        retried = await chat.send(session_id, "hi", client_message_id="c1")
        assert retried.status_code == 200 and retried.json()["message_count"] == 1
        detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
        assert [m["content"] for m in detail["conversation_history"]] == ["hi", "Echo: hi"]


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_an_unhandled_error_is_500_and_the_connection_stays_usable(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    session_id = await live.create_session()
    sent = await live.client.post(f"{API}/session/{session_id}/message", json={"message": "hi"})
    assert sent.status_code == 200
    # A stored row the code cannot read: the store raises a ValueError, which no handler maps.
    with sqlite3.connect(live.services.settings.sqlite_path, isolation_level=None) as db:
        db.execute("UPDATE messages SET usage = 'not json' WHERE session_id = ?", (session_id,))

    broken = await live.client.get(f"{API}/session/{session_id}/messages")
    assert_error(broken, 500, "internal_error")
    after = await live.client.post(f"{API}/session", json={"user_id": "u1"})
    assert after.status_code == 201, after.text
    # The same keep-alive connection served both: the client kept it.
    assert local_address(broken) == local_address(after)
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert [r.getMessage() for r in tracebacks] == [
        f"unhandled error on GET {API}/session/{session_id}/messages"
    ]


def local_address(response: httpx.Response) -> tuple[str, int]:
    """The client's end of the connection that carried ``response``."""
    address: tuple[str, int] = response.extensions["network_stream"].get_extra_info("client_addr")
    return address


async def test_a_422_message_names_every_bad_field_and_detail_stays_the_list(
    chat: RunningApp,
) -> None:
    secret = "do-not-echo-" + "z" * 20
    personality = await chat.client.post(
        "/api/v1/personalities",
        json={
            "name": "Two Bad",
            "personalityPrompt": "You are a careful test bot who answers briefly.",
            "temperature": 3,
            "maxTokens": secret,
        },
    )
    body = assert_error(personality, 422, "validation_error")
    message = body["error"]["message"]
    assert message.startswith("The personality is not valid: ")
    assert "temperature: " in message and "maxTokens: " in message
    assert secret not in message
    assert isinstance(body["detail"], list) and len(body["detail"]) == 2

    session_id = await chat.create_session()
    turn = assert_error(await chat.send(session_id, ""), 422, "validation_error")
    assert turn["error"]["message"].startswith("Invalid request: message: ")
    assert [p["loc"] for p in turn["detail"]] == [["body", "message"]]


async def test_a_422_message_is_bounded_when_many_fields_are_bad(chat: RunningApp) -> None:
    fields = {f"unknown{n}": n for n in range(8)}
    response = await chat.client.post(
        "/api/v1/personalities",
        json={"name": "Many Bad", "personalityPrompt": "You are a test bot.", **fields},
    )
    body = assert_error(response, 422, "validation_error")
    message = body["error"]["message"]
    assert len(body["detail"]) >= 8
    assert message.endswith(f"; and {len(body['detail']) - 5} more")
    assert "unknown0: " in message and "unknown7" not in message
