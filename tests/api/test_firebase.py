"""The Firebase backend over its real protocol: what it writes and reads, two instances on one
database, and store faults. Runs against our RTDB test server (it needs its fault injection
and request log)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.core.records import CallUsage, Sampling, SessionRecord, Usage
from services.store import build_store
from testkit.mock_llm import MockLLM, Reply
from testkit.rtdb_server import RecordedRequest, RTDBServer
from tests.api.conftest import until
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

pytestmark = pytest.mark.parametrize("backend", ["firebase-test-server"])
API = "/api/v1/chatbot"
T0 = "2026-01-01T12:00:00.000Z"


def namespace_of(chat: RunningApp) -> str:
    """The test database's namespace."""
    url = chat.services.settings.firebase_database_url or ""
    return url.split("ns=")[1]


def writes(server: RTDBServer, ns: str) -> list[RecordedRequest]:
    """Requests that changed data, in order."""
    return [r for r in server.requests if r.namespace == ns and r.method in ("PATCH", "PUT")]


@pytest.fixture
async def chat(make_settings: SettingsFactory, clock: FakeClock) -> AsyncIterator[RunningApp]:
    """An app on the Firebase backend with a short store timeout."""
    async with running_app(make_settings(store_timeout_seconds=2), clock) as running:
        yield running


async def test_a_turn_is_one_update_whose_size_does_not_grow(
    chat: RunningApp, rtdb: RTDBServer
) -> None:
    ns = namespace_of(chat)
    session_id = await chat.create_session("pirate")
    sizes = []
    for n in range(1, 201):
        rtdb.clear_requests()
        reply = await chat.send(session_id, f"turn {n:03d}", client_message_id=f"id-{n:03d}")
        assert reply.status_code == 200
        patches = [r for r in writes(rtdb, ns) if r.method == "PATCH"]
        assert len(patches) == 1, "a turn must be exactly one multi-path update"
        sizes.append(patches[0].body_size)

    assert sizes[199] - sizes[0] <= 8  # only the digits of seq grow
    stored = rtdb.get_data(ns, f"/userSessions/{session_id}")
    assert stored["message_count"] == 200
    assert len(stored["conversation_history"]) == 400


async def test_loading_a_session_reads_metadata_and_context_only(
    make_settings: SettingsFactory, clock: FakeClock, rtdb: RTDBServer, llm: MockLLM
) -> None:
    settings = make_settings()
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("pirate")  # 4 messages of context
        for n in range(30):
            await chat.send(session_id, f"message number {n} " + "x" * 200)
    rtdb.clear_requests()
    async with running_app(settings, clock) as chat:
        assert (await chat.send(session_id, "and now?")).status_code == 200

    session_reads = [
        r for r in rtdb.requests if r.method == "GET" and r.path.startswith("/userSessions/")
    ]
    assert session_reads, "the session was not loaded from the store"
    for read in session_reads:
        keys_only = read.params.get("shallow") == "true"
        assert "orderBy" in read.params or read.path.endswith("next_seq") or keys_only, read
        assert read.response_size < 4000, read
    history = [r for r in session_reads if r.path.endswith("/conversation_history")]
    assert [r.params.get("limitToLast") for r in history] == ["4"]
    assert [m["content"] for m in llm.chat_requests()[-1]["messages"][1:3]] == [
        "message number 28 " + "x" * 200,
        "Echo: message number 28 " + "x" * 200,
    ]


