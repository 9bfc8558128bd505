"""Reads: history pages, a user's sessions, personalities, health and readiness."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from services.core.settings import REPO_ROOT
from testkit.mock_llm import MockLLM
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"


async def test_history_pages_walk_back_oldest_first(chat: RunningApp, llm: MockLLM) -> None:
    session_id = await chat.create_session()
    for n in range(5):
        await chat.send(session_id, f"m{n}", client_message_id=f"id{n}")

    first = (await chat.client.get(f"{API}/session/{session_id}/messages?limit=4")).json()
    assert [m["seq"] for m in first["messages"]] == [6, 7, 8, 9]
    assert first["messages"][0] == {
        "seq": 6,
        "role": "user",
        "content": "m3",
        "timestamp": "2026-01-01T12:00:00.000Z",
        "client_message_id": "id3",
        "provider": None,  # replies name the provider and model that wrote them
        "model": None,
        "tools": None,  # and the tools they called
        "images": None,
        "finish_reason": None,  # "stopped" on a reply a stop cut short
        "attachments": None,  # the images a user message was sent with (docs/images.md)
    }
    assert first["messages"][1]["provider"] == "default"
    assert first["messages"][1]["model"] == "gpt-test-pirate"  # the default personality's
    assert first["next_before"] == 6
    second = (await chat.client.get(f"{API}/session/{session_id}/messages?limit=4&before=6")).json()
    assert [m["seq"] for m in second["messages"]] == [2, 3, 4, 5]
    last = (await chat.client.get(f"{API}/session/{session_id}/messages?limit=4&before=2")).json()
    assert [m["seq"] for m in last["messages"]] == [0, 1]
    assert last["next_before"] is None
    everything = (await chat.client.get(f"{API}/session/{session_id}/messages")).json()
    assert len(everything["messages"]) == 10 and everything["next_before"] is None


async def test_session_detail_holds_the_last_50_messages(chat: RunningApp) -> None:
    session_id = await chat.create_session("plain")
    for n in range(26):
        await chat.send(session_id, f"m{n}")
    detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
    history = detail["conversation_history"]
    assert len(history) == 50 and history[0]["seq"] == 2 and history[-1]["seq"] == 51
    assert detail["message_count"] == 26


async def test_user_sessions_newest_activity_first_with_status_filter(
    chat: RunningApp, clock: FakeClock
) -> None:
    ids = []
    for _ in range(3):
        ids.append(await chat.create_session(user_id="alice"))
        clock.advance(1)
    await chat.create_session(user_id="bob")
    await chat.client.delete(f"{API}/session/{ids[0]}")

    listed = (await chat.client.get(f"{API}/users/alice/sessions")).json()
    assert [s["session_id"] for s in listed["sessions"]] == ids[::-1]
    assert listed["next_cursor"] is None
    assert set(listed["sessions"][0]) == {
        "session_id",
        "user_id",
        "template_id",
        "template_title",
        "status",
        "created_at",
        "last_activity",
        "ended_at",
        "message_count",
        "title",
        "preview",
    }
    # A message moves a session to the top, with a one-line preview of its last message.
    await chat.send(ids[1], "hello " * 40)
    moved = (await chat.client.get(f"{API}/users/alice/sessions")).json()["sessions"]
    assert [s["session_id"] for s in moved] == [ids[1], ids[2], ids[0]]
    preview = moved[0]["preview"]
    assert len(preview) == 120 and preview.startswith("Echo: hello hello") and "\n" not in preview
    assert moved[1]["preview"] is None and moved[0]["message_count"] == 1

    active = (await chat.client.get(f"{API}/users/alice/sessions?status=active")).json()
    assert [s["session_id"] for s in active["sessions"]] == [ids[1], ids[2]]
    ended = (await chat.client.get(f"{API}/users/alice/sessions?status=ended")).json()
    assert [s["status"] for s in ended["sessions"]] == ["ended"]
    nobody = (await chat.client.get(f"{API}/users/nobody/sessions")).json()
    assert nobody == {"success": True, "sessions": [], "next_cursor": None}


async def test_the_cursor_reaches_every_session_once(chat: RunningApp, clock: FakeClock) -> None:
    ids = set()
    for n in range(7):
        ids.add(await chat.create_session("pirate", user_id="carol"))
        if n % 3:  # some share a timestamp: the session id breaks the tie
            clock.advance(1)
    seen, cursor, pages = [], None, 0
    while True:
        query = f"?limit=3&cursor={cursor}" if cursor else "?limit=3"
        page = (await chat.client.get(f"{API}/users/carol/sessions{query}")).json()
        seen += page["sessions"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and {s["session_id"] for s in seen} == ids and pages == 3
    # A last page that is full says so too: no cursor to an empty page.
    full = (await chat.client.get(f"{API}/users/carol/sessions?limit=7")).json()
    assert len(full["sessions"]) == 7 and full["next_cursor"] is None
    order = [(s["last_activity"], s["session_id"]) for s in seen]
    assert order == sorted(order, reverse=True)
    assert {s["template_title"] for s in seen} == {"Pirate"}
    bad = await chat.client.get(f"{API}/users/carol/sessions?cursor=not-a-cursor")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"


def _cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_a_cursor_we_did_not_issue_is_invalid_cursor(
    chat: RunningApp, clock: FakeClock
) -> None:
    for _ in range(3):
        await chat.create_session(user_id="erin")
        clock.advance(1)
    page = (await chat.client.get(f"{API}/users/erin/sessions?limit=1")).json()
    last_activity, session_id = json.loads(base64.urlsafe_b64decode(page["next_cursor"] + "=="))
    crafted = {
        "lone surrogate": _cursor_of(b'["2026-01-01T12:00:00.000Z", "\\ud800"]'),
        "garbage base64": "!!%%$$",
        "base64 of garbage": _cursor_of(b"\xff\xfe not json"),
        "base64 of other JSON": _cursor_of(b'{"a": 1}'),
        "tampered time": _cursor_of(json.dumps(["2026-01-01 12:00", session_id]).encode()),
        "tampered id": _cursor_of(json.dumps([last_activity, session_id.upper()]).encode()),
    }
    for what, cursor in crafted.items():
        refused = await chat.client.get(f"{API}/users/erin/sessions", params={"cursor": cursor})
        assert refused.status_code == 400, what
        body = refused.json()
        assert body["success"] is False and body["error"]["code"] == "invalid_cursor", what
    seen, cursor = [], page["next_cursor"]
    while cursor is not None:
        more = (await chat.client.get(f"{API}/users/erin/sessions?limit=1&cursor={cursor}")).json()
        seen += more["sessions"]
        cursor = more["next_cursor"]
    assert len(page["sessions"]) + len(seen) == 3


async def test_a_session_can_be_renamed_and_its_title_cleared(chat: RunningApp) -> None:
    session_id = await chat.create_session(user_id="dana")
    renamed = await chat.client.patch(f"{API}/session/{session_id}", json={"title": " Trip "})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Trip"
    listed = (await chat.client.get(f"{API}/users/dana/sessions")).json()["sessions"]
    assert listed[0]["title"] == "Trip"
    assert (await chat.client.get(f"{API}/session/{session_id}")).json()["title"] == "Trip"
    cleared = await chat.client.patch(f"{API}/session/{session_id}", json={"title": None})
    assert cleared.json()["title"] is None
    for bad in ({"title": "   "}, {"title": "x" * 81}, {"name": "x"}):
        refused = await chat.client.patch(f"{API}/session/{session_id}", json=bad)
        assert refused.status_code == 422, bad
    missing = await chat.client.patch(
        f"{API}/session/00000000-0000-4000-8000-000000000000", json={"title": "x"}
    )
    assert missing.status_code == 404


async def test_personalities_lists_public_templates_only(chat: RunningApp) -> None:
    response = await chat.client.get(f"{API}/personalities")
    assert response.json() == {
        "success": True,
        "personalities": {"pirate": "Talks like a pirate", "plain": "Uses every default"},
    }


async def test_hidden_templates_can_still_start_sessions(chat: RunningApp) -> None:
    response = await chat.client.post(
        f"{API}/session", json={"user_id": "u1", "template_id": "hidden"}
    )
    assert response.status_code == 201 and response.json()["welcome_message"] is None


async def test_health_and_ready(chat: RunningApp, backend: str) -> None:
    assert (await chat.client.get("/health")).json() == {"status": "ok"}
    ready = await chat.client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "store": backend,
        "store_ok": True,
        "redis": "off",
        "llm": "openai-compatible",
        "templates": 3,
        "problems": [],
        "template_problems": {},
    }


async def test_not_ready_without_templates(
    make_settings: SettingsFactory, clock: FakeClock, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-seed"
    (empty / "templates").mkdir(parents=True)
    async with running_app(make_settings(templates_seed_dir=empty), clock) as chat:
        ready = await chat.client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["problems"] == ["no templates loaded"]
        created = await chat.client.post(f"{API}/session", json={"user_id": "u1"})
        assert created.status_code == 404
        assert created.json()["error"]["code"] == "template_not_found"


async def test_default_seed_has_a_default_and_public_personalities(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    settings = make_settings(templates_seed_dir=REPO_ROOT / "templates_seed")
    async with running_app(settings, clock) as chat:
        personalities = (await chat.client.get(f"{API}/personalities")).json()["personalities"]
        assert len(personalities) >= 5 and all(personalities.values())
        created = (await chat.client.post(f"{API}/session", json={"user_id": "u1"})).json()
        assert created["template_id"] == "friendly-assistant"
        assert created["welcome_message"]


async def test_openapi_documents_errors_and_limits(chat: RunningApp) -> None:
    schema = (await chat.client.get("/openapi.json")).json()
    turn = schema["paths"]["/api/v1/chatbot/session/{session_id}/message"]["post"]
    assert {"404", "409", "413", "422", "429", "502", "503", "504"} <= set(turn["responses"])
    request = schema["components"]["schemas"]["SendMessageRequest"]["properties"]
    assert request["client_message_id"]["anyOf"][0]["maxLength"] == 64
    assert "MAX_MESSAGE_CHARS" in request["message"]["description"]


async def test_playground_page_and_script_with_security_headers(chat: RunningApp) -> None:
    page = await chat.client.get("/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/playground/app.js">' in page.text
    script = await chat.client.get("/playground/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/message/stream" in script.text and "client_message_id" in script.text


async def test_forward_sync_returns_what_the_client_does_not_have(chat: RunningApp) -> None:
    session_id = await chat.create_session()
    for n in range(5):
        assert (await chat.send(session_id, f"message {n}")).status_code == 200
    url = f"/api/v1/chatbot/session/{session_id}/messages"

    first = (await chat.client.get(url, params={"after": -1, "limit": 4})).json()
    assert [m["seq"] for m in first["messages"]] == [0, 1, 2, 3]
    assert first["next_after"] == 3 and first["next_before"] is None
    rest = (await chat.client.get(url, params={"after": 3, "limit": 4})).json()
    assert [m["seq"] for m in rest["messages"]] == [4, 5, 6, 7]
    last = (await chat.client.get(url, params={"after": 7, "limit": 4})).json()
    assert [m["seq"] for m in last["messages"]] == [8, 9] and last["next_after"] is None
    assert [m["content"] for m in last["messages"]] == ["message 4", "Echo: message 4"]
    caught_up = (await chat.client.get(url, params={"after": 9})).json()
    assert caught_up["messages"] == [] and caught_up["next_after"] is None

    both = await chat.client.get(url, params={"after": 1, "before": 5})
    assert both.status_code == 422 and both.json()["detail"][0]["loc"] == ["query", "after"]
