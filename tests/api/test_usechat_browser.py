"""The docs' ``useChat`` example in a real browser (React, the real ``@ai-sdk/react`` and
``ai`` packages), against the service: it sends, stops a reply, regenerates and edits, and
after each, what the page shows is what the service stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from testkit.browser import chromium_page
from testkit.mock_llm import Hold, MockLLM, Reply
from testkit.usechat import build_page, page_server
from tests.api.conftest import API, Live, LiveFactory

KEY = "user-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def backend() -> str:
    """The page is not about the store: SQLite only (the routes' tests run both)."""
    return "sqlite"


async def shown(page: Page) -> list[str]:
    """The conversation as the page shows it, one ``role: text`` line per message."""
    lines = await page.locator("p").all_inner_texts()
    return [line.removesuffix("Edit").strip() for line in lines]


async def stored(live: Live, session_id: str) -> list[str]:
    """The conversation as the service stored it, in the same form."""
    answer = await live.client.get(f"{API}/session/{session_id}/messages", headers=HEADERS)
    assert answer.status_code == 200, answer.text
    return [f"{m['role']}: {m['content']}" for m in answer.json()["messages"]]


async def test_the_docs_example_sends_stops_regenerates_and_edits_as_stored(
    live_app: LiveFactory, llm: MockLLM, tmp_path: Path
) -> None:
    with page_server(tmp_path) as origin:
        settings = {"auth_mode": "api_key", "user_api_keys": f"ana={KEY}", "cors_origins": origin}
        async with live_app(**settings) as live, chromium_page() as browser:
            build_page(live.url, tmp_path)
            session = await live.client.post(f"{API}/session", json={}, headers=HEADERS)
            assert session.status_code == 201, session.text
            session_id = session.json()["session_id"]
            page = browser.page
            await page.goto(f"{origin}/?session={session_id}&key={KEY}")
            await send_and_check(page, llm, live, session_id)
            await stop_and_check(page, llm, live, session_id)
            await regenerate_and_check(page, llm, live, session_id)
            await edit_and_check(page, llm, live, session_id)
            assert browser.errors == []


async def send_and_check(page: Page, llm: MockLLM, live: Live, session_id: str) -> None:
    """A message typed and sent: the streamed reply shows, as stored."""
    llm.script(Reply(content="Ahoy there, in pieces.", chunks=5, chunk_delay=0.01))
    await page.fill("input", "Hello!")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("p").nth(1)).to_have_text("assistant: Ahoy there, in pieces.")
    assert await shown(page) == await stored(live, session_id)
    assert await shown(page) == ["user: Hello!", "assistant: Ahoy there, in pieces."]


async def stop_and_check(page: Page, llm: MockLLM, live: Live, session_id: str) -> None:
    """Stop pressed while a reply streams: the model's request is closed, and the page keeps
    the text that came, which is the stored reply."""
    hold = Hold(after_chunks=2)
    llm.script(Reply(content="one two three four", chunks=4, hold=hold))  # "one t", "wo th"…
    await page.fill("input", "Count for me")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("p").nth(3)).to_have_text("assistant: one two th")
    await page.get_by_role("button", name="Stop").click()
    assert await asyncio.to_thread(hold.closed.wait, 10), "the upstream request stayed open"
    await expect(page.get_by_role("button", name="Regenerate")).to_be_enabled()
    assert await shown(page) == await stored(live, session_id)
    assert (await shown(page))[2:] == ["user: Count for me", "assistant: one two th"]


async def regenerate_and_check(page: Page, llm: MockLLM, live: Live, session_id: str) -> None:
    """Regenerate: the last message answered again; the stopped reply kept as a variant."""
    llm.script(Reply(content="A whole count this time.", chunks=3, chunk_delay=0.01))
    await page.get_by_role("button", name="Regenerate").click()
    await expect(page.locator("p").nth(3)).to_have_text("assistant: A whole count this time.")
    await expect(page.get_by_role("button", name="Regenerate")).to_be_enabled()
    assert await shown(page) == await stored(live, session_id)
    assert (await shown(page))[2:] == ["user: Count for me", "assistant: A whole count this time."]
    assert await variants(live, session_id, 3) == [["assistant: one two th"]]


async def edit_and_check(page: Page, llm: MockLLM, live: Live, session_id: str) -> None:
    """Edit of the first message: answered anew, and what followed kept as a variant."""
    llm.script(Reply(content="Hello to you too.", chunks=2, chunk_delay=0.01))
    await page.locator("p").nth(0).get_by_role("button", name="Edit").click()
    await expect(page.locator("input")).to_have_value("Hello!")
    await page.fill("input", "Hello, edited!")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("p")).to_have_count(2)
    await expect(page.locator("p").nth(1)).to_have_text("assistant: Hello to you too.")
    await expect(page.get_by_role("button", name="Regenerate")).to_be_enabled()
    assert await shown(page) == await stored(live, session_id)
    assert await shown(page) == ["user: Hello, edited!", "assistant: Hello to you too."]
    assert await variants(live, session_id, 0) == [
        [
            "user: Hello!",
            "assistant: Ahoy there, in pieces.",
            "user: Count for me",
            "assistant: A whole count this time.",
        ]
    ]
    system_and_turns = llm.chat_requests()[-1]["messages"]
    assert [m["content"] for m in system_and_turns[1:]] == ["Hello, edited!"]


async def variants(live: Live, session_id: str, seq: int) -> list[list[str]]:
    """The variants kept at ``seq``, each as its ``role: text`` lines."""
    url = f"{API}/session/{session_id}/messages/{seq}/variants"
    answer = await live.client.get(url, headers=HEADERS)
    assert answer.status_code == 200, answer.text
    return [
        [f"{m['role']}: {m['content']}" for m in variant["messages"]]
        for variant in answer.json()["variants"]
    ]
