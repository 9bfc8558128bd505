"""Image input (docs/images.md) over REST, SSE and the upload route, on both stores: checked,
cleaned of metadata, stored beside the message store, sent to the model, read back by its
owner only, and erased with the user."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from testkit.mock_llm import MockLLM
from testkit.storage_server import StorageServer
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot/session"


def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    """A small PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_with_gps() -> bytes:
    """A JPEG whose EXIF holds a GPS position (as a phone photo does) and an orientation."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the stored pixels are sideways
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    buffer = io.BytesIO()
    Image.new("RGB", (80, 40), "blue").save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def bomb() -> bytes:
    """A tiny PNG that decodes to 40,000 × 40,000 pixels (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("1", (40_000, 40_000)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def stored_files(running: RunningApp, storage: StorageServer) -> list[str]:
    """Every image object the app's attachment store holds: files or bucket objects."""
    settings = running.services.settings
    if settings.store == "firebase":
        return storage.names(settings.storage_bucket)
    root = settings.attachments_path
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def image_parts(llm: MockLLM) -> list[dict[str, Any]]:
    """The image_url parts of the last chat request's messages."""
    messages = llm.chat_requests()[-1]["messages"]
    return [
        part
        for message in messages
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]


async def test_a_png_in_a_message_reaches_the_model_and_comes_back_in_history(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session()
        sent = await running.send(sid, "What is this?", attachments=[{"url": data_url(png())}])
        assert sent.status_code == 200, sent.text
        parts = image_parts(llm)
        assert len(parts) == 1
        assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
        stored = sent.json()["user_message"]["attachments"]
        assert stored[0]["type"] == "image/png"
        assert (stored[0]["width"], stored[0]["height"]) == (64, 48)

        history = (await running.client.get(f"{API}/{sid}/messages")).json()["messages"]
        attachment = history[0]["attachments"][0]
        assert attachment["id"] == stored[0]["id"]
        image = await running.client.get(attachment["url"])
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (64, 48)
