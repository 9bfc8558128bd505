"""Regenerate and edit, through JSON, SSE and the AI SDK route, on both stores: the new reply
becomes the active one, what it replaced is kept as a variant (listed, selectable), and only
the active branch reaches the model and the memory."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from services.conversation import memory as memory_module
from testkit.live import read_events
from testkit.mock_llm import Hold, MockLLM, Reply
from testkit.node_ai import CHAT_STATE, lines_of, run_node
from tests.api.conftest import LiveFactory
from tests.api.test_cost import priced
from tests.api.test_memory import MEMORY_TEMPLATES, is_memory_call
from tests.api.test_stop import rest_of, until_delta
from tests.api.test_ui_stream import ai_module
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"


def contents(messages: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(m["seq"], m["content"]) for m in messages]


async def history(chat: RunningApp, session_id: str) -> list[tuple[int, str]]:
    page = await chat.client.get(f"{API}/session/{session_id}/messages")
    assert page.status_code == 200, page.text
    return contents(page.json()["messages"])


async def variants(chat: RunningApp, session_id: str, seq: int) -> list[dict[str, Any]]:
    page = await chat.client.get(f"{API}/session/{session_id}/messages/{seq}/variants")
    assert page.status_code == 200, page.text
    found: list[dict[str, Any]] = page.json()["variants"]
    return found


def last_prompt(llm: MockLLM) -> list[tuple[str, str]]:
    """The messages of the last turn's request the model received."""
    turns = [r for r in llm.chat_requests() if not is_memory_call(r)]
    return [(m["role"], m["content"]) for m in turns[-1]["messages"]]


async def conversation(chat: RunningApp, *texts: str) -> str:
    session_id = await chat.create_session()
    for text in texts:
        response = await chat.send(session_id, text)
        assert response.status_code == 200, response.text
    return session_id


