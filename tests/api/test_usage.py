"""Usage: totals per session and per user and UTC day, counted by the turn's own write and by
background calls, and the usage endpoint."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from bench.mock_llm import MockLLM, Reply
from services.models import NewTurn, Usage, UsageTotals
from services.store.sqlite import _SCHEMA, SQLiteStore
from tests.api.conftest import API, Live, until
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app


async def usage_of(chat: RunningApp | Live, user_id: str = "user_1", days: int = 7) -> Any:
    """The usage endpoint's body."""
    response = await chat.client.get(f"{API}/users/{user_id}/usage", params={"days": days})
    assert response.status_code == 200, response.text
    return response.json()


async def stored_reply_usage(chat: RunningApp, session_id: str) -> dict[str, int]:
    """The sums of the stored replies' usage (read through the export)."""
    export = (await chat.client.get(f"{API}/users/user_1/export")).json()
    (session,) = [s for s in export["sessions"] if s["session_id"] == session_id]
    replies = [m["usage"] for m in session["messages"] if m["role"] == "assistant"]
    return {
        "prompt_tokens": sum(u["prompt_tokens"] for u in replies),
        "completion_tokens": sum(u["completion_tokens"] for u in replies),
        "turns": len(replies),
    }


async def test_totals_are_the_sum_of_the_stored_replies_usage(
    chat: RunningApp, clock: FakeClock
) -> None:
    session_id = await chat.create_session("plain")
    for text in ("one", "two, a little longer", "three"):
        assert (await chat.send(session_id, text)).status_code == 200
    assert (await chat.send(session_id, "three", client_message_id="x")).status_code == 200
    assert (await chat.send(session_id, "three", client_message_id="x")).json()["replayed"]

    stored = await stored_reply_usage(chat, session_id)
    assert stored["turns"] == 4 and stored["prompt_tokens"] > 0
    expected = {
        **stored,
        "total_tokens": stored["prompt_tokens"] + stored["completion_tokens"],
        "calls": 0,
    }
    detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
    assert detail["usage"] == expected
    report = await usage_of(chat)
    assert report["today"] == {"day": "2026-01-01", **expected}
    assert [d["day"] for d in report["days"]] == [
        "2026-01-01",
        *(f"2025-12-{day}" for day in range(31, 25, -1)),
    ]
    assert report["days"][0] == report["today"]
    assert all(d["total_tokens"] == d["turns"] == d["calls"] == 0 for d in report["days"][1:])

    clock.advance(24 * 3600)  # the next UTC day counts apart
    reply = (await chat.send(session_id, "next day")).json()
    report = await usage_of(chat, days=2)
    assert [d["day"] for d in report["days"]] == ["2026-01-02", "2026-01-01"]
    assert report["today"]["total_tokens"] == reply["usage"]["total_tokens"]
    assert report["today"]["turns"] == 1 and report["days"][1]["turns"] == 4
    detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
    assert detail["usage"]["turns"] == 5


async def test_an_answered_title_call_counts_as_a_call_not_a_turn(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    # The first title call fails (not counted: nothing was answered), the retry answers.
    llm.script(Reply(content="Hello there!"), Reply(status=500), Reply(content="Greetings"))
    async with running_app(make_settings(session_titles=True), clock) as chat:
        session_id = await chat.create_session("plain")
        turn = (await chat.send(session_id, "hi")).json()
        await until(lambda: chat.services.titles.pending == 0, "the title and its usage")
        detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
        assert detail["title"] == "Greetings" and len(llm.chat_requests()) == 3

        usage = detail["usage"]
        assert (usage["turns"], usage["calls"]) == (1, 1)
        title_call = usage["total_tokens"] - turn["usage"]["total_tokens"]
        title_prompt = sum(len(m["content"]) for m in llm.chat_requests()[2]["messages"])
        assert title_call == title_prompt // 4 + 1 + len("Greetings") // 4 + 1  # the mock's count
        today = (await usage_of(chat))["today"]
        assert {k: today[k] for k in usage} == usage


async def test_a_user_reads_only_their_own_usage(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    keys = {"api_keys": "service-key", "user_api_keys": "alice=alice-key,bob=bob-key"}
    async with running_app(make_settings(auth_mode="api_key", **keys), clock) as chat:
        url = f"{API}/users/alice/usage"
        for key, status in (("alice-key", 200), ("service-key", 200), ("bob-key", 403)):
            response = await chat.client.get(url, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == status, (key, response.text)
        assert response.json()["error"]["code"] == "forbidden"
        alice = {"Authorization": "Bearer alice-key"}
        for days, status in ((0, 422), (91, 422), (90, 200)):
            response = await chat.client.get(url, params={"days": days}, headers=alice)
            assert response.status_code == status, days
        assert len(response.json()["days"]) == 90
        assert response.json()["quota"] == {
            "daily_tokens": None,
            "used": 0,
            "remaining": None,
            "resets_at": "2026-01-02T00:00:00.000Z",
        }


async def test_an_older_sqlite_file_gains_the_usage_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA)  # the sessions table as it was, without usage columns
        conn.execute(
            "INSERT INTO sessions (session_id, user_id, template_id, status, created_at, "
            "last_activity, message_count, system_prompt, model, temperature, max_tokens, "
            "presence_penalty, frequency_penalty, context_messages) "
            "VALUES ('s1', 'u1', 't', 'active', 'x', 'x', 0, 'p', 'm', 0.5, 9, 0, 0, 4)"
        )
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        session = await store.get_session("s1")
        assert session is not None and session.usage_totals is None
        at = "2026-01-01T12:00:00.000Z"
        await store.append_turn(session, NewTurn("q", "a", None, at, at, Usage(5, 2, 7)))
        session = await store.get_session("s1")
        assert session is not None and session.usage_totals == UsageTotals(5, 2, 1, 0)
    finally:
        await store.close()
