"""The WebSocket channel over a real server, and all three transports racing on one session."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import API, Live, collect, until


def ws_url(live: Live, session_id: str) -> str:
    """The channel's address."""
    return live.url.replace("http://", "ws://") + f"{API}/session/{session_id}/ws"


async def receive(socket: ClientConnection) -> dict[str, Any]:
    """The next JSON event."""
    event: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), 10))
    return event


async def turn_events(socket: ClientConnection) -> list[dict[str, Any]]:
    """Events of one turn, up to ``backend_status`` or an ``error``."""
    events = []
    while True:
        events.append(await receive(socket))
        if events[-1]["type"] in ("backend_status", "error"):
            return events


async def test_history_on_connect_then_several_turns(live: Live, llm: MockLLM) -> None:
    session_id = await live.create_session()
    await live.client.post(f"{API}/session/{session_id}/message", json={"message": "earlier"})
    llm.script(Reply(content="first answer", chunks=2), Reply(content="second answer", chunks=3))
    async with websockets.connect(ws_url(live, session_id)) as socket:
        history = await receive(socket)
        assert history["type"] == "chat_history"
        assert [m["content"] for m in history["messages"]] == ["earlier", "Echo: earlier"]

        await socket.send(
            json.dumps({"type": "user_message", "message": "one", "client_message_id": "w1"})
        )
        first = await turn_events(socket)
        await socket.send(json.dumps({"type": "user_message", "message": "two"}))
        second = await turn_events(socket)

    assert [e["type"] for e in first] == [
        "ai_response_delta",
        "ai_response_delta",
        "ai_response",
        "backend_status",
    ]
    assert "".join(e["content"] for e in first[:2]) == "first answer"
    # Every frame of the turn names the client_message_id it answers.
    assert [e["client_message_id"] for e in first] == ["w1"] * 4
    response = first[2]
    user, reply = response["user_message"], response["assistant_message"]
    assert response == {
        "type": "ai_response",
        "success": True,
        "response": "first answer",
        "session_id": session_id,
        "message_count": 2,
        "replayed": False,
        "usage": response["usage"],
        "user_message": user,
        "assistant_message": reply,
        "finish_reason": "stop",
        "client_message_id": "w1",
    }
    assert (user["seq"], user["role"], user["content"], user["client_message_id"]) == (
        2,
        "user",
        "one",
        "w1",
    )
    assert (reply["seq"], reply["content"]) == (3, "first answer")
    assert user["timestamp"] <= reply["timestamp"]
    status = first[3]
    assert status["latency_ms"] >= 0 and status["usage"] == response["usage"]
    assert status["model"] == "gpt-4o-mini"
    assert second[-2]["response"] == "second answer" and second[-2]["message_count"] == 3
    assert second[-2]["client_message_id"] is None


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_frame"),
        (b"\x00binary", "bad_frame"),
        (json.dumps(["a list"]), "bad_frame"),
        (json.dumps({"type": "typing"}), "bad_frame"),
        (json.dumps({"type": "user_message"}), "validation_error"),
        (json.dumps({"type": "user_message", "message": "   "}), "validation_error"),
        (
            json.dumps({"type": "user_message", "message": "x", "client_message_id": ""}),
            "validation_error",
        ),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_open(
    live: Live, llm: MockLLM, frame: str | bytes, code: str
) -> None:
    session_id = await live.create_session()
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)
        await socket.send(frame)
        error = await receive(socket)
        assert error["type"] == "error" and error["code"] == code and error["message"]
        await socket.send(json.dumps({"type": "user_message", "message": "still here?"}))
        assert (await turn_events(socket))[-2]["response"] == "Echo: still here?"
    assert len(llm.chat_requests()) == 1


async def test_upstream_errors_are_events_and_the_socket_stays_open(
    live: Live, llm: MockLLM
) -> None:
    llm.script(Reply(status=500))
    session_id = await live.create_session()
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)
        await socket.send(json.dumps({"type": "user_message", "message": "hi"}))
        events = await turn_events(socket)
        assert events[-1]["type"] == "error" and events[-1]["code"] == "llm_error"
        await socket.send(json.dumps({"type": "user_message", "message": "hi again"}))
        assert (await turn_events(socket))[-2]["message_count"] == 1


async def test_unknown_session_closes_with_4404(live: Live) -> None:
    url = ws_url(live, "00000000-0000-4000-8000-000000000000")
    async with websockets.connect(url) as socket:
        error = await receive(socket)
        assert error["code"] == "session_not_found"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


async def test_ended_session_closes_with_4409(live: Live) -> None:
    session_id = await live.create_session()
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)
        await live.client.delete(f"{API}/session/{session_id}")
        # Told at once, whoever ended it, then closed.
        assert await receive(socket) == {"type": "session_ended", "status": "ended"}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
    async with websockets.connect(ws_url(live, session_id)) as socket:
        assert (await receive(socket))["code"] == "session_ended"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409


