"""Usage and quotas: totals per session and per user and UTC day, counted by the turn's own
write and by background calls, the usage endpoint, and the daily token quota on every
transport."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets

from services.core.errors import StoreUnavailable
from services.core.records import NewTurn, Usage, UsageTotals
from services.store import build_store
from services.store.sqlite import SQLiteStore
from services.store.sqlite.schema import _SCHEMA
from testkit.mock_llm import MockLLM, Reply
from testkit.rtdb_server import RTDBServer
from testkit.stored_turns import append_turn
from tests.api.conftest import API, Live, LiveFactory, until
from tests.api.test_firebase import namespace_of, writes
from tests.api.test_ws import receive, ws_url
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

LONG = "a" * 1500  # about 765 tokens a turn at first, more as the context grows
QUOTA = 1000


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
        "cost_micros": sum(u["cost_micros"] for u in replies),
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
    counts = {
        **stored,
        "total_tokens": stored["prompt_tokens"] + stored["completion_tokens"],
        "calls": 0,
        "calls_cost_micros": 0,
        "unpriced": 0,
    }
    served = {"provider": "default", "model": "gpt-4o-mini"}  # every turn, the replay not
    expected = {**counts, "by_model": {"default/gpt-4o-mini": {**served, **counts}}}
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
        await until(
            lambda: chat.services.titles.pending == chat.services.calls.pending == 0,
            "the title and its usage",
        )
        detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
        assert detail["title"] == "Greetings" and len(llm.chat_requests()) == 3

        usage = detail["usage"]
        assert (usage["turns"], usage["calls"]) == (1, 1)
        title_call = usage["total_tokens"] - turn["usage"]["total_tokens"]
        title_prompt = sum(len(m["content"]) for m in llm.chat_requests()[2]["messages"])
        assert title_call == title_prompt // 4 + 1 + len("Greetings") // 4 + 1  # the mock's count
        today = (await usage_of(chat))["today"]
        assert {k: today[k] for k in usage} == usage


async def test_a_background_call_counts_under_the_provider_and_model_that_answered(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(session_titles=True, title_model="namer"), clock) as chat:
        session_id = await chat.create_session("pirate")
        turn = (await chat.send(session_id, "hi")).json()
        await until(
            lambda: chat.services.titles.pending == chat.services.calls.pending == 0,
            "the title and its usage",
        )
        assert [r["model"] for r in llm.chat_requests()] == ["gpt-test-pirate", "namer"]
        record = await chat.services.store.get_session(session_id)
        assert record is not None and record.usage_totals is not None
        spent = record.usage_totals.total_tokens - turn["usage"]["total_tokens"]
        shares = {(s.provider, s.model): (s.total_tokens, s.turns, s.calls)
                  for s in record.usage_totals.by_model}  # fmt: skip
        assert shares == {
            ("default", "gpt-test-pirate"): (turn["usage"]["total_tokens"], 1, 0),
            ("default", "namer"): (spent, 0, 1),
        }


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
            "daily_cost_micros": None,
            "cost_remaining_micros": None,
        }


async def test_past_the_daily_quota_every_transport_is_429_until_utc_midnight(
    live_app: LiveFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with live_app(user_daily_token_quota=QUOTA) as live:
        session_id = await live.create_session()
        turn = f"{API}/session/{session_id}/message"
        first = await live.client.post(turn, json={"message": LONG})
        second = await live.client.post(turn, json={"message": LONG})
        assert first.status_code == second.status_code == 200
        spent = [r.json()["usage"]["total_tokens"] for r in (first, second)]
        assert spent[0] < QUOTA <= sum(spent), "the test's premise"
        quota = (await usage_of(live, "u1"))["quota"]
        assert quota == {
            "daily_tokens": QUOTA,
            "used": sum(spent),
            "remaining": 0,
            "resets_at": "2026-01-02T00:00:00.000Z",
            "daily_cost_micros": None,
            "cost_remaining_micros": None,
        }

        refused = [await live.client.post(turn, json={"message": "one more?"})]
        async with live.stream(session_id, "one more?") as streamed:
            await streamed.aread()
        refused.append(streamed)
        parts = [{"type": "text", "text": "one more?"}]
        ui = {"id": session_id, "messages": [{"id": "m9", "role": "user", "parts": parts}]}
        refused.append(await live.client.post(f"{API}/chat", json=ui))
        for response in refused:
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "quota_exceeded"
            assert response.headers["retry-after"] == "43200"  # 12:00 UTC to midnight

        async with websockets.connect(ws_url(live, session_id)) as socket:
            assert (await receive(socket))["type"] == "chat_history"
            message = {"type": "user_message", "message": "one more?", "client_message_id": "w"}
            await socket.send(json.dumps(message))
            error = await receive(socket)
            assert (error["type"], error["code"]) == ("error", "quota_exceeded")
            assert (error["retry_after"], error["client_message_id"]) == (43200, "w")
        assert len(llm.chat_requests()) == 2, "a refused turn reached the model"

        clock.now = datetime(2026, 1, 1, 23, 0, tzinfo=UTC)
        late = await live.client.post(turn, json={"message": "one more?"})
        assert (late.status_code, late.headers["retry-after"]) == (429, "3600")
        clock.now = datetime(2026, 1, 2, 0, 0, 1, tzinfo=UTC)
        assert (await live.client.post(turn, json={"message": "new day"})).status_code == 200


def usage_reads(server: RTDBServer, ns: str) -> list[str]:
    """Reads of the users' usage nodes."""
    return [
        r.path
        for r in server.requests
        if r.namespace == ns and r.method == "GET" and r.path.startswith("/userUsage")
    ]


