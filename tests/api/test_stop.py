"""Stopping a turn in flight: the upstream request is closed, the text so far is stored as the
reply with ``finish_reason: "stopped"``, and every transport sees the same end. How soon the
request is closed is measured by ``python -m bench.stop`` (target 100 ms), not here."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import websockets

from testkit.live import Event, read_events
from testkit.mock_llm import Hold, MockLLM, Reply
from testkit.node_ai import lines_of, run_node
from tests.api.conftest import API, Live, LiveFactory, collect
from tests.api.test_ws import receive, turn_events, ws_url


async def stop(live: Live, session_id: str) -> tuple[httpx.Response, float]:
    """Ask to stop the session's turn; the response and when it was asked."""
    asked = time.monotonic()
    return await live.client.post(f"{API}/session/{session_id}/stop"), asked


async def closed_at(hold: Hold) -> float:
    """When the mock saw the service hang up (waiting for it, bounded)."""
    assert await asyncio.to_thread(hold.closed.wait, 10), "the upstream request stayed open"
    assert hold.closed_at is not None
    return hold.closed_at


async def rest_of(events: AsyncIterator[Event]) -> list[Event]:
    """The stream's remaining events (comments left out)."""
    return [event async for event in events if event.event != ":"]


async def until_delta(events: AsyncIterator[Event]) -> list[Event]:
    """The stream's events up to its first delta."""
    seen: list[Event] = []
    async for event in events:
        if event.event != ":":
            seen.append(event)
        if event.event == "delta":
            return seen
    raise AssertionError("the stream ended before a delta")


async def test_a_stopped_stream_closes_the_upstream_and_stores_what_came(
    live: Live, llm: MockLLM
) -> None:
    session_id = await live.create_session()
    hold = Hold(after_chunks=2)
    llm.script(Reply(content="one two three four", chunks=4, hold=hold))  # "one t", "wo th"…
    body = {"client_message_id": "s-1"}
    async with live.stream(session_id, "count", body=body) as response:
        events = read_events(response)
        first = await until_delta(events)
        resumed_events: list[Event] = []
        # A resumed stream (the same turn, after the first event) ends the same way.
        headers = {"Last-Event-ID": first[0].id or "0"}
        async with live.stream(session_id, "count", body=body, headers=headers) as resumed:
            stopped, asked = await stop(live, session_id)
            rest = await rest_of(events)
            resumed_events = await collect(resumed)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {"session_id": session_id, "stopping": True}
    assert await closed_at(hold) >= asked  # closed by the stop (how soon: bench.stop)
    done = rest[-1]
    assert done.event == "done" and resumed_events[-1].event == "done"
    for end in (done.json(), resumed_events[-1].json()):
        assert end["finish_reason"] == "stopped"
        assert end["assistant_message"]["finish_reason"] == "stopped"
    partial = "".join(e.json()["content"] for e in [*first, *rest] if e.event == "delta")
    assert partial == "one two th" and done.json()["response"] == partial

    history = await live.history(session_id)
    assert [(m["content"], m["finish_reason"]) for m in history] == [
        ("count", None),
        ("one two th", "stopped"),
    ]
    # A resend of the id replays the stopped reply; the next turn's prompt holds it.
    again = await live.client.post(
        f"{API}/session/{session_id}/message", json={"message": "count", **body}
    )
    assert again.json()["replayed"] is True and again.json()["finish_reason"] == "stopped"
    assert again.json()["response"] == "one two th"
    after = await live.client.post(f"{API}/session/{session_id}/message", json={"message": "go"})
    assert after.json()["finish_reason"] == "stop"
    prompt = llm.chat_requests()[-1]["messages"]
    assert [m["content"] for m in prompt[-3:]] == ["count", "one two th", "go"]
    assert len(llm.chat_requests()) == 2


async def test_stopping_with_no_turn_in_flight_is_409_and_twice_is_harmless(
    live: Live, llm: MockLLM
) -> None:
    session_id = await live.create_session()
    idle, _ = await stop(live, session_id)
    assert idle.status_code == 409
    assert idle.json()["error"]["code"] == "no_turn_in_flight"

    hold = Hold(after_chunks=1)
    llm.script(Reply(content="abc def", chunks=2, hold=hold))
    async with live.stream(session_id, "hi") as response:
        events = read_events(response)
        await until_delta(events)
        first, _ = await stop(live, session_id)
        await asyncio.to_thread(hold.closed.wait, 10)
        second, _ = await stop(live, session_id)  # the turn ends (or has ended) either way
        rest = await rest_of(events)
    after, _ = await stop(live, session_id)
    assert first.status_code == 200
    assert second.status_code in (200, 409)
    assert after.status_code == 409
    assert rest[-1].event == "done" and rest[-1].json()["finish_reason"] == "stopped"
    assert [m["content"] for m in await live.history(session_id)] == ["hi", "abc "]


