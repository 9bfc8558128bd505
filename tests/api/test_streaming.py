"""The streamed turn (SSE) over a real server: framing, disconnects, resume, upstream faults."""

from __future__ import annotations

import asyncio
import threading

import pytest

from testkit.live import Event, read_events
from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import API, Live, LiveFactory, collect, until


async def test_events_arrive_in_order_with_ids_and_add_up_to_the_stored_reply(
    live: Live, llm: MockLLM
) -> None:
    llm.script(Reply(content="Hello there, friend!", chunks=4))
    session_id = await live.create_session()
    async with live.stream(session_id, "hi", body={"client_message_id": "s1"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = await collect(response)

    assert [e.event for e in events] == ["start", "delta", "delta", "delta", "delta", "done"]
    assert [e.id for e in events] == ["0", "1", "2", "3", "4", "5"]
    assert events[0].json() == {"session_id": session_id, "turn": 1}
    streamed = "".join(e.json()["content"] for e in events if e.event == "delta")
    done = events[-1].json()
    assert streamed == done["response"] == "Hello there, friend!"
    assert done["replayed"] is False and done["message_count"] == 1
    assert done["usage"]["completion_tokens"] > 0
    assert (await live.history(session_id))[-1]["content"] == streamed
    sent = llm.chat_requests()[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_usage_is_estimated_when_the_server_sends_none(live: Live, llm: MockLLM) -> None:
    llm.script(Reply(content="No usage from me", usage=False))
    session_id = await live.create_session()
    async with live.stream(session_id, "hi") as response:
        done = (await collect(response))[-1].json()
    assert done["usage"]["completion_tokens"] >= 1 and done["usage"]["prompt_tokens"] >= 1


async def test_pings_are_sent_while_waiting(live_app: LiveFactory, llm: MockLLM) -> None:
    release = threading.Event()
    llm.script(Reply(gate=release))
    async with live_app(sse_ping_seconds=0.05) as live:
        session_id = await live.create_session()
        async with live.stream(session_id, "hi") as response:
            seen = []
            async for event in read_events(response):
                seen.append(event.event)
                if event.event == ":":
                    assert event.data == "ping"
                    release.set()
        assert ":" in seen and seen[-1] == "done"


async def test_a_client_that_drops_mid_stream_does_not_cancel_the_turn(
    live: Live, llm: MockLLM
) -> None:
    resume = threading.Event()
    llm.script(Reply(content="one two three four", chunks=4, pause_after_chunks=1, resume=resume))
    session_id = await live.create_session()
    async with live.stream(session_id, "hi") as response:
        async for event in read_events(response):
            if event.event == "delta":
                break  # hang up after the first delta
    resume.set()
    await until(lambda: session_id not in live.services.turns._gate._lanes, "the turn to end")

    history = await live.history(session_id)
    assert [m["content"] for m in history] == ["hi", "one two three four"]
    async with live.stream(session_id, "next") as response:
        events = await collect(response)
    assert events[-1].json()["message_count"] == 2


async def test_resume_in_flight_gets_missed_then_live_events_and_one_llm_call(
    live: Live, llm: MockLLM
) -> None:
    resume = threading.Event()
    llm.script(Reply(content="aaa bbb ccc ddd", chunks=4, pause_after_chunks=2, resume=resume))
    session_id = await live.create_session()
    first: list[Event] = []
    async with live.stream(session_id, "hi", body={"client_message_id": "r1"}) as response:
        async for event in read_events(response):
            if event.event != ":":
                first.append(event)
            if event.event == "delta":
                break  # we saw start and one delta; the second one was sent, but we are gone

    headers = {"Last-Event-ID": first[-1].id or ""}
    async with live.stream(
        session_id, "hi", body={"client_message_id": "r1"}, headers=headers
    ) as response:
        resumed_events = read_events(response)
        rest: list[Event] = []
        async for event in resumed_events:
            if event.event == ":":
                continue
            rest.append(event)
            if len(rest) == 1:
                resume.set()  # the missed delta arrived; now let the live ones flow
            if event.event == "done":
                break

    assert [e.id for e in first + rest] == [str(n) for n in range(6)]
    text = "".join(e.json()["content"] for e in first + rest if e.event == "delta")
    assert text == rest[-1].json()["response"] == "aaa bbb ccc ddd"
    assert len(llm.chat_requests()) == 1


async def test_resume_after_completion_replays_the_stored_turn(live: Live, llm: MockLLM) -> None:
    session_id = await live.create_session()
    async with live.stream(session_id, "hi", body={"client_message_id": "c1"}) as response:
        original = await collect(response)
    async with live.stream(
        session_id, "hi", body={"client_message_id": "c1"}, headers={"Last-Event-ID": "3"}
    ) as response:
        replay = await collect(response)

    assert [e.event for e in replay] == ["start", "delta", "done"]
    assert replay[1].json()["content"] == original[-1].json()["response"]
    assert replay[2].json() == {**original[-1].json(), "replayed": True}
    assert len(llm.chat_requests()) == 1


async def test_an_upstream_failure_mid_stream_ends_with_error_and_stores_nothing(
    live: Live, llm: MockLLM
) -> None:
    llm.script(Reply(content="this will break", chunks=4, fail_after_chunks=2))
    session_id = await live.create_session()
    async with live.stream(session_id, "hi") as response:
        events = await collect(response)

    assert [e.event for e in events] == ["start", "delta", "delta", "error"]
    assert events[-1].json()["code"] == "llm_unavailable"
    assert set(events[-1].json()) == {"code", "message"}
    assert await live.history(session_id) == []
    async with live.stream(session_id, "again") as response:
        assert (await collect(response))[-1].json()["message_count"] == 1


async def test_an_upstream_timeout_mid_stream_is_llm_timeout(
    live_app: LiveFactory, llm: MockLLM
) -> None:
    resume = threading.Event()
    llm.script(Reply(content="slow slow", chunks=2, pause_after_chunks=1, resume=resume))
    async with live_app(llm_timeout_seconds=2.0) as live:
        session_id = await live.create_session()
        async with live.stream(session_id, "hi") as response:
            events = await collect(response)
        resume.set()
        assert [e.event for e in events] == ["start", "delta", "error"]
        assert events[-1].json()["code"] == "llm_timeout"
        assert await live.history(session_id) == []


@pytest.mark.parametrize(
    ("prepare", "status", "code"),
    [
        ("unknown", 404, "session_not_found"),
        ("ended", 409, "session_ended"),
        ("empty", 422, "validation_error"),
    ],
)
async def test_errors_before_the_stream_are_plain_http(
    live: Live, prepare: str, status: int, code: str
) -> None:
    session_id = await live.create_session()
    message = "hi"
    if prepare == "unknown":
        session_id = "00000000-0000-4000-8000-000000000000"
    elif prepare == "ended":
        await live.client.delete(f"{API}/session/{session_id}")
    else:
        message = "   "
    async with live.stream(session_id, message) as response:
        await response.aread()
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


async def test_a_full_queue_is_429_before_the_stream(live_app: LiveFactory, llm: MockLLM) -> None:
    release = threading.Event()
    llm.script(Reply(gate=release))
    async with live_app(session_queue_limit=0) as live:
        session_id = await live.create_session()
        running = asyncio.create_task(
            live.client.post(f"{API}/session/{session_id}/message", json={"message": "one"})
        )
        await until(lambda: session_id in live.services.turns._gate._lanes, "the first turn")
        async with live.stream(session_id, "two") as response:
            await response.aread()
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        release.set()
        assert (await running).status_code == 200


async def test_a_bug_in_a_turn_ends_its_stream_with_an_internal_error(
    live: Live, llm: MockLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> list[dict[str, str]]:
        raise RuntimeError("a bug in the prompt builder")

    session_id = await live.create_session()
    monkeypatch.setattr("services.conversation.turns.build_prompt", broken)
    async with live.stream(session_id, "hi") as response:
        events = await asyncio.wait_for(collect(response), 10)  # not pings forever
    assert [e.event for e in events] == ["start", "error"]
    assert events[-1].json()["code"] == "internal_error"
    assert llm.chat_requests() == []
