"""``useChat``'s protocol: the AI SDK's own transport and reader (the real ``ai`` npm package,
in Node) rebuild a reply streamed by the service, resume a turn in flight, and get 204 when
there is none; after a reload, the stored history loads as the ``UIMessage``s ``useChat`` takes,
and the chat goes on from them. The package is installed by ``npm ci`` the first time (pinned
in testkit/node/package-lock.json)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path
from typing import Any

from api.routes.ui_stream import ui_message
from services.core.records import StoredMessage, ToolCall, ToolUse
from services.core.settings import REPO_ROOT
from testkit.mock_llm import MockLLM, Reply
from testkit.node_ai import CHAT_STATE, lines_of, run_node
from tests.api.conftest import API, Live, LiveFactory
from tests.api.test_tools import CONVERT, TEMPLATES, stdio

# useChat after a reload, outside React: the documented loader (docs/streaming.md) fetches the
# history, the SDK's own validator checks it, and the SDK's own chat (what @ai-sdk/react's
# useChat drives, with the state it keeps) starts from it and sends a follow-up turn.
RELOAD = """
import { AbstractChat, DefaultChatTransport, validateUIMessages } from __AI__;
const BASE = __BASE__;
__LOADER__
__STATE__
const sessionId = __SESSION__;
const messages = await validateUIMessages({ messages: await loadChat(sessionId) });
console.log(JSON.stringify({ loaded: messages }));
const chat = new AbstractChat({
  id: sessionId,
  state: new State(messages),
  transport: new DefaultChatTransport({ api: `${BASE}/api/v1/chatbot/chat` }),
});
await chat.sendMessage({ text: "And in feet?" });
console.log(JSON.stringify({ status: chat.status, error: chat.error?.message ?? null }));
console.log(JSON.stringify({ after: chat.messages }));
"""


def ai_module(node_ai: Path) -> str:
    """The installed ``ai`` package, as a JavaScript import specifier (drivers in tmp_path)."""
    return json.dumps((node_ai.parent / "node_modules" / "ai" / "dist" / "index.mjs").as_uri())


def doc_loader() -> str:
    """The ```js block of docs/streaming.md that loads a chat after a reload."""
    text = (REPO_ROOT / "docs" / "streaming.md").read_text()
    blocks: list[str] = re.findall(r"```js\n(.*?)```", text, re.S)
    [block] = [b for b in blocks if "function loadChat" in b]
    return block


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
    seen: list[dict[str, Any]] = []
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


async def test_use_chat_reloads_the_stored_history_and_goes_on(
    live_app: LiveFactory, seed_dir: Path, llm: MockLLM, node_ai: Path, tmp_path: Path
) -> None:
    converter = seed_dir / "templates" / "converter.json"
    converter.write_text(json.dumps(TEMPLATES["converter"]))
    async with live_app(mcp_servers={"demo": stdio("mcp_servers.demo")}) as live:
        session_id = await live.create_session("converter")
        ask = f"Convert {CONVERT}"
        tool_turn = await lines_of(await run_node(node_ai, "send", live.url, session_id, "m1", ask))
        text_turn = await lines_of(
            await run_node(node_ai, "send", live.url, session_id, "m2", "Ta")
        )
        driver = tmp_path / "reload.mjs"
        driver.write_text(
            RELOAD.replace("__AI__", ai_module(node_ai))
            .replace("__STATE__", CHAT_STATE)
            .replace("__BASE__", json.dumps(live.url))
            .replace("__SESSION__", json.dumps(session_id))
            .replace("__LOADER__", doc_loader())
        )
        loaded, finished, after = await lines_of(await run_node(driver))
        stored = await live.history(session_id)

    streamed = tool_turn[-1]["done"], text_turn[-1]["done"]
    messages = loaded["loaded"]
    # The ids the stream gave (the user's message id, the reply's `start` messageId).
    assert [m["id"] for m in messages] == ["m1", streamed[0]["id"], "m2", streamed[1]["id"]]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    user, reply = messages[:2]
    assert user["parts"] == [{"type": "text", "text": ask, "state": "done"}]
    assert user["metadata"] == {
        "session_id": session_id, "seq": 0, "timestamp": stored[0]["timestamp"],
        "finish_reason": None,
    }  # fmt: skip
    text, *tools = reply["parts"]
    assert text == {"type": "text", "text": streamed[0]["reply"], "state": "done"}
    [tool] = tools  # as the stream's reader built it
    assert tool == {
        "type": "dynamic-tool",
        "toolName": "demo/convert_units",
        "toolCallId": stored[1]["tools"][0]["id"],
        "state": "output-available",
        "input": {"value": 5, "from_unit": "km", "to_unit": "mi"},
        "output": "5 km = 3.10686 mi",
        "providerExecuted": True,
    }
    assert [{k: tool.get(k) for k in ("state", "input", "output")}] == [
        {k: t[k] for k in ("state", "input", "output")} for t in streamed[0]["tools"]
    ]
    assert messages[3]["parts"] == [{"type": "text", "text": "Echo: Ta", "state": "done"}]

    # The follow-up: one new user message and one new reply, nothing shown twice.
    assert finished == {"status": "ready", "error": None}
    chat = after["after"]
    ids = [m["id"] for m in chat]
    assert ids[:4] == [m["id"] for m in messages] and len(set(ids)) == 6
    assert ids[5] == f"{ids[4]}-reply"
    assert chat[5]["parts"][0]["text"] == "Echo: And in feet?"
    follow_up = ["And in feet?", "Echo: And in feet?"]
    assert [m["content"] for m in stored] == [
        ask,
        streamed[0]["reply"],
        "Ta",
        "Echo: Ta",
        *follow_up,
    ]
    assert stored[4]["client_message_id"] == ids[4]


async def test_failed_tools_and_images_are_parts_the_ai_sdk_accepts(
    node_ai: Path, tmp_path: Path
) -> None:
    call = ToolCall(id="call-1", server="images", tool="draw", arguments={"prompt": "a cat"})
    reply = StoredMessage(
        seq=1,
        role="assistant",
        content="Here it is.",
        timestamp="2026-01-01T00:00:00+00:00",
        tools=(
            ToolUse(ToolCall("call-0", "demo", "convert_units", {}), "Bad unit", is_error=True),
            ToolUse(call, "Drew a cat", images=("https://img.example/cat.png",)),
        ),
    )
    message = ui_message(
        "s-1", reply, StoredMessage(0, "user", "Draw", reply.timestamp)
    ).model_dump()
    driver = tmp_path / "validate.mjs"
    driver.write_text(
        f"import {{ validateUIMessages }} from {ai_module(node_ai)};\n"
        f"const messages = await validateUIMessages({{ messages: [{json.dumps(message)}] }});\n"
        "console.log(JSON.stringify(messages[0]));\n"
    )
    [validated] = await lines_of(await run_node(driver))

    assert validated["id"] == "s-1-0-reply"
    assert validated["parts"][1:] == [
        {"type": "dynamic-tool", "toolName": "demo/convert_units", "toolCallId": "call-0",
         "state": "output-error", "input": {}, "errorText": "Bad unit", "providerExecuted": True},
        {"type": "dynamic-tool", "toolName": "images/draw", "toolCallId": "call-1",
         "state": "output-available", "input": {"prompt": "a cat"},
         "output": {"text": "Drew a cat", "images": ["https://img.example/cat.png"]},
         "providerExecuted": True},
    ]  # fmt: skip


async def test_history_pages_keep_the_stream_ids(live: Live) -> None:
    session_id = await live.create_session()
    for text, message_id in (("Hi", "a"), ("No id", None), ("Bye", "c")):
        body: dict[str, Any] = {"message": text, "client_message_id": message_id}
        sent = await live.client.post(f"{API}/session/{session_id}/message", json=body)
        assert sent.status_code == 200, sent.text

    url = f"{API}/chat/{session_id}/messages"
    newest = (await live.client.get(url, params={"limit": 3})).json()
    # A page that starts with a reply still names it after its user message.
    unnamed = f"{session_id}-2"
    assert [m["id"] for m in newest["messages"]] == [f"{unnamed}-reply", "c", "c-reply"]
    assert [m["metadata"]["seq"] for m in newest["messages"]] == [3, 4, 5]
    assert newest["next_before"] == 3
    older = (await live.client.get(url, params={"before": 3, "limit": 3})).json()
    assert [m["id"] for m in older["messages"]] == ["a", "a-reply", unnamed]
    assert older["next_before"] is None
    everything = (await live.client.get(url)).json()
    assert [m["id"] for m in everything["messages"]] == [
        *(m["id"] for m in older["messages"]), *(m["id"] for m in newest["messages"]),
    ]  # fmt: skip
    assert (await live.client.get(url, params={"limit": 0})).status_code == 422


async def test_only_the_owner_loads_a_chat(live_app: LiveFactory) -> None:
    keys = {"auth_mode": "api_key", "user_api_keys": "alice=alice-key,bob=bob-key"}
    async with live_app(**keys) as live:
        alice, bob = ({"Authorization": f"Bearer {who}-key"} for who in ("alice", "bob"))
        created = await live.client.post(f"{API}/session", json={}, headers=alice)
        session_id = created.json()["session_id"]
        url = f"{API}/chat/{session_id}/messages"
        mine = await live.client.get(url, headers=alice)
        theirs = await live.client.get(url, headers=bob)
        nobody = await live.client.get(url)
        unknown = f"{API}/chat/00000000-0000-4000-8000-000000000000/messages"
        missing = await live.client.get(unknown, headers=alice)
        detail = await live.client.get(f"{API}/session/{session_id}", headers=bob)

    assert mine.status_code == 200 and mine.json() == {
        "success": True, "messages": [], "next_before": None,
    }  # fmt: skip
    assert theirs.status_code == detail.status_code == 404  # as the session detail
    assert theirs.json()["error"]["code"] == "session_not_found"
    assert nobody.status_code == 401
    assert missing.status_code == 404
