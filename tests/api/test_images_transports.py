"""Image input over the WebSocket and the AI SDK route (docs/images.md), on both stores: the
image reaches the model as an ``image_url`` part and comes back with the stored history."""

from __future__ import annotations

import json
from typing import Any

import httpx
import websockets
from playwright.async_api import FilePayload, expect

from testkit.browser import chromium_page
from testkit.mock_llm import MockLLM
from tests.api.conftest import API, Live, LiveFactory
from tests.api.test_images import data_url, image_parts, png
from tests.api.test_ws import receive, turn_events, ws_url


async def test_an_image_reaches_the_model_over_the_websocket(live: Live, llm: MockLLM) -> None:
    session_id = await live.create_session()
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)  # chat_history
        frame = {
            "type": "user_message",
            "message": "What is this?",
            "attachments": [{"url": data_url(png())}],
        }
        await socket.send(json.dumps(frame))
        events = await turn_events(socket)
    reply = next(e for e in events if e["type"] == "ai_response")
    assert reply["user_message"]["attachments"][0]["type"] == "image/png"
    assert len(image_parts(llm)) == 1
    async with websockets.connect(ws_url(live, session_id)) as socket:
        history = await receive(socket)
    assert (
        history["messages"][0]["attachments"][0]["id"]
        == reply["user_message"]["attachments"][0]["id"]
    )


async def test_a_bad_image_over_the_websocket_is_an_error_frame(live: Live, llm: MockLLM) -> None:
    session_id = await live.create_session()
    async with websockets.connect(ws_url(live, session_id)) as socket:
        await receive(socket)
        bad = data_url(b"not a png at all")
        frame = {"type": "user_message", "message": "Look", "attachments": [{"url": bad}]}
        await socket.send(json.dumps(frame))
        error = await receive(socket)
    assert (error["type"], error["code"]) == ("error", "invalid_image")
    assert llm.chat_requests() == []


async def _ui_turn(client: httpx.AsyncClient, session_id: str, parts: list[dict[str, Any]]) -> str:
    body = {"id": session_id, "messages": [{"id": "m1", "role": "user", "parts": parts}]}
    async with client.stream("POST", f"{API}/chat", json=body) as response:
        assert response.status_code == 200, await response.aread()
        return "".join([line async for line in response.aiter_lines()])


async def test_a_file_part_of_use_chat_reaches_the_model_and_the_reloaded_history(
    live: Live, llm: MockLLM
) -> None:
    session_id = await live.create_session()
    parts = [
        {"type": "text", "text": "What plant is this?"},
        {"type": "file", "mediaType": "image/png", "url": data_url(png())},
    ]
    streamed = await _ui_turn(live.client, session_id, parts)
    assert '"type": "finish"' in streamed
    assert len(image_parts(llm)) == 1
    page = (await live.client.get(f"{API}/chat/{session_id}/messages")).json()
    user_parts = page["messages"][0]["parts"]
    assert user_parts[0] == {"type": "text", "text": "What plant is this?", "state": "done"}
    assert user_parts[1]["type"] == "file" and user_parts[1]["mediaType"] == "image/png"
    image = await live.client.get(user_parts[1]["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


async def test_a_file_part_that_lies_about_its_type_is_refused(live: Live, llm: MockLLM) -> None:
    session_id = await live.create_session()
    parts = [
        {"type": "text", "text": "Look"},
        {"type": "file", "mediaType": "image/jpeg", "url": data_url(png(), "image/jpeg")},
    ]
    body = {"id": session_id, "messages": [{"id": "m1", "role": "user", "parts": parts}]}
    refused = await live.client.post(f"{API}/chat", json=body)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid_image"
    assert llm.chat_requests() == []


async def test_the_playground_sends_an_image_with_a_message(
    live_app: LiveFactory, llm: MockLLM
) -> None:
    async with live_app() as live, chromium_page() as browser:
        page = browser.page
        await page.goto(f"{live.url}/playground")
        await page.click("#new")
        await expect(page.locator("#attach")).to_be_enabled()
        leaf = FilePayload(name="leaf.png", mimeType="image/png", buffer=png(color="green"))
        await page.set_input_files("#image", files=[leaf])
        await expect(page.locator("#attach")).to_have_text("Image (1)")
        await page.fill("#text", "What plant?")
        await page.press("#text", "Enter")
        await expect(page.locator(".msg.assistant").last).to_contain_text("[image/png]")
        sent = page.locator(".msg.user img.sent")
        assert await sent.evaluate("img => img.naturalWidth") == 64
        assert browser.errors == []
    assert len(image_parts(llm)) == 1