async def test_regenerate_answers_the_last_message_again_and_keeps_the_old_reply(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await conversation(chat, "first", "second")
    llm.script(Reply(content="another answer"))
    url = f"{API}/session/{session_id}/regenerate"
    response = await chat.client.post(url, json={"client_message_id": "regen-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["response"], body["replayed"], body["message_count"]) == (
        "another answer", False, 2,
    )  # fmt: skip
    assert body["user_message"]["seq"] == 2 and body["user_message"]["content"] == "second"
    assert body["assistant_message"]["seq"] == 3
    assert ("user", "second") == last_prompt(llm)[-1]
    assert ("user", "first") in last_prompt(llm) and ("assistant", "Echo: second") not in (
        last_prompt(llm)
    )
    assert await history(chat, session_id) == [
        (0, "first"), (1, "Echo: first"), (2, "second"), (3, "another answer"),
    ]  # fmt: skip
    (variant,) = await variants(chat, session_id, 3)
    assert variant["variant"] == 1 and contents(variant["messages"]) == [(3, "Echo: second")]

    # The same request again replays its reply: no model call.
    asked = len(llm.chat_requests())
    again = await chat.client.post(url, json={"client_message_id": "regen-1"})
    assert again.status_code == 200, again.text
    assert (again.json()["response"], again.json()["replayed"]) == ("another answer", True)
    assert len(llm.chat_requests()) == asked

    # The next turn is sent the active branch only.
    assert (await chat.send(session_id, "third")).status_code == 200
    prompt = last_prompt(llm)
    assert ("assistant", "another answer") in prompt
    assert ("assistant", "Echo: second") not in prompt


async def test_a_selected_variant_is_what_the_model_is_sent_next(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await conversation(chat, "first")
    llm.script(Reply(content="second try"))
    regenerated = await chat.client.post(f"{API}/session/{session_id}/regenerate")
    assert regenerated.status_code == 200, regenerated.text
    selected = await chat.client.post(f"{API}/session/{session_id}/messages/1/variants/1/select")
    assert selected.status_code == 200, selected.text
    assert contents(selected.json()["messages"]) == [(1, "Echo: first")]
    assert await history(chat, session_id) == [(0, "first"), (1, "Echo: first")]
    (variant,) = await variants(chat, session_id, 1)
    assert contents(variant["messages"]) == [(1, "second try")]
    assert (await chat.send(session_id, "next")).status_code == 200
    prompt = last_prompt(llm)
    assert ("assistant", "Echo: first") in prompt and ("assistant", "second try") not in prompt
    missing = await chat.client.post(f"{API}/session/{session_id}/messages/1/variants/9/select")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "message_not_found"


async def test_regenerate_needs_a_message_to_answer(chat: RunningApp) -> None:
    session_id = await chat.create_session()
    response = await chat.client.post(f"{API}/session/{session_id}/regenerate")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "nothing_to_regenerate"


async def test_an_edit_answers_anew_and_keeps_the_rest_as_a_variant_branch(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await conversation(chat, "first", "second", "third")
    response = await chat.client.patch(
        f"{API}/session/{session_id}/messages/2", json={"message": "changed"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["response"], body["message_count"]) == ("Echo: changed", 2)
    assert [m for m in last_prompt(llm) if m[0] != "system"] == [
        ("user", "first"), ("assistant", "Echo: first"), ("user", "changed"),
    ]  # fmt: skip
    assert await history(chat, session_id) == [
        (0, "first"), (1, "Echo: first"), (2, "changed"), (3, "Echo: changed"),
    ]  # fmt: skip
    (variant,) = await variants(chat, session_id, 2)
    assert contents(variant["messages"]) == [
        (2, "second"), (3, "Echo: second"), (4, "third"), (5, "Echo: third"),
    ]  # fmt: skip
    assert (await chat.send(session_id, "after")).json()["message_count"] == 3
    prompt = last_prompt(llm)
    assert ("user", "changed") in prompt and ("user", "third") not in prompt

    # The old branch chosen again: the model sees it, the edited one is kept in its turn.
    selected = await chat.client.post(f"{API}/session/{session_id}/messages/2/variants/1/select")
    assert selected.status_code == 200, selected.text
    assert (await chat.send(session_id, "back")).json()["message_count"] == 4
    prompt = last_prompt(llm)
    assert ("user", "third") in prompt and ("user", "changed") not in prompt
    (variant,) = await variants(chat, session_id, 2)
    assert contents(variant["messages"])[0] == (2, "changed")


async def test_only_stored_user_messages_are_edited(chat: RunningApp) -> None:
    session_id = await conversation(chat, "first")
    url = f"{API}/session/{session_id}/messages"
    reply = await chat.client.patch(f"{url}/1", json={"message": "x"})
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "not_a_user_message"
    unknown = await chat.client.patch(f"{url}/8", json={"message": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "message_not_found"
    assert await history(chat, session_id) == [(0, "first"), (1, "Echo: first")]


async def test_an_edit_may_not_take_the_id_of_another_turn(chat: RunningApp) -> None:
    session_id = await chat.create_session()
    assert (await chat.send(session_id, "first", client_message_id="c-1")).status_code == 200
    assert (await chat.send(session_id, "second")).status_code == 200
    response = await chat.client.patch(
        f"{API}/session/{session_id}/messages/2",
        json={"message": "changed", "client_message_id": "c-1"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert (await history(chat, session_id))[2] == (2, "second")


async def stream_events(
    chat: RunningApp, method: str, url: str, body: dict[str, Any]
) -> list[tuple[str, Any]]:
    async with chat.client.stream(method, url, json=body) as response:
        assert response.status_code == 200
        return [(e.event, e.json()) async for e in read_events(response) if e.event != ":"]


async def test_regenerate_and_edit_stream_as_a_turn_does(chat: RunningApp, llm: MockLLM) -> None:
    session_id = await conversation(chat, "first")
    llm.script(Reply(content="streamed again", chunks=2))
    events = await stream_events(chat, "POST", f"{API}/session/{session_id}/regenerate/stream", {})
    assert events[0] == ("start", {"session_id": session_id, "turn": 1})
    assert "".join(data["content"] for kind, data in events if kind == "delta") == (
        "streamed again"
    )
    kind, done = events[-1]
    assert kind == "done" and done["assistant_message"]["seq"] == 1
    url = f"{API}/session/{session_id}/messages/0/stream"
    events = await stream_events(chat, "PATCH", url, {"message": "edited"})
    assert events[-1][0] == "done" and events[-1][1]["response"] == "Echo: edited"
    assert await history(chat, session_id) == [(0, "edited"), (1, "Echo: edited")]
    assert len(await variants(chat, session_id, 1)) == 1
    assert len(await variants(chat, session_id, 0)) == 1


async def ui_chat(chat: RunningApp, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The AI SDK route's parts for one request."""
    async with chat.client.stream("POST", f"{API}/chat", json=body) as response:
        assert response.status_code == 200
        return [
            json.loads(e.data)
            async for e in read_events(response)
            if e.event != ":" and e.data != "[DONE]"
        ]


def ui_text(parts: list[dict[str, Any]]) -> str:
    return "".join(p["delta"] for p in parts if p["type"] == "text-delta")


def user_message(message_id: str, text: str) -> dict[str, Any]:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}


async def test_the_ai_sdk_route_regenerates_and_edits(chat: RunningApp, llm: MockLLM) -> None:
    session_id = await chat.create_session()
    first = [user_message("m1", "first")]
    assert ui_text(await ui_chat(chat, {"id": session_id, "messages": first})) == "Echo: first"

    # regenerate(): the last user message again, no longer the stored reply replayed.
    llm.script(Reply(content="a fresh answer"))
    body = {
        "id": session_id, "messages": first, "trigger": "regenerate-message",
        "messageId": "m1-reply",
    }  # fmt: skip
    parts = await ui_chat(chat, body)
    assert parts[0] == {"type": "start", "messageId": "m1-reply"}
    assert ui_text(parts) == "a fresh answer"
    assert await history(chat, session_id) == [(0, "first"), (1, "a fresh answer")]
    assert contents((await variants(chat, session_id, 1))[0]["messages"]) == [(1, "Echo: first")]

    # sendMessage({ text, messageId }): the stored message of that id, edited.
    body = {
        "id": session_id, "messages": [user_message("m1", "first, edited")],
        "trigger": "submit-message", "messageId": "m1",
    }  # fmt: skip
    parts = await ui_chat(chat, body)
    assert parts[0] == {"type": "start", "messageId": "m1-reply"}
    assert ui_text(parts) == "Echo: first, edited"
    assert await history(chat, session_id) == [(0, "first, edited"), (1, "Echo: first, edited")]
    page = await chat.client.get(f"{API}/chat/{session_id}/messages")
    assert [m["id"] for m in page.json()["messages"]] == ["m1", "m1-reply"]
    assert len(await variants(chat, session_id, 0)) == 1


@pytest.fixture
def memory_templates(seed_dir: Path) -> None:
    for key, doc in MEMORY_TEMPLATES.items():
        (seed_dir / "templates" / f"{key}.json").write_text(json.dumps(doc))


async def test_an_edit_into_the_memory_has_it_folded_again_from_what_remains(
    make_settings: SettingsFactory,
    clock: FakeClock,
    llm: MockLLM,
    memory_templates: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_module, "RETRY_DELAYS", (0.0, 0.0))
    async with running_app(make_settings(session_memory=True), clock) as chat:
        session_id = await chat.create_session("companion")
        for text in ("alpha", "bravo", "charlie"):
            assert (await chat.send(session_id, text)).status_code == 200
            await chat.services.memory.idle()
        record = await chat.services.store.get_session(session_id)
        assert record is not None and record.summary_seq == 4
        assert record.summary is not None and "bravo" in record.summary

        edited = await chat.client.patch(
            f"{API}/session/{session_id}/messages/2", json={"message": "delta"}
        )
        assert edited.status_code == 200, edited.text
        prompt = last_prompt(llm)
        assert not any("bravo" in content for _, content in prompt)
        record = await chat.services.store.get_session(session_id)
        assert record is not None and (record.summary, record.summary_seq) == (None, 0)

        # The next fold runs over what remains: the edited message, not the replaced one.
        assert (await chat.send(session_id, "echo")).status_code == 200
        await chat.services.memory.idle()
        record = await chat.services.store.get_session(session_id)
        assert record is not None and record.summary is not None
        assert "delta" in record.summary and "bravo" not in record.summary
        assert (await chat.send(session_id, "foxtrot")).status_code == 200
        prompt = last_prompt(llm)
        assert not any("bravo" in content for _, content in prompt)


# The AI SDK's own chat (what @ai-sdk/react's useChat drives): a message, regenerate(), then
# sendMessage({ text, messageId }) on the first message.
CONTROLS = """
import { AbstractChat, DefaultChatTransport } from __AI__;
__STATE__
const chat = new AbstractChat({
  id: __SESSION__,
  state: new State([]),
  transport: new DefaultChatTransport({ api: `${__BASE__}/api/v1/chatbot/chat` }),
});
const text = (m) => m.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
const shown = () => chat.messages.map((m) => [m.id, m.role, text(m)]);
await chat.sendMessage({ text: "first" });
await chat.regenerate();
console.log(JSON.stringify({ regenerated: shown(), error: chat.error?.message ?? null }));
await chat.sendMessage({ text: "first, edited", messageId: chat.messages[0].id });
console.log(JSON.stringify({ edited: shown(), error: chat.error?.message ?? null }));
"""


async def test_use_chat_regenerates_and_edits_and_shows_what_is_stored(
    live_app: LiveFactory, llm: MockLLM, node_ai: Path, tmp_path: Path
) -> None:
    llm.script(Reply(content="Echo: first"), Reply(content="a fresh answer"))
    async with live_app() as live:
        session_id = await live.create_session()
        driver = tmp_path / "controls.mjs"
        driver.write_text(
            CONTROLS.replace("__AI__", ai_module(node_ai))
            .replace("__STATE__", CHAT_STATE)
            .replace("__BASE__", json.dumps(live.url))
            .replace("__SESSION__", json.dumps(session_id))
        )
        regenerated, edited = await lines_of(await run_node(driver))
        stored = await live.history(session_id)
        page = await live.client.get(f"{API}/chat/{session_id}/messages")
        kept = await live.client.get(f"{API}/session/{session_id}/messages/0/variants")

    assert regenerated["error"] is None and edited["error"] is None
    user_id = regenerated["regenerated"][0][0]
    assert regenerated["regenerated"] == [
        [user_id, "user", "first"], [f"{user_id}-reply", "assistant", "a fresh answer"],
    ]  # fmt: skip
    assert edited["edited"] == [
        [user_id, "user", "first, edited"],
        [f"{user_id}-reply", "assistant", "Echo: first, edited"],
    ]
    # What the chat shows is what is stored, ids included.
    assert contents(stored) == [(0, "first, edited"), (1, "Echo: first, edited")]
    assert [[m["id"], m["role"], m["parts"][0]["text"]] for m in page.json()["messages"]] == (
        edited["edited"]
    )
    (variant,) = kept.json()["variants"]
    assert contents(variant["messages"]) == [(0, "first"), (1, "a fresh answer")]


async def test_a_regenerate_waits_behind_the_turn_in_flight_then_answers_it_again(
    live_app: LiveFactory, llm: MockLLM
) -> None:
    hold = Hold(after_chunks=1)
    llm.script(Reply(content="one two", chunks=2, hold=hold), Reply(content="the whole answer"))
    async with live_app() as live:
        session_id = await live.create_session()
        async with live.stream(session_id, "question") as response:
            events = read_events(response)
            await until_delta(events)
            # Queued behind the running turn, as a second message would be.
            regenerating = asyncio.create_task(
                live.client.post(f"{API}/session/{session_id}/regenerate")
            )
            stopped = await live.client.post(f"{API}/session/{session_id}/stop")
            assert stopped.status_code == 200, stopped.text
            done = (await rest_of(events))[-1]
        regenerated = await regenerating
        stored = await live.history(session_id)
        kept = await live.client.get(f"{API}/session/{session_id}/messages/1/variants")

    assert done.event == "done" and done.json()["finish_reason"] == "stopped"
    assert regenerated.status_code == 200, regenerated.text
    assert regenerated.json()["response"] == "the whole answer"
    assert regenerated.json()["finish_reason"] == "stop"
    assert contents(stored) == [(0, "question"), (1, "the whole answer")]
    (variant,) = kept.json()["variants"]
    (old,) = variant["messages"]
    assert old["finish_reason"] == "stopped" and old["content"] == done.json()["response"]


async def test_a_fold_in_flight_when_an_edit_lands_stores_no_memory_of_the_old_branch(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, memory_templates: None
) -> None:
    asked, release = threading.Event(), threading.Event()
    # A window of 6 is full after 3 turns: the third sets off a fold, held here.
    first_three = [Reply(content=f"Reply {n}") for n in range(1, 4)]
    llm.script(*first_three, Reply(content="- alpha was said", arrived=asked, gate=release))
    async with running_app(make_settings(session_memory=True), clock) as chat:
        session_id = await chat.create_session("companion")
        for text in ("alpha", "bravo", "charlie"):
            assert (await chat.send(session_id, text)).status_code == 200
        assert await asyncio.to_thread(asked.wait, 10), "no memory call"
        edited = await chat.client.patch(
            f"{API}/session/{session_id}/messages/0", json={"message": "delta"}
        )
        assert edited.status_code == 200, edited.text
        release.set()  # the fold of alpha..charlie answers after the edit replaced them
        await chat.services.memory.idle()
        record = await chat.services.store.get_session(session_id)
        assert record is not None and (record.summary, record.summary_seq) == (None, 0)
        assert (await chat.send(session_id, "echo")).status_code == 200
        prompt = last_prompt(llm)
        assert not any("alpha" in content for _, content in prompt)


async def test_a_regenerated_or_edited_reply_is_priced_like_a_turn(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await chat.create_session("plain")  # gpt-4o-mini: a list price
    for text in ("first", "second"):
        assert (await chat.send(session_id, text)).status_code == 200
    regenerated = await chat.client.post(f"{API}/session/{session_id}/regenerate", json={})
    assert regenerated.status_code == 200, regenerated.text
    regenerate_cost = priced(*llm.reported_usage[-1])
    edited = await chat.client.patch(
        f"{API}/session/{session_id}/messages/0", json={"message": "first, edited"}
    )
    assert edited.status_code == 200, edited.text
    edit_cost = priced(*llm.reported_usage[-1])
    for answer, cost in ((regenerated, regenerate_cost), (edited, edit_cost)):
        assert cost > 0
        assert answer.json()["usage"]["cost_micros"] == cost
