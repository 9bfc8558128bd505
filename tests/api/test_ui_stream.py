"""``useChat``'s protocol: the AI SDK's own transport and reader (the real ``ai`` npm package,
in Node) rebuild a reply streamed by the service, resume a turn in flight, and get 204 when
there is none. The package is installed by ``npm ci`` the first time (pinned in
tests/support/node/package-lock.json)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from bench.mock_llm import MockLLM, Reply
from tests.api.conftest import API, Live
from tests.support.node_ai import lines_of, run_node


async def test_the_ai_sdk_reader_rebuilds_a_streamed_reply(
    live: Live, llm: MockLLM, node_ai: Path
) -> None:
    session_id = await live.create_session()
    llm.script(Reply(content="Ahoy there, matey!", chunks=4))
    sent = await run_node(node_ai, "send", live.url, session_id, "msg-1", "Hello?")
    lines = await lines_of(sent)
    done = lines[-1]["done"]
    assert done["role"] == "assistant" and done["reply"] == "Ahoy there, matey!"
    assert done["metadata"]["message_count"] == 1 and done["metadata"]["replayed"] is False
    assert len(lines) > 3, "the text arrived in several deltas"

    # Stored like any turn, under the message id; a resend replays instead of a second call.
    history = await live.history(session_id)
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "Hello?"),
        ("assistant", "Ahoy there, matey!"),
    ]
    assert history[0]["client_message_id"] == "msg-1"
    again = await lines_of(await run_node(node_ai, "send", live.url, session_id, "msg-1", "Hello?"))
    assert again[-1]["done"]["reply"] == "Ahoy there, matey!"
    assert again[-1]["done"]["metadata"]["replayed"] is True
    assert len(llm.chat_requests()) == 1

    idle = await lines_of(await run_node(node_ai, "resume", live.url, session_id))
    assert idle == [{"done": None}]  # 204: nothing in flight


async def test_the_ai_sdk_resumes_a_turn_in_flight(live: Live, llm: MockLLM, node_ai: Path) -> None:
    session_id = await live.create_session()
    resume = threading.Event()
    llm.script(Reply(content="one two three four", chunks=4, pause_after_chunks=1, resume=resume))
    body = {
        "id": session_id,
        "messages": [{"id": "m-2", "role": "user", "parts": [{"type": "text", "text": "Count"}]}],
        "trigger": "submit-message",
    }
    async with live.client.stream("POST", f"{API}/chat", json=body) as first:
        assert first.headers["x-vercel-ai-ui-message-stream"] == "v1"
        async for line in first.aiter_lines():
            if '"text-delta"' in line:
                break  # the client goes away mid-reply; the turn goes on, paused in the model
    resumed = await run_node(node_ai, "resume", live.url, session_id)
    assert resumed.stdout is not None
    seen = []
    while not any(seen[-1]["state"] if seen else []):  # until the first delta came again
        seen.append(json.loads(await asyncio.wait_for(resumed.stdout.readline(), 30)))
    assert "one two three four".startswith(seen[-1]["state"][0])
    resume.set()  # only now does the model go on
    lines = [*seen, *await lines_of(resumed)]
    assert lines[-1]["done"]["reply"] == "one two three four"
    history = await live.history(session_id)
    assert [m["content"] for m in history] == ["Count", "one two three four"]
    assert len(llm.chat_requests()) == 1


async def test_bad_requests_are_refused_before_the_stream(live: Live) -> None:
    session_id = await live.create_session()
    no_user = {"id": session_id, "messages": [{"id": "a", "role": "assistant", "parts": []}]}
    unknown = {
        "id": "00000000-0000-4000-8000-000000000000",
        "messages": [{"id": "a", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    }
    for body, status in ((no_user, 422), (unknown, 404), ({"id": session_id}, 422)):
        response = await live.client.post(f"{API}/chat", json=body)
        assert response.status_code == status, response.text
        assert response.json()["success"] is False