async def test_a_stopped_json_turn_answers_200_with_what_came(live: Live, llm: MockLLM) -> None:
    session_id = await live.create_session()
    hold = Hold()
    arrived = threading.Event()
    llm.script(Reply(content="never sent", hold=hold, arrived=arrived))
    turn = asyncio.create_task(
        live.client.post(f"{API}/session/{session_id}/message", json={"message": "hi"})
    )
    assert await asyncio.to_thread(arrived.wait, 10)
    stopped, asked = await stop(live, session_id)
    answer = await turn
    assert stopped.status_code == 200
    assert await closed_at(hold) >= asked  # closed by the stop (how soon: bench.stop)
    assert answer.status_code == 200, answer.text
    # A JSON turn asks for the whole reply at once: nothing of it came before the stop.
    assert answer.json()["response"] == "" and answer.json()["finish_reason"] == "stopped"
    assert [m["finish_reason"] for m in await live.history(session_id)] == [None, "stopped"]


async def test_a_stop_frame_stops_the_socket_turn_and_every_socket_sees_it(
    live: Live, llm: MockLLM
) -> None:
    session_id = await live.create_session()
    hold = Hold(after_chunks=1)
    llm.script(Reply(content="first second", chunks=2, hold=hold))
    async with (
        websockets.connect(ws_url(live, session_id)) as socket,
        websockets.connect(ws_url(live, session_id)) as other,
    ):
        await receive(socket), await receive(other)  # chat_history
        await socket.send(json.dumps({"type": "stop"}))
        idle = await receive(socket)
        await socket.send(json.dumps({"type": "user_message", "message": "go"}))
        delta = await receive(socket)
        asked = time.monotonic()
        await socket.send(json.dumps({"type": "stop"}))
        rest = await turn_events(socket)
        seen = await turn_events(other)
    assert idle["type"] == "error" and idle["code"] == "no_turn_in_flight"
    assert delta == {"type": "ai_response_delta", "content": "first ", "client_message_id": None}
    assert await closed_at(hold) >= asked  # closed by the stop (how soon: bench.stop)
    for events in (rest, seen):
        reply = next(e for e in events if e["type"] == "ai_response")
        assert reply["finish_reason"] == "stopped" and reply["response"] == "first "
    assert seen[0]["type"] == "turn_started"


async def test_the_ai_sdk_stream_finishes_a_stopped_turn(
    live: Live, llm: MockLLM, node_ai: Path
) -> None:
    session_id = await live.create_session()
    hold = Hold(after_chunks=1)
    llm.script(Reply(content="Ahoy there", chunks=2, hold=hold))
    sent = await run_node(node_ai, "send", live.url, session_id, "ui-1", "Hello?")
    assert sent.stdout is not None
    state: list[Any] = []
    while not any(state):  # until the first text arrived
        state = json.loads(await asyncio.wait_for(sent.stdout.readline(), 30))["state"]
    stopped, asked = await stop(live, session_id)
    lines = await lines_of(sent)
    assert stopped.status_code == 200
    assert await closed_at(hold) >= asked  # closed by the stop (how soon: bench.stop)
    done = lines[-1]["done"]
    assert done["reply"] == "Ahoy " and done["metadata"]["finish_reason"] == "stopped"
    history = await live.history(session_id)
    assert history[-1]["content"] == "Ahoy " and history[-1]["finish_reason"] == "stopped"
    reloaded = (await live.client.get(f"{API}/chat/{session_id}/messages")).json()["messages"]
    assert reloaded[-1]["metadata"]["finish_reason"] == "stopped"
    assert reloaded[0]["metadata"]["finish_reason"] is None


async def test_a_stop_sent_to_another_replica_stops_the_turn(
    live_app: LiveFactory, llm: MockLLM, redis_url: str
) -> None:
    hold = Hold(after_chunks=1)
    llm.script(Reply(content="far away", chunks=2, hold=hold))
    async with live_app(redis_url=redis_url) as a, live_app(redis_url=redis_url) as b:
        session_id = await a.create_session()
        async with a.stream(session_id, "hi", body={"client_message_id": "r-1"}) as response:
            stream = read_events(response)
            await until_delta(stream)
            stopped, asked = await stop(b, session_id)
            events = await rest_of(stream)
        after, _ = await stop(b, session_id)
    assert stopped.status_code == 200, stopped.text
    assert await closed_at(hold) >= asked  # closed by the stop (how soon: bench.stop)
    assert events[-1].event == "done" and events[-1].json()["finish_reason"] == "stopped"
    assert events[-1].json()["response"] == "far "
    assert after.status_code == 409
