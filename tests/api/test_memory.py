"""Long conversations: a token budget for history, the rolling memory, overflow recovery."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from services.conversation import memory as memory_module
from services.conversation.prompt import MEMORY_PREFIX
from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import until
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"
FACT = "My dog is called Biscuit and I live in Porto."
MEMORY_TEMPLATES: dict[str, dict[str, Any]] = {
    "companion": {  # memory on by default
        "name": "companion",
        "description": "Remembers",
        "personalityPrompt": "You are a warm companion.",
        "contextMessages": 6,
        "isPublic": True,
    },
    "goldfish": {
        "name": "goldfish",
        "description": "Forgets",
        "personalityPrompt": "You are a goldfish.",
        "contextMessages": 6,
        "memory": "window",
        "isPublic": True,
    },
    "budget": {
        "name": "budget",
        "description": "Counts tokens",
        "personalityPrompt": "You are thrifty.",
        "model": "gpt-4o-mini",
        "contextMessages": 50,
        "contextTokens": 200,
        "memory": "window",
        "isPublic": True,
    },
}


@pytest.fixture(autouse=True)
def memory_templates(seed_dir: Path) -> None:
    for key, doc in MEMORY_TEMPLATES.items():
        (seed_dir / "templates" / f"{key}.json").write_text(json.dumps(doc))


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_module, "RETRY_DELAYS", (0.0, 0.0))


def is_memory_call(request: dict[str, Any]) -> bool:
    return str(request["messages"][0]["content"]).startswith(memory_module.INSTRUCTIONS[:40])


def turn_calls(llm: MockLLM) -> list[dict[str, Any]]:
    return [r for r in llm.chat_requests() if not is_memory_call(r)]


def memory_calls(llm: MockLLM) -> list[dict[str, Any]]:
    return [r for r in llm.chat_requests() if is_memory_call(r)]


async def talk(chat: RunningApp, session_id: str, text: str) -> dict[str, Any]:
    """One turn, then wait for any memory it set off (so the next prompt is deterministic)."""
    response = await chat.send(session_id, text)
    assert response.status_code == 200, response.text
    await chat.services.memory.idle()
    body: dict[str, Any] = response.json()
    return body


async def test_a_fact_from_the_first_turn_is_in_the_prompt_at_turn_300(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(session_memory=True), clock) as chat:
        session_id = await chat.create_session("companion")
        await talk(chat, session_id, FACT)
        for number in range(2, 300):
            await talk(chat, session_id, f"Small talk number {number}.")
        await talk(chat, session_id, "What is my dog called?")

        prompt = turn_calls(llm)[-1]["messages"]
        assert [m["role"] for m in prompt[:2]] == ["system", "system"]
        assert prompt[1]["content"].startswith(MEMORY_PREFIX)
        assert FACT in prompt[1]["content"]
        assert prompt[-1] == {"role": "user", "content": "What is my dog called?"}
        # Never as a user message; and the window is the latest messages, whole.
        assert not any(MEMORY_PREFIX in m["content"] for m in prompt if m["role"] == "user")
        assert len(prompt) - 3 <= 6
        assert prompt[-2]["content"] == "Echo: Small talk number 299."
        # One fold per two turns or so with a window of 6 (keep 3 -> fold 2 turns at a time).
        assert 100 <= len(memory_calls(llm)) <= 160
        assert len(turn_calls(llm)) == 300


async def test_the_memory_is_stored_with_its_seq_and_not_recomputed_after_a_restart(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    settings = make_settings(session_memory=True)
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("companion")
        await talk(chat, session_id, FACT)
        for number in range(2, 6):
            await talk(chat, session_id, f"Turn {number}.")
        stored = await chat.services.store.get_session(session_id)
        assert stored is not None and stored.summary is not None and FACT in stored.summary
        assert stored.summary_seq > 0 and stored.summary_seq % 2 == 0  # a whole turn
    folds = len(memory_calls(llm))
    async with running_app(settings, clock) as chat:  # another process, the same store
        await talk(chat, session_id, "Still there?")
        assert len(memory_calls(llm)) == folds, "nothing folded again"
        assert FACT in turn_calls(llm)[-1]["messages"][1]["content"]


async def test_the_memory_never_delays_a_turn(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    asked, release = threading.Event(), threading.Event()
    # A window of 6 is full after 3 turns: the third sets off the fold.
    first_three = [Reply(content=f"Reply {n}") for n in range(1, 4)]
    llm.script(*first_three, Reply(content="- held memory", arrived=asked, gate=release))
    async with running_app(make_settings(session_memory=True), clock) as chat:
        session_id = await chat.create_session("companion")
        for number in range(1, 4):
            assert (await chat.send(session_id, f"Turn {number}.")).status_code == 200
        assert await asyncio.to_thread(asked.wait, 10), "no memory call"
        reply = await chat.send(session_id, "Turn 4.")  # answered while the memory is held
        assert reply.status_code == 200 and reply.json()["response"] == "Echo: Turn 4."
        assert chat.services.memory.pending == 1
        release.set()
        await chat.services.memory.idle()
        stored = await chat.services.store.get_session(session_id)
        assert stored is not None and stored.summary == "- held memory"


async def test_a_failed_or_empty_summary_keeps_the_previous_memory_and_is_retried(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    error = {"error": {"message": "upstream exploded: secret detail", "type": "server_error"}}
    turns = [Reply(content=f"Reply {n}") for n in range(1, 4)]
    llm.script(
        *turns, Reply(status=500, error_body=error), Reply(content="  "), Reply(content="ok")
    )
    async with running_app(make_settings(session_memory=True), clock) as chat:
        session_id = await chat.create_session("companion")
        for number in range(1, 4):
            await talk(chat, session_id, f"Turn {number}.")
        stored = await chat.services.store.get_session(session_id)
        assert stored is not None and stored.summary == "ok"
        assert len(memory_calls(llm)) == 3


async def test_a_summary_that_fails_every_time_leaves_no_memory_and_turns_go_on(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    turns = [Reply(content=f"Reply {n}") for n in range(1, 4)]
    llm.script(*turns, Reply(status=500), Reply(status=500), Reply(status=500))
    async with running_app(make_settings(session_memory=True), clock) as chat:
        session_id = await chat.create_session("companion")
        for number in range(1, 4):
            await talk(chat, session_id, f"Turn {number}.")
        stored = await chat.services.store.get_session(session_id)
        assert stored is not None and stored.summary is None and stored.summary_seq == 0
        # The next turn's prompt has no memory message, and the fold is tried again.
        await talk(chat, session_id, "Turn 4.")
        assert turn_calls(llm)[-1]["messages"][1]["role"] != "system"
        stored = await chat.services.store.get_session(session_id)
        assert stored is not None and stored.summary is not None and "Turn 1." in stored.summary


async def test_a_window_template_never_summarizes(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(session_memory=True), clock) as chat:
        session_id = await chat.create_session("goldfish")
        for number in range(1, 12):
            await talk(chat, session_id, f"Turn {number}.")
        assert memory_calls(llm) == []
        prompt = turn_calls(llm)[-1]["messages"]
        assert [m["role"] for m in prompt[:2]] == ["system", "user"]
        assert len(prompt) == 1 + 6 + 1


async def test_a_token_budget_keeps_the_newest_whole_messages_that_fit(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    counter = None
    async with running_app(make_settings(), clock) as chat:
        counter = chat.services.turns._tokens  # noqa: SLF001 - the counter the turns use
        session_id = await chat.create_session("budget")
        sizes = [30, 5, 60, 5, 40, 5]
        for number, words in enumerate(sizes, start=1):
            await talk(chat, session_id, " ".join(["word"] * words) + f" {number}")
        long_message = " ".join(["long"] * 400)
        await talk(chat, session_id, long_message)  # bigger than the budget: still sent whole

        prompt = turn_calls(llm)[-1]["messages"]
        assert prompt[-1] == {"role": "user", "content": long_message}
        history = prompt[1:-1]
        cost = sum(counter.count_message("gpt-4o-mini", m) for m in history)
        assert 0 < cost <= 200
        # The newest stored messages, whole and in order; the next older one would not fit.
        page = await chat.client.get(f"{API}/session/{session_id}/messages?limit=100")
        stored = [{"role": m["role"], "content": m["content"]} for m in page.json()["messages"]]
        stored = stored[:-2]  # the last turn's own messages came after its prompt
        assert history == stored[len(stored) - len(history) :]
        older = stored[len(stored) - len(history) - 1]
        assert cost + counter.count_message("gpt-4o-mini", older) > 200


async def test_a_too_long_prompt_is_retried_once_with_less_history(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(make_settings(), clock) as chat:
        session_id = await chat.create_session("goldfish")
        for number in range(1, 4):
            await talk(chat, session_id, f"{number} " + "x" * 100)
        monkeypatch.setattr(llm.config, "context_chars", 600)
        body = await talk(chat, session_id, "short question")

        refused, accepted = turn_calls(llm)[-2:]
        assert body["response"] == "Echo: short question" and body["message_count"] == 4
        assert len(accepted["messages"]) < len(refused["messages"])
        assert accepted["messages"][0] == refused["messages"][0]
        assert accepted["messages"][1]["role"] == "user"


async def test_a_prompt_too_long_even_without_history_is_422_and_stores_nothing(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(make_settings(), clock) as chat:
        session_id = await chat.create_session("goldfish")
        await talk(chat, session_id, "hello")
        monkeypatch.setattr(llm.config, "context_chars", 300)
        too_long = "y" * 500
        response = await chat.send(session_id, too_long, client_message_id="long-1")
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "context_too_long"
        assert "y" * 20 not in response.text  # no message text in errors
        assert len(turn_calls(llm)) == 1 + 2  # the full prompt, then without history

        async with chat.client.stream(
            "POST",
            f"{API}/session/{session_id}/message/stream",
            json={"message": too_long, "client_message_id": "long-2"},
        ) as stream:
            text = "".join([chunk async for chunk in stream.aiter_text()])
        assert "event: error" in text and "context_too_long" in text

        monkeypatch.setattr(llm.config, "context_chars", 0)
        history = (await chat.client.get(f"{API}/session/{session_id}/messages")).json()
        assert [m["content"] for m in history["messages"]] == ["hello", "Echo: hello"]
        info = (await chat.client.get(f"{API}/session/{session_id}")).json()
        assert info["message_count"] == 1
        again = await chat.send(session_id, "fine now", client_message_id="long-1-retry")
        assert again.status_code == 200 and again.json()["message_count"] == 2


async def test_a_memory_call_counts_as_a_call_of_the_user(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(session_memory=True), clock) as chat:
        session_id = await chat.create_session("companion")
        replies = [await talk(chat, session_id, f"Turn {number}.") for number in range(1, 4)]
        (fold,) = memory_calls(llm)
        await until(lambda: chat.services.calls.pending == 0, "the memory call's count")
        usage = (await chat.client.get(f"{API}/session/{session_id}")).json()["usage"]
        assert (usage["turns"], usage["calls"]) == (3, 1)
        turns_total = sum(reply["usage"]["total_tokens"] for reply in replies)
        fold_prompt = sum(len(m["content"]) for m in fold["messages"]) // 4 + 1
        assert (
            usage["prompt_tokens"] - sum(r["usage"]["prompt_tokens"] for r in replies)
            == fold_prompt
        )
        assert usage["total_tokens"] > turns_total
        today = (await chat.client.get(f"{API}/users/user_1/usage")).json()["today"]
        assert (today["turns"], today["calls"]) == (3, 1)
