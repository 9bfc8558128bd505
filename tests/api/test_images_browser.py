"""The images docs' ``useChat`` example in a real browser (React, the real ``@ai-sdk/react``
and ``ai`` packages): a PNG chosen in a file input reaches the model as an ``image_url`` part,
is stored, and shows again after a reload."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import FilePayload, expect

from services.core.settings import REPO_ROOT
from testkit.browser import chromium_page
from testkit.mock_llm import MockLLM
from testkit.usechat import build_page, docs_example, page_server
from tests.api.conftest import API, LiveFactory
from tests.api.test_images import image_parts, png

KEY = "user-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
EXAMPLE = docs_example(REPO_ROOT / "docs" / "images.md", "## React: `useChat` with files")


async def test_a_png_sent_through_use_chat_reaches_the_model_and_the_reloaded_history(
    live_app: LiveFactory, llm: MockLLM, tmp_path: Path
) -> None:
    with page_server(tmp_path) as origin:
        settings = {"auth_mode": "api_key", "user_api_keys": f"ana={KEY}", "cors_origins": origin}
        async with live_app(**settings) as live, chromium_page() as browser:
            build_page(live.url, tmp_path, example=EXAMPLE)
            session = await live.client.post(f"{API}/session", json={}, headers=HEADERS)
            session_id = session.json()["session_id"]
            page = browser.page
            await page.goto(f"{origin}/?session={session_id}&key={KEY}")
            await page.fill("input[type=text]", "What plant is this?")
            leaf = FilePayload(name="leaf.png", mimeType="image/png", buffer=png(color="green"))
            await page.set_input_files("input[type=file]", files=[leaf])
            await page.get_by_role("button", name="Send").click()
            reply = "assistant: Echo: What plant is this? [image/png]"
            await expect(page.locator("p").nth(1)).to_have_text(reply)

            parts = image_parts(llm)
            assert len(parts) == 1
            assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
            url = f"{API}/session/{session_id}/messages"
            stored = (await live.client.get(url, headers=HEADERS)).json()["messages"]
            assert stored[0]["attachments"][0]["type"] == "image/png"

            await page.reload()
            await expect(page.locator("p").nth(1)).to_have_text(reply)
            picture = page.locator("img")
            await expect(picture).to_have_count(1)
            await expect(picture).to_have_attribute("src", re.compile(f"^blob:{origin}/"))
            await expect(picture).to_have_js_property("naturalWidth", 64)  # the stored PNG
            assert browser.errors == []
