"""The built-in image tool: the model calls ``images__generate``, the session's provider's
``/images/generations`` draws it (the mock LLM answers with a small PNG), and the reply carries
the image in ``images``; the playground shows it in a real browser."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from services.core.records import Sampling
from services.llm.offline import OfflineResponder
from testkit.browser import chromium_page
from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import LiveFactory
from tests.api.test_metrics import value
from tests.conftest import FakeClock, SettingsFactory, running_app

API = "/api/v1/chatbot"
DRAW = '[[call images__generate {"prompt": "a red fox in the snow"}]]'
ARTIST = {
    "name": "artist",
    "description": "Draws",
    "personalityPrompt": "You draw what you are asked for.",
    "tools": ["images/generate"],
}


@pytest.fixture(autouse=True)
def artist(seed_dir: Path) -> None:
    (seed_dir / "templates" / "artist.json").write_text(json.dumps(ARTIST))


def png_size(reference: str) -> tuple[int, int]:
    """Width and height of a ``data:image/png`` URL's image (from its IHDR)."""
    prefix = "data:image/png;base64,"
    assert reference.startswith(prefix), reference[:40]
    data = base64.b64decode(reference.removeprefix(prefix))
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_the_model_draws_an_image_and_the_reply_carries_it(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(
        make_settings(image_model="img-model", image_size="512x512"), clock
    ) as chat:
        session_id = await chat.create_session("artist")
        reply = await chat.send(session_id, f"Draw me a fox {DRAW}")
        history = (await chat.client.get(f"{API}/session/{session_id}/messages")).json()
        metrics = (await chat.client.get("/metrics")).text

    assert reply.status_code == 200, reply.text
    message = reply.json()["assistant_message"]
    [image] = message["images"]
    assert png_size(image) == (64, 64)
    assert message["tools"][0]["images"] == [image] and message["tools"][0]["is_error"] is False
    assert history["messages"][1]["images"] == [image]
    drawn = [r.body for r in llm.requests if r.path.endswith("/images/generations")]
    assert drawn == [
        {"model": "img-model", "prompt": "a red fox in the snow", "size": "512x512", "n": 1}
    ]
    tool_message = llm.chat_requests()[-1]["messages"][-1]
    assert tool_message["role"] == "tool" and "data:" not in tool_message["content"]
    image_calls = {"provider": "default", "model": "img-model", "outcome": "ok"}
    assert value(metrics, "chatify_llm_calls_total", **image_calls) == 1


async def test_a_failed_image_is_an_error_result_and_the_turn_goes_on(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    llm.script(Reply(), Reply(status=500))  # the first model call, then the images endpoint
    async with running_app(make_settings(), clock) as chat:
        session_id = await chat.create_session("artist")
        reply = await chat.send(session_id, f"Draw {DRAW}")
        metrics = (await chat.client.get("/metrics")).text

    assert reply.status_code == 200, reply.text
    failed = {"provider": "default", "model": "gpt-image-1", "outcome": "llm_error"}
    assert value(metrics, "chatify_llm_calls_total", **failed) == 1
    message = reply.json()["assistant_message"]
    assert message["images"] is None
    [use] = message["tools"]
    assert use["is_error"] is True
    assert use["result"].startswith("The image could not be created")


async def test_an_image_over_the_size_limit_is_refused_and_a_url_is_kept_as_it_is(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    big = base64.b64encode(bytes(2048)).decode()
    url = "https://images.example/fox.png"
    llm.script(
        Reply(), Reply(raw_body=json.dumps({"data": [{"b64_json": big}]}).encode()), Reply(),
        Reply(), Reply(raw_body=json.dumps({"data": [{"url": url}]}).encode()), Reply(),
    )  # fmt: skip
    async with running_app(make_settings(image_max_bytes=1024), clock) as chat:
        session_id = await chat.create_session("artist")
        refused = (await chat.send(session_id, DRAW)).json()["assistant_message"]
        linked = (await chat.send(session_id, f"Again {DRAW}")).json()["assistant_message"]

    assert refused["images"] is None
    assert refused["tools"][0]["result"] == "The image is larger than IMAGE_MAX_BYTES (1024 bytes)"
    assert linked["images"] == [url]


async def test_the_offline_responder_draws_a_small_image() -> None:
    sampling = Sampling("offline", 0.5, 50, 0.0, 0.0)
    image = await OfflineResponder().generate_image("a cat", sampling, model="m", size="1024x1024")
    assert png_size(image.reference()) == (64, 64)
    again = await OfflineResponder().generate_image("a dog", sampling, model="m", size="1024x1024")
    assert again.reference() != image.reference()  # drawn from the prompt


async def test_authoring_knows_the_built_in_image_tool(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    draft: dict[str, Any] = {
        "name": "Painter",
        "personalityPrompt": "You paint with words and images.",
        "tools": ["images/generate", "images/upscale"],
    }
    async with running_app(make_settings(), clock) as chat:
        response = await chat.client.post("/api/v1/personalities", json=draft)
    assert response.status_code == 422
    problems = [(p["type"], p["loc"]) for p in response.json()["detail"]]
    assert problems == [("unknown_tool", ["body", "tools", 1])]


@pytest.fixture
def backend() -> str:
    """The page is not about the store: SQLite only."""
    return "sqlite"


async def test_the_playground_shows_the_calls_and_the_image(live_app: LiveFactory) -> None:
    async with live_app() as live, chromium_page() as browser:
        page = browser.page
        await page.goto(f"{live.url}/playground")
        await page.select_option("#personality", "artist")
        await page.click("#new")
        await page.fill("#text", f"Draw {DRAW}")
        await page.press("#text", "Enter")
        image = page.locator(".assistant img.generated")
        await expect(image).to_be_visible()
        assert await image.evaluate("img => img.naturalWidth") == 64
        await expect(page.locator(".tool")).to_contain_text("images/generate")
        await expect(page.locator(".tool")).to_contain_text("→ The image was created")
        assert browser.errors == []
