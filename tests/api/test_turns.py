"""Turn semantics: idempotency, ordering, queue limit, and what a failed turn leaves behind."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from services.conversation.prompt import WELCOME_PREFIX
from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import until
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"


async def _arrived(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10), "the LLM request never arrived"


async def test_replay_by_client_message_id_calls_the_llm_once(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await chat.create_session()
    first = await chat.send(session_id, "hi", client_message_id="m-1")
    second = await chat.send(session_id, "hi", client_message_id="m-1")

    assert first.json()["replayed"] is False
    assert second.json() == {**first.json(), "replayed": True}
    assert len(llm.chat_requests()) == 1
    history = (await chat.client.get(f"{API}/session/{session_id}")).json()
    assert history["message_count"] == 1
    assert history["conversation_history"][0]["client_message_id"] == "m-1"


async def test_replay_of_an_old_turn_after_restart_comes_from_the_store(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    settings = make_settings()
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("pirate")  # keeps 4 messages of context
        first = await chat.send(session_id, "oldest", client_message_id="old")
        for n in range(3):
            await chat.send(session_id, f"filler {n}")
    async with running_app(settings, clock) as chat:
        replay = await chat.send(session_id, "oldest", client_message_id="old")
    assert replay.json() == {**first.json(), "replayed": True}
    assert len(llm.chat_requests()) == 4


async def test_same_id_with_another_message_is_a_conflict(chat: RunningApp, llm: MockLLM) -> None:
    session_id = await chat.create_session()
    await chat.send(session_id, "hi", client_message_id="m-1")
    conflict = await chat.send(session_id, "something else", client_message_id="m-1")
    assert conflict.status_code == 422
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert len(llm.chat_requests()) == 1


async def test_a_retry_waits_for_the_turn_in_flight(chat: RunningApp, llm: MockLLM) -> None:
    release, arrived = threading.Event(), threading.Event()
    llm.script(Reply(content="slow reply", gate=release, arrived=arrived))
    session_id = await chat.create_session()
    original = asyncio.create_task(chat.send(session_id, "hi", client_message_id="m-1"))
    await _arrived(arrived)
    retry = asyncio.create_task(chat.send(session_id, "hi", client_message_id="m-1"))
    running = chat.services.turns.in_flight(session_id, "m-1")
    assert running is not None
    await until(lambda: running.joiners == 1, "the retry to join the turn in flight")
    assert chat.services.turns._gate.waiting(session_id) == 0  # joined, not queued
    release.set()

    first, second = await original, await retry
    assert first.json()["response"] == second.json()["response"] == "slow reply"
    assert (first.json()["replayed"], second.json()["replayed"]) == (False, True)
    assert len(llm.chat_requests()) == 1


async def test_concurrent_messages_are_processed_one_at_a_time_in_order(
    chat: RunningApp, llm: MockLLM
) -> None:
    release, arrived = threading.Event(), threading.Event()
    llm.script(Reply(gate=release, arrived=arrived))
    session_id = await chat.create_session("plain")
    gate = chat.services.turns._gate
    first = asyncio.create_task(chat.send(session_id, "first"))
    await _arrived(arrived)
    second = asyncio.create_task(chat.send(session_id, "second"))
    await until(lambda: gate.waiting(session_id) == 1, "the second message to queue")
    third = asyncio.create_task(chat.send(session_id, "third"))
    await until(lambda: gate.waiting(session_id) == 2, "the third message to queue")
    assert len(llm.chat_requests()) == 1  # no overlapping LLM calls
    release.set()

    replies = [(await task).json() for task in (first, second, third)]
    assert [r["message_count"] for r in replies] == [1, 2, 3]
    prompts = [[m["content"] for m in body["messages"][1:]] for body in llm.chat_requests()]
    assert prompts == [
        ["first"],
        ["first", "Echo: first", "second"],
        ["first", "Echo: first", "second", "Echo: second", "third"],
    ]


async def test_too_many_waiting_messages_answer_session_busy(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    release, arrived = threading.Event(), threading.Event()
    llm.script(Reply(gate=release, arrived=arrived))
    async with running_app(make_settings(session_queue_limit=1), clock) as chat:
        session_id = await chat.create_session()
        gate = chat.services.turns._gate
        running = asyncio.create_task(chat.send(session_id, "one"))
        await _arrived(arrived)
        waiting = asyncio.create_task(chat.send(session_id, "two"))
        await until(lambda: gate.waiting(session_id) == 1, "a message to queue")

        busy = await chat.send(session_id, "three")

        assert busy.status_code == 429
        assert busy.json()["error"]["code"] == "session_busy"
        assert busy.headers["retry-after"] == "1"
        release.set()
        assert (await running).status_code == (await waiting).status_code == 200
        other = await chat.create_session()
        assert (await chat.send(other, "unaffected")).status_code == 200


async def test_failed_llm_call_stores_nothing_and_the_retry_succeeds(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await chat.create_session()
    llm.script(Reply(status=500))
    failed = await chat.send(session_id, "hi", client_message_id="m-1")
    assert failed.status_code == 502

    detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
    assert detail["message_count"] == 0 and detail["conversation_history"] == []
    assert detail["welcome_message"] == "Ahoy!"  # the greeting is kept, outside the seqs

    retried = await chat.send(session_id, "hi", client_message_id="m-1")
    assert retried.status_code == 200
    assert retried.json()["replayed"] is False and retried.json()["message_count"] == 1
    assert llm.chat_requests()[-1]["messages"][1:] == [
        {"role": "system", "content": WELCOME_PREFIX + "Ahoy!"},
        {"role": "user", "content": "hi"},
    ]


async def test_a_client_that_goes_away_does_not_cancel_the_turn(
    chat: RunningApp, llm: MockLLM
) -> None:
    release, arrived = threading.Event(), threading.Event()
    llm.script(Reply(content="stored anyway", gate=release, arrived=arrived))
    session_id = await chat.create_session()
    request = asyncio.create_task(chat.send(session_id, "hi", client_message_id="gone"))
    await _arrived(arrived)
    request.cancel()
    release.set()
    await chat.services.turns.drain()

    replay = await chat.send(session_id, "hi", client_message_id="gone")
    assert replay.json()["replayed"] is True
    assert replay.json()["response"] == "stored anyway"


async def test_each_request_gets_a_request_id(chat: RunningApp) -> None:
    mine = await chat.client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    generated = await chat.client.get("/health", headers={"X-Request-ID": "bad id\t"})
    assert len(generated.headers["x-request-id"]) == 32


async def test_request_log_line_has_method_path_status_latency(
    chat: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="chatify.requests"):
        await chat.client.get("/health", headers={"X-Request-ID": "rid-1"})
    (line,) = [r.getMessage() for r in caplog.records if r.name == "chatify.requests"]
    assert line.startswith("GET /health 200 ") and line.endswith("ms rid=rid-1")


async def test_a_resend_to_a_session_ended_since_replays_its_stored_reply(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await chat.create_session()
    first = await chat.send(session_id, "last words", client_message_id="bye-1")
    assert (await chat.client.delete(f"{API}/session/{session_id}")).status_code == 200

    again = await chat.send(session_id, "last words", client_message_id="bye-1")
    assert again.status_code == 200
    assert again.json() == {**first.json(), "replayed": True}
    async with chat.client.stream(
        "POST",
        f"{API}/session/{session_id}/message/stream",
        json={"message": "last words", "client_message_id": "bye-1"},
    ) as streamed:
        text = "".join([line async for line in streamed.aiter_lines()])
    assert streamed.status_code == 200 and "event: done" in text and "Echo: last words" in text
    assert len(llm.chat_requests()) == 1

    # Anything else is still refused: a new message, a new id, an id with other text.
    for extra in ({}, {"client_message_id": "bye-2"}):
        refused = await chat.send(session_id, "one more", **extra)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "session_ended"
    conflict = await chat.send(session_id, "other words", client_message_id="bye-1")
    assert conflict.status_code == 422
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