async def test_plain_streamed_and_websocket_turns_race_in_arrival_order(
    live: Live, llm: MockLLM
) -> None:
    release = threading.Event()
    llm.script(Reply(gate=release))
    session_id = await live.create_session()
    gate = live.services.turns._gate

    plain = asyncio.create_task(
        live.client.post(f"{API}/session/{session_id}/message", json={"message": "plain"})
    )
    await until(lambda: session_id in gate._lanes, "the plain turn")

    async def streamed() -> list[Any]:
        async with live.stream(session_id, "streamed") as response:
            return await collect(response)

    sse = asyncio.create_task(streamed())
    await until(lambda: gate.waiting(session_id) == 1, "the streamed turn to queue")
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)
        await socket.send(json.dumps({"type": "user_message", "message": "websocket"}))
        await until(lambda: gate.waiting(session_id) == 2, "the websocket turn to queue")
        release.set()
        seen = [await turn_events(socket) for _ in range(3)]  # it watches the other two live
        ws_events = seen[-1]
    assert [events[-2]["response"] for events in seen[:2]] == ["Echo: plain", "Echo: streamed"]

    assert (await plain).json()["message_count"] == 1
    assert (await sse)[-1].json()["message_count"] == 2
    assert ws_events[-2]["message_count"] == 3
    history = await live.history(session_id)
    assert [m["content"] for m in history[::2]] == ["plain", "streamed", "websocket"]
    assert len(llm.chat_requests()) == 3


async def test_every_socket_on_a_session_sees_every_turn_live(live: Live, llm: MockLLM) -> None:
    session_id = await live.create_session()
    async with (
        websockets.connect(ws_url(live, session_id)) as phone,
        websockets.connect(ws_url(live, session_id)) as laptop,
    ):
        await receive(phone), await receive(laptop)  # chat_history

        # A turn over plain HTTP: both sockets watch it happen.
        llm.script(Reply(content="from the web", chunks=2))
        sent = await live.client.post(
            f"{API}/session/{session_id}/message", json={"message": "hi", "client_message_id": "h1"}
        )
        assert sent.status_code == 200
        for socket in (phone, laptop):
            events = await turn_events(socket)
            kinds = [e["type"] for e in events]
            assert kinds[0] == "turn_started" and kinds[-2:] == ["ai_response", "backend_status"]
            assert set(kinds[1:-2]) == {"ai_response_delta"}
            assert "".join(e["content"] for e in events[1:-2]) == "from the web"
            assert events[0] == {
                "type": "turn_started",
                "turn": 1,
                "message": "hi",
                "client_message_id": "h1",
            }
            assert events[-2]["response"] == "from the web"
            assert {e["client_message_id"] for e in events} == {"h1"}

        # A turn on the phone: the phone follows its own turn; the laptop sees it too.
        await phone.send(
            json.dumps({"type": "user_message", "message": "yo", "client_message_id": "p1"})
        )
        mine = await turn_events(phone)
        theirs = await turn_events(laptop)
        assert "turn_started" not in [e["type"] for e in mine]
        assert mine[-2]["response"] == theirs[-2]["response"] == "Echo: yo"
        assert theirs[0]["message"] == "yo" and theirs[0]["client_message_id"] == "p1"

        # A replay is not news: the laptop's next frames belong to the next real turn.
        again = await live.client.post(
            f"{API}/session/{session_id}/message", json={"message": "hi", "client_message_id": "h1"}
        )
        assert again.json()["replayed"] is True
        renamed = await live.client.patch(f"{API}/session/{session_id}", json={"title": "Chat"})
        assert renamed.status_code == 200
        assert await receive(laptop) == {"type": "session_title", "title": "Chat"}
        assert await receive(phone) == {"type": "session_title", "title": "Chat"}

        await live.client.delete(f"{API}/session/{session_id}")
        for socket in (phone, laptop):
            assert await receive(socket) == {"type": "session_ended", "status": "ended"}
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await socket.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
    assert len(llm.chat_requests()) == 2


async def test_a_lone_surrogate_is_a_validation_error_and_the_socket_stays_open(
    live: Live, llm: MockLLM
) -> None:
    session_id = await live.create_session()
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)
        # Valid JSON text whose string decodes to a lone surrogate, which UTF-8 cannot store.
        await socket.send(
            '{"type": "user_message", "message": "x\\ud800y", "client_message_id": "s1"}'
        )
        error = await receive(socket)
        assert error["type"] == "error" and error["code"] == "validation_error", error
        assert error["message"].startswith("message: ")
        await socket.send(json.dumps({"type": "user_message", "message": "still here?"}))
        assert (await turn_events(socket))[-2]["response"] == "Echo: still here?"
    assert len(llm.chat_requests()) == 1
    assert [m["content"] for m in await live.history(session_id)] == [
        "still here?",
        "Echo: still here?",
    ]


async def test_deeply_nested_json_is_a_bad_frame_and_the_socket_stays_open(
    live: Live, llm: MockLLM
) -> None:
    session_id = await live.create_session()
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)
        await socket.send("[" * 10_000 + "]" * 10_000)
        error = await receive(socket)
        assert error["type"] == "error" and error["code"] == "bad_frame", error
        await socket.send(json.dumps({"type": "user_message", "message": "still here?"}))
        assert (await turn_events(socket))[-2]["response"] == "Echo: still here?"
    assert len(llm.chat_requests()) == 1


async def test_a_frame_over_ws_max_frame_bytes_closes_with_1009(live: Live, llm: MockLLM) -> None:
    limit = live.services.settings.ws_max_frame_bytes
    session_id = await live.create_session()
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)
        await socket.send(json.dumps({"type": "user_message", "message": "x" * limit}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await receive(socket)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    # The longest message, every character escaped as a surrogate pair, still fits.
    longest = "\U0001f600" * live.services.settings.max_message_chars
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)
        frame = json.dumps({"type": "user_message", "message": longest, "client_message_id": "l1"})
        assert len(frame.encode()) <= limit
        await socket.send(frame)
        assert (await turn_events(socket))[-2]["response"] == f"Echo: {longest}"
    assert len(llm.chat_requests()) == 1
