"""Session titles: named in the background after the first exchange, never in a turn's way."""

from __future__ import annotations

import asyncio
import threading

from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import until
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"


async def title_of(chat: RunningApp, session_id: str) -> str | None:
    """The session's stored title, once no title is being generated."""
    await until(lambda: chat.services.titles.pending == 0, "the title tasks")
    title: str | None = (await chat.client.get(f"{API}/session/{session_id}")).json()["title"]
    return title


async def test_the_first_exchange_names_the_session_without_waiting_for_it(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    asked, release = threading.Event(), threading.Event()
    llm.script(
        Reply(content="Arr, the weather be fine."),
        Reply(content='"Weather talk at sea."\nmore lines', arrived=asked, gate=release),
    )
    settings = make_settings(session_titles=True, title_model="gpt-test-titles")
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("pirate")
        reply = await chat.send(session_id, "How is the weather?")
        # The turn is answered while the title call is still being held.
        assert reply.status_code == 200
        assert await asyncio.to_thread(asked.wait, 10), "no title call"
        assert chat.services.titles.pending == 1
        release.set()
        assert await title_of(chat, session_id) == "Weather talk at sea"
        listed = (await chat.client.get(f"{API}/users/user_1/sessions")).json()["sessions"]
        assert listed[0]["title"] == "Weather talk at sea"

        title_call = llm.chat_requests()[1]
        assert title_call["model"] == "gpt-test-titles" and title_call.get("stream") is not True
        assert "How is the weather?" in title_call["messages"][-1]["content"]
        await chat.send(session_id, "And tomorrow?")
        assert len(llm.chat_requests()) == 3, "only the first exchange names a session"


async def test_a_failed_title_call_is_retried_and_never_stored(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    llm.script(Reply(content="Hello!"), Reply(status=500), Reply(content="Greetings"))
    async with running_app(make_settings(session_titles=True), clock) as chat:
        session_id = await chat.create_session("plain")
        assert (await chat.send(session_id, "hi")).status_code == 200
        assert await title_of(chat, session_id) == "Greetings"  # the retry, a second later
        assert len(llm.chat_requests()) == 3


async def test_a_rename_wins_over_a_title_being_generated(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    asked, release = threading.Event(), threading.Event()
    llm.script(Reply(content="Hello!"), Reply(content="Generated", arrived=asked, gate=release))
    async with running_app(make_settings(session_titles=True), clock) as chat:
        session_id = await chat.create_session("plain")
        await chat.send(session_id, "hi")
        assert await asyncio.to_thread(asked.wait, 10)
        renamed = await chat.client.patch(f"{API}/session/{session_id}", json={"title": "Mine"})
        assert renamed.status_code == 200
        release.set()
        assert await title_of(chat, session_id) == "Mine"
        assert len(llm.chat_requests()) == 2


async def test_the_offline_responder_names_a_session_by_its_first_words(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    settings = make_settings(session_titles=True, openai_base_url=None, openai_api_key=None)
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("plain")
        await chat.send(session_id, "planning a trip to lisbon in may, any tips?")
        assert await title_of(chat, session_id) == "Planning a trip to lisbon in"
    assert llm.chat_requests() == []