@pytest.mark.parametrize("backend", ["firebase-test-server"])
@pytest.mark.parametrize("quota", [0, 10**6], ids=["no-quota", "quota"])
async def test_a_turn_stays_one_write_and_the_quota_reads_once_a_minute(
    make_settings: SettingsFactory, clock: FakeClock, rtdb: RTDBServer, quota: int
) -> None:
    async with running_app(make_settings(user_daily_token_quota=quota), clock) as chat:
        ns = namespace_of(chat)
        session_id = await chat.create_session("pirate")
        replies, reads = [], []
        for n in range(3):
            if n == 2:
                clock.advance(61)  # the count is a minute old: re-read, in the background
            rtdb.clear_requests()
            response = await chat.send(session_id, f"turn {n}", client_message_id=f"c{n}")
            assert response.status_code == 200
            replies.append(response.json()["usage"])
            patches = [r for r in writes(rtdb, ns) if r.method == "PATCH"]
            assert len(patches) == 1, "a turn must be exactly one multi-path update"
            await chat.services.quotas.settle()  # the background read, if one started
            reads.append(len(usage_reads(rtdb, ns)))

        # The first check reads the user's day; a warm one reads nothing, a stale one re-reads.
        assert reads == ([0, 0, 0] if quota == 0 else [1, 0, 1])
        day = rtdb.get_data(ns, "/userUsage/user_1/2026-01-01")
        expected = {
            "prompt_tokens": sum(u["prompt_tokens"] for u in replies),
            "completion_tokens": sum(u["completion_tokens"] for u in replies),
            "turns": 3,
        }
        assert day == expected
        assert rtdb.get_data(ns, f"/userSessions/{session_id}/usage_totals") == expected
        # The share of the one target that served them, beside the totals, by the same write.
        shares = {"default%2Fgpt-test-pirate": expected}
        assert rtdb.get_data(ns, f"/userSessions/{session_id}/usage_by_model") == shares
        assert rtdb.get_data(ns, "/userUsageByModel/user_1/2026-01-01") == shares


async def test_another_replicas_spending_is_seen_within_a_minute(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    settings = make_settings(user_daily_token_quota=QUOTA)
    async with running_app(settings, clock) as one, running_app(settings, clock) as two:
        # One user, a session on each replica; two's turns stay small.
        mine, theirs = await one.create_session("plain"), await two.create_session("plain")
        assert (await two.send(theirs, "hi")).status_code == 200  # two knows the user now
        assert (await one.send(mine, LONG)).status_code == 200
        assert (await one.send(mine, LONG)).status_code == 200
        assert (await one.send(mine, "hi")).status_code == 429

        # Two's count is under a minute old: it admits (the documented overshoot)...
        assert (await two.send(theirs, "hi")).status_code == 200
        clock.advance(61)
        # ...and a minute on, it still answers from memory while it re-reads the store...
        assert (await two.send(theirs, "hi")).status_code == 200
        await two.services.quotas.settle()
        # ...after which it knows.
        refused = await two.send(theirs, "hi")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"


@pytest.mark.parametrize("backend", ["firebase-test-server"])
async def test_a_background_calls_usage_is_never_written_twice(
    make_settings: SettingsFactory, rtdb: RTDBServer
) -> None:
    settings = make_settings(store_timeout_seconds=1)
    ns = (settings.firebase_database_url or "").split("ns=")[1]
    store = build_store(settings)
    await store.open()
    try:
        day = "/userUsage/alice/2026-01-01"
        at = "2026-01-01T12:00:00.000Z"
        # Refused: nothing was counted, so the caller may try again.
        rtdb.faults.add(status=503, times=1, methods={"PATCH"}, namespace=ns)
        with pytest.raises(StoreUnavailable):
            await store.add_usage("alice", "s1", Usage(10, 2, 12), at=at)
        assert rtdb.get_data(ns, day) is None
        # Unanswered: the write may still land, so it is given up, not raised for a retry...
        held = threading.Event()
        rtdb.faults.add(gate=held, times=1, methods={"PATCH"}, namespace=ns)
        await store.add_usage("alice", "s1", Usage(10, 2, 12), at=at)
        held.set()
        # ...and it lands once.
        await until(lambda: rtdb.get_data(ns, day) is not None, "the held write")
        assert rtdb.get_data(ns, day) == {"prompt_tokens": 10, "completion_tokens": 2, "calls": 1}
    finally:
        await store.close()


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
        await append_turn(store, session, NewTurn("q", "a", None, at, at, Usage(5, 2, 7)))
        session = await store.get_session("s1")
        assert session is not None and session.usage_totals == UsageTotals(5, 2, 1, 0)
    finally:
        await store.close()