async def test_two_instances_on_one_database_lose_and_duplicate_nothing(
    make_settings: SettingsFactory, clock: FakeClock, rtdb: RTDBServer
) -> None:
    settings = make_settings(session_queue_limit=100)
    async with running_app(settings, clock) as one, running_app(settings, clock) as two:
        session_id = await one.create_session("plain", user_id="two-devices")
        await two.send(session_id, "warm up the second cache")
        sends = [(one if n % 2 else two).send(session_id, f"device message {n}") for n in range(40)]
        replies = await asyncio.gather(*sends)
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]

        ns = namespace_of(one)
        stored = rtdb.get_data(ns, f"/userSessions/{session_id}")
        history = [
            stored["conversation_history"][k] for k in sorted(stored["conversation_history"])
        ]
        assert [m["seq"] for m in history] == list(range(82))
        assert [m["role"] for m in history] == ["user", "assistant"] * 41
        for user, reply in zip(history[::2], history[1::2], strict=True):
            assert reply["content"] == f"Echo: {user['content']}"
        sent = {f"device message {n}" for n in range(40)} | {"warm up the second cache"}
        assert sorted(m["content"] for m in history[::2]) == sorted(sent)
        assert stored["message_count"] == 41
        index = rtdb.get_data(ns, f"/userSessionIndex/two-devices/{session_id}")
        assert index["message_count"] == 41
        assert sorted(r.json()["message_count"] for r in replies) == list(range(2, 42))


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 503},
        {"status": 500},
        {"drop": True},
        {"delay": 5.0},
    ],
    ids=["503", "500", "dropped", "slow"],
)
async def test_a_store_that_is_down_answers_503_writes_nothing_and_recovers(
    chat: RunningApp, rtdb: RTDBServer, fault: dict[str, Any]
) -> None:
    ns = namespace_of(chat)
    session_id = await chat.create_session()
    await chat.send(session_id, "before the outage")
    chat.services.sessions._sessions.forget(session_id)  # the next turn must load from the store
    before = rtdb.get_data(ns, "/")

    rtdb.faults.add(times=None, namespace=ns, **fault)
    failed = await chat.send(session_id, "during the outage", client_message_id="c1")
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "store_unavailable"
    assert failed.headers["retry-after"] == "2"
    assert (await chat.client.get("/health")).status_code == 200
    assert (await chat.client.get("/ready")).status_code == 503
    rtdb.faults.clear()

    assert rtdb.get_data(ns, "/") == before, "something was half-written"
    assert (await chat.client.get("/ready")).status_code == 200
    retried = await chat.send(session_id, "during the outage", client_message_id="c1")
    assert retried.status_code == 200 and retried.json()["message_count"] == 2
    history = rtdb.get_data(ns, f"/userSessions/{session_id}/conversation_history")
    assert [history[k]["seq"] for k in sorted(history)] == [0, 1, 2, 3]


async def test_a_failed_turn_write_gives_its_seq_back(chat: RunningApp, rtdb: RTDBServer) -> None:
    ns = namespace_of(chat)
    session_id = await chat.create_session()
    rtdb.faults.add(status=503, times=1, methods={"PATCH"}, namespace=ns)
    assert (await chat.send(session_id, "lost")).status_code == 503
    ok = await chat.send(session_id, "kept")
    assert ok.json()["message_count"] == 1
    history = rtdb.get_data(ns, f"/userSessions/{session_id}/conversation_history")
    assert [(history[k]["seq"], history[k]["content"]) for k in sorted(history)] == [
        (0, "kept"),
        (1, "Echo: kept"),
    ]


async def test_a_lost_answer_to_a_turn_write_is_not_a_lost_turn(
    chat: RunningApp, rtdb: RTDBServer
) -> None:
    ns = namespace_of(chat)
    session_id = await chat.create_session()
    rtdb.faults.add(times=1, methods={"PATCH"}, namespace=ns, drop=True)
    reply = await chat.send(session_id, "hi", client_message_id="c1")
    stored = rtdb.get_data(ns, f"/userSessions/{session_id}")
    if reply.status_code == 200:  # the server applied the write before dropping the answer
        assert stored["message_count"] == 1
    else:
        assert reply.status_code == 503 and "conversation_history" not in stored
    again = await chat.send(session_id, "hi", client_message_id="c1")
    assert again.status_code == 200 and again.json()["message_count"] == 1


async def test_a_slow_store_does_not_block_health(chat: RunningApp, rtdb: RTDBServer) -> None:
    ns = namespace_of(chat)
    session_id = await chat.create_session()
    chat.services.sessions._sessions.forget(session_id)
    rtdb.faults.add(times=None, namespace=ns, delay=1.5)
    turn = asyncio.create_task(chat.send(session_id, "slow"))
    for _ in range(400):
        if any(r.namespace == ns for r in rtdb.requests if r.method == "GET"):
            break
        await asyncio.sleep(0.005)
    health = await chat.client.get("/health")
    assert health.status_code == 200 and not turn.done(), "health waited for the store"
    rtdb.faults.clear()
    await turn


