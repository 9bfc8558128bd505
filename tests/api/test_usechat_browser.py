"""The docs' ``useChat`` example in a real browser (React, the real ``@ai-sdk/react`` and
``ai`` packages), against the service: what the page shows is what the service stored."""

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


async def test_the_docs_example_sends_and_shows_what_is_stored(
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
