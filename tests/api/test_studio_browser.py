"""The studio in a real browser: an author with an admin key creates a personality, watches live
validation, previews the unsaved draft, publishes it, edits it and rolls it back."""

from __future__ import annotations

import os

import pytest
from playwright.async_api import Page, expect

from testkit.browser import chromium_page
from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import API, LiveFactory

ADMIN = {"Authorization": "Bearer admin-key"}
SERVICE = {"X-API-Key": "service-key"}
FIRST_PROMPT = "You are Test Bot. Answer briefly and kindly."
SECOND_PROMPT = "You are Test Bot, now terse.\nAnswer in one line."
REPLY = "Ahoy from the unsaved draft, streamed in pieces."
SCREENSHOT = "/tmp/studio-preview.png"


@pytest.fixture
def backend() -> str:
    """The page is not about the store: SQLite only."""
    return "sqlite"


async def sign_in(page: Page) -> None:
    """Enter the admin key once the page has asked for it."""
    await expect(page.locator("#status")).to_contain_text("admin key")
    await page.fill("#key", "admin-key")
    await page.press("#key", "Enter")
    for template_id in ("pirate", "plain", "hidden"):
        await expect(page.locator(f'#list li[data-id="{template_id}"]')).to_be_visible()


async def draft_with_live_validation(page: Page) -> None:
    """A new personality whose prompt is first too short, then fixed."""
    await page.click("#new")
    await page.fill("#f-name", "Test Bot")
    await page.fill("#f-personalityPrompt", "Hi")
    await expect(page.locator("#p-personalityPrompt")).to_contain_text("at least 10 characters")
    await expect(page.locator("#problems")).to_contain_text("personalityPrompt")
    await page.fill("#f-personalityPrompt", FIRST_PROMPT)
    await expect(page.locator("#p-personalityPrompt")).to_have_text("")
    await expect(page.locator("#problems li")).to_have_count(0)
    await expect(page.locator("#diff")).to_contain_text("Test Bot")


async def preview(page: Page, llm: MockLLM) -> None:
    """The draft answers in the preview, streamed, from its unsaved prompt."""
    llm.script(Reply(content=REPLY, chunks=6, chunk_delay=0.02))
    await page.fill("#preview-text", "Who are you?")
    await page.click("#preview-send")
    await expect(page.locator("#preview-log .assistant")).to_have_text(REPLY)
    system = llm.chat_requests()[-1]["messages"][0]
    assert system["role"] == "system"
    assert FIRST_PROMPT in system["content"]
    if os.environ.get("STUDIO_SCREENSHOT"):
        await page.screenshot(path=SCREENSHOT, full_page=True)


async def test_author_drafts_previews_publishes_and_rolls_back(
    live_app: LiveFactory, llm: MockLLM
) -> None:
    overrides = {"auth_mode": "api_key", "admin_api_keys": "admin-key", "api_keys": "service-key"}
    async with live_app(**overrides) as live, chromium_page() as browser:
        page = browser.page
        await page.goto(f"{live.url}/studio")
        await sign_in(page)
        await draft_with_live_validation(page)
        await preview(page, llm)
        stored = await live.client.get("/api/v1/personalities/test-bot", headers=ADMIN)
        assert stored.status_code == 404, "a preview stores nothing"

        await page.click("#publish")
        await expect(page.locator('#list li[data-id="test-bot"]')).to_be_visible()
        await expect(page.locator("#form-title")).to_contain_text("test-bot (version 1)")
        stored = await live.client.get("/api/v1/personalities/test-bot", headers=ADMIN)
        assert stored.status_code == 200, stored.text
        assert stored.json()["personalityPrompt"] == FIRST_PROMPT

        session = await live.client.post(
            f"{API}/session", json={"user_id": "u1", "template_id": "test-bot"}, headers=SERVICE
        )
        assert session.status_code == 201, session.text
        turn = f"{API}/session/{session.json()['session_id']}/message"
        sent = await live.client.post(turn, json={"message": "hi"}, headers=SERVICE)
        assert sent.status_code == 200, sent.text

        await page.fill("#f-personalityPrompt", SECOND_PROMPT)
        await expect(page.locator("#diff")).to_contain_text("+ Answer in one line.")
        await page.click("#publish")
        await expect(page.locator("#form-title")).to_contain_text("test-bot (version 2)")
        await expect(page.locator("#diff")).to_have_text("No changes")
        await expect(page.locator("#versions li")).to_have_count(2)

        await page.locator('#versions li[data-version="1"]').get_by_text("Roll back").click()
        await expect(page.locator("#form-title")).to_contain_text("test-bot (version 3)")
        await expect(page.locator("#f-personalityPrompt")).to_have_value(FIRST_PROMPT)
        await expect(page.locator("#stats")).to_contain_text("sessions: 1")
        await expect(page.locator("#stats")).to_contain_text("turns by default/")
        stored = await live.client.get("/api/v1/personalities/test-bot", headers=ADMIN)
        assert stored.json()["personalityPrompt"] == FIRST_PROMPT
        assert stored.json()["version"] == 3
        assert browser.errors == []