async def test_template_edits_in_the_database_apply_without_restart(
    chat: RunningApp, rtdb: RTDBServer
) -> None:
    ns = namespace_of(chat)
    templates = chat.services.templates
    rtdb.clear_requests()
    await templates.refresh()
    unchanged = [r for r in rtdb.requests if r.path in ("/templates", "/settings/universalRules")]
    assert [r.status for r in unchanged] == [304, 304], "an unchanged refresh transferred data"

    rtdb.set_data(ns, "/templates/pirate/personalityPrompt", "You are a retired pirate.")
    rtdb.set_data(ns, "/templates/plain/temperature", "hot")  # malformed: keeps the last good one
    rtdb.set_data(
        ns, "/templates/fresh", {"personalityPrompt": "You are new here.", "description": "New one"}
    )
    await templates.refresh()

    created = await chat.client.post(
        f"{API}/session", json={"user_id": "u1", "template_id": "pirate"}
    )
    session_id = created.json()["session_id"]
    assert templates.resolve("pirate").system_prompt.endswith("You are a retired pirate.")
    assert templates.resolve("plain").sampling.temperature == 0.9
    personalities = (await chat.client.get(f"{API}/personalities")).json()["personalities"]
    assert personalities["fresh"] == "New one"
    stored = rtdb.get_data(ns, f"/userSessions/{session_id}")
    assert stored["system_prompt"].endswith("You are a retired pirate.")


async def test_a_steady_turn_asks_the_model_first_and_writes_once_after_the_reply(
    chat: RunningApp, rtdb: RTDBServer, llm: MockLLM
) -> None:
    ns = namespace_of(chat)
    session_id = await chat.create_session("pirate")
    assert (await chat.send(session_id, "warm up", client_message_id="w0")).status_code == 200
    rtdb.clear_requests()

    # Every store request of the turn is held; the model must be asked all the same.
    store_gate, model_asked, model_gate = threading.Event(), threading.Event(), threading.Event()
    rtdb.faults.add(gate=store_gate, times=None, namespace=ns)
    llm.script(Reply(content="Arr.", arrived=model_asked, gate=model_gate))
    sending = asyncio.create_task(chat.send(session_id, "ahoy", client_message_id="c1"))
    assert await asyncio.to_thread(model_asked.wait, 10), "the model waited for the store"
    assert [r for r in rtdb.requests if r.namespace == ns] == [], "a store request was answered"

    # The claim (seqs and id in one conditional write; memory knew the id is new, and the
    # node's ETag is cached from the turn before) is answered while the model generates...
    store_gate.set()
    await until(lambda: len(turn_requests(rtdb, ns)) == 1, "the claim")
    (claim,) = turn_requests(rtdb, ns)
    assert (claim.method, claim.path.rsplit("/", 1)[-1]) == ("PUT", "next_seq")
    stored = rtdb.get_data(ns, f"/userSessions/{session_id}/next_seq")
    assert stored["next"] == 4 and stored["ids"] == {"m0000000000": "w0", "m0000000002": "c1"}
    # ...so that after the reply, storing the turn is one request: two in all.
    model_gate.set()
    reply = await sending
    assert reply.status_code == 200 and reply.json()["message_count"] == 2
    after = turn_requests(rtdb, ns)[1:]
    assert [(r.method, r.path) for r in after] == [("PATCH", "/")]


async def test_a_failed_model_call_gives_back_what_the_turn_claimed(
    chat: RunningApp, rtdb: RTDBServer, llm: MockLLM
) -> None:
    ns = namespace_of(chat)
    session_id = await chat.create_session("pirate")
    assert (await chat.send(session_id, "one", client_message_id="a")).status_code == 200
    llm.script(Reply(status=500))
    assert (await chat.send(session_id, "two", client_message_id="b")).status_code == 502
    stored = rtdb.get_data(ns, f"/userSessions/{session_id}")
    assert "b" not in stored["conversation_client_ids"]
    assert stored["next_seq"]["next"] == 2  # given back: the next turn leaves no gap
    reply = await chat.send(session_id, "two", client_message_id="b")
    assert reply.json()["message_count"] == 2


def turn_requests(server: RTDBServer, ns: str) -> list[RecordedRequest]:
    """Requests of the session's turns (not the template refresh or a ping)."""
    return [
        r
        for r in server.requests
        if r.namespace == ns and (r.path.startswith("/userSessions/") or r.path == "/")
    ]


@pytest.mark.parametrize("turns_elsewhere", [3, 20], ids=["in-the-ring", "beyond-the-ring"])
async def test_a_held_session_replays_an_id_another_instance_stored(
    make_settings: SettingsFactory, clock: FakeClock, rtdb: RTDBServer, turns_elsewhere: int
) -> None:
    settings = make_settings()
    async with running_app(settings, clock) as one, running_app(settings, clock) as two:
        ns = namespace_of(one)
        session_id = await one.create_session("plain")
        assert (await two.send(session_id, "hold it", client_message_id="h")).status_code == 200
        for n in range(turns_elsewhere):  # instance two's memory knows none of these
            sent = await one.send(session_id, f"elsewhere {n}", client_message_id=f"e{n}")
            assert sent.status_code == 200

        rtdb.clear_requests()
        again = await two.send(session_id, "elsewhere 0", client_message_id="e0")
        assert again.status_code == 200
        body = again.json()
        assert (body["response"], body["message_count"], body["replayed"]) == (
            "Echo: elsewhere 0",
            2,
            True,
        )
        pointer_reads = [r for r in turn_requests(rtdb, ns) if r.path.endswith("/e0")]
        # Within the ring's reach the claim's answer names the id; beyond it, the pointer.
        assert len(pointer_reads) == (0 if turns_elsewhere < 16 else 1)
        stored = rtdb.get_data(ns, f"/userSessions/{session_id}")
        assert stored["message_count"] == 1 + turns_elsewhere


async def test_a_memory_fold_is_two_requests_once_its_etag_is_known(
    make_settings: SettingsFactory, rtdb: RTDBServer
) -> None:
    settings = make_settings()
    ns = (settings.firebase_database_url or "").split("ns=")[1]
    store = build_store(settings)
    await store.open()
    try:
        session = SessionRecord(
            "s-1", "alice", "pirate", "active", T0, T0, None, 0, "", Sampling("m", 0, 9, 0, 0), 4
        )
        await store.create_session(session)
        call = CallUsage("alice", Usage(40, 6, 46), T0, ("default", "m"))
        sent = []
        for since in range(0, 8, 2):
            rtdb.clear_requests()
            assert await store.set_memory(
                "s-1", f"- {since}", seq=since + 2, expected_seq=since, at=T0, usage=call
            )
            sent.append([(r.method, r.path) for r in rtdb.requests if r.namespace == ns])
        # The first reads the memory's ETag and checks the session is there; then the cached
        # ETag does both: a conditional write, and the update that counts the call.
        assert [len(requests) for requests in sent] == [4, 2, 2, 2], sent[0]
        assert sent[3] == [("PUT", "/userSessions/s-1/memory"), ("PATCH", "/")]

        rtdb.set_data(ns, "/userSessions/s-1", None)  # erased by another instance
        assert not await store.set_memory(
            "s-1", "- late", seq=10, expected_seq=8, at=T0, usage=call
        )
        assert rtdb.get_data(ns, "/userSessions/s-1") is None, "an erased session came back"
        assert rtdb.get_data(ns, "/userUsage/alice/2026-01-01")["calls"] == 5
    finally:
        await store.close()


async def test_a_turn_never_waits_behind_a_titles_store_requests(
    make_settings: SettingsFactory, clock: FakeClock, rtdb: RTDBServer
) -> None:
    settings = make_settings(session_titles=True, store_threads=1, store_timeout_seconds=5)
    async with running_app(settings, clock) as chat:
        ns = namespace_of(chat)
        session_id = await chat.create_session("pirate")
        held = threading.Event()
        title = rtdb.faults.add(
            gate=held, times=None, namespace=ns, path_prefix=f"/userSessions/{session_id}/title"
        )
        try:
            assert (await chat.send(session_id, "ahoy")).status_code == 200
            await until(lambda: title.hits == 1, "the title's store request")
            # The title holds its store thread; the next turn has threads of its own, so it is
            # stored while the title's first request is still held (not after it timed out).
            reply = await chat.send(session_id, "and again")
            assert reply.status_code == 200 and reply.json()["message_count"] == 2
            assert title.hits == 1, "the turn waited for the title's request to time out"
        finally:
            held.set()
        await until(lambda: chat.services.titles.pending == 0, "the title")
        stored = await chat.services.store.get_session(session_id)
        assert stored is not None and stored.title is not None
