"""Image input (docs/images.md) over REST, SSE and the upload route, on both stores: checked,
cleaned of metadata, stored beside the message store, sent to the model, read back by its
owner only, and erased with the user."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from services.core.attachment_records import Attachment, user_folder
from testkit.mock_llm import MockLLM
from testkit.postgres_server import query
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
    """Every image object the app's attachment store holds: files, bucket objects or rows
    (as ``{user folder}/{id}``)."""
    settings = running.services.settings
    if settings.store == "firebase":
        return storage.names(settings.storage_bucket)
    if settings.store == "postgres" and settings.database_url is not None:
        rows = query(
            settings.database_url.get_secret_value(),
            "SELECT user_id, attachment_id FROM attachments ORDER BY 1, 2",
        )
        return [f"{user_folder(user)}/{aid}" for user, aid in (row.split("|") for row in rows)]
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


async def test_an_image_with_exif_gps_is_stored_without_it(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    photo = jpeg_with_gps()
    assert Image.open(io.BytesIO(photo)).getexif().get_ifd(0x8825)  # the GPS tags are there
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session()
        uploaded = await running.client.post(
            f"{API}/{sid}/attachments", files={"file": ("photo.jpg", photo, "image/jpeg")}
        )
        assert uploaded.status_code == 201, uploaded.text
        stored = (await running.client.get(uploaded.json()["url"])).content
    image = Image.open(io.BytesIO(stored))
    assert image.format == "JPEG"
    assert not image.getexif()  # no GPS, no orientation, nothing
    assert "exif" not in image.info
    assert image.size == (40, 80)  # turned upright by its orientation before it was dropped


async def test_an_uploaded_image_is_sent_by_its_id(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session()
        uploaded = await running.client.post(
            f"{API}/{sid}/attachments", files={"file": ("shot.png", png(), "image/png")}
        )
        attachment_id = uploaded.json()["id"]
        sent = await running.send(sid, "Fix this", attachments=[{"id": attachment_id}])
        assert sent.status_code == 200, sent.text
        assert sent.json()["user_message"]["attachments"][0]["id"] == attachment_id
        assert image_parts(llm)[0]["image_url"]["url"].startswith("data:image/png;base64,")


def truncated_png() -> bytes:
    whole = png(256, 256, "green")
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    ("name", "data", "media_type", "status", "code"),
    [
        ("jpeg-named-png.png", jpeg_with_gps(), "image/png", 422, "invalid_image"),
        ("truncated.png", truncated_png(), "image/png", 422, "invalid_image"),
        ("bomb.png", bomb(), "image/png", 422, "invalid_image"),
        ("not-an-image.png", b"GIF89a but not really", "image/png", 422, "invalid_image"),
    ],
)
async def test_a_bad_upload_is_refused_and_nothing_is_stored(
    make_settings: SettingsFactory,
    clock: FakeClock,
    storage_server: StorageServer,
    name: str,
    data: bytes,
    media_type: str,
    status: int,
    code: str,
) -> None:
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session()
        refused = await running.client.post(
            f"{API}/{sid}/attachments", files={"file": (name, data, media_type)}
        )
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code)
        assert stored_files(running, storage_server) == []


async def test_a_jpeg_named_png_is_refused_by_its_name_too(
    make_settings: SettingsFactory, clock: FakeClock, storage_server: StorageServer
) -> None:
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session()
        refused = await running.client.post(
            f"{API}/{sid}/attachments",
            files={"file": ("photo.png", jpeg_with_gps(), "application/octet-stream")},
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "invalid_image"
        assert stored_files(running, storage_server) == []


async def test_a_50_mb_upload_is_refused_by_its_size_before_it_is_read(
    make_settings: SettingsFactory, clock: FakeClock, storage_server: StorageServer
) -> None:
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session()
        huge = png() + b"\0" * 50_000_000
        refused = await running.client.post(
            f"{API}/{sid}/attachments", files={"file": ("huge.png", huge, "image/png")}
        )
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "payload_too_large"
        assert stored_files(running, storage_server) == []


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        (data_url(jpeg_with_gps(), "image/png"), 422, "invalid_image"),
        (data_url(truncated_png()), 422, "invalid_image"),
        (data_url(bomb()), 422, "invalid_image"),
        ("https://example.com/cat.png", 422, "invalid_image"),
        (data_url(png() + b"\0" * 2_000_000), 413, "payload_too_large"),
    ],
    ids=["jpeg-as-png", "truncated", "bomb", "not-a-data-url", "over-the-limit"],
)
async def test_a_bad_image_in_a_message_is_refused_before_the_model(
    make_settings: SettingsFactory,
    clock: FakeClock,
    llm: MockLLM,
    storage_server: StorageServer,
    url: str,
    status: int,
    code: str,
) -> None:
    async with running_app(make_settings(attachment_max_bytes=1_000_000), clock) as running:
        sid = await running.create_session()
        refused = await running.send(sid, "Look", attachments=[{"url": url}])
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code)
        assert llm.chat_requests() == []
        assert stored_files(running, storage_server) == []
        history = (await running.client.get(f"{API}/{sid}/messages")).json()["messages"]
        assert history == []


async def test_images_to_a_model_without_vision_are_refused_before_any_call(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(models_without_images=["gpt-test"]), clock) as running:
        sid = await running.create_session("pirate")  # gpt-test-pirate
        refused = await running.send(sid, "Look", attachments=[{"url": data_url(png())}])
        upload = await running.client.post(
            f"{API}/{sid}/attachments", files={"file": ("a.png", png(), "image/png")}
        )
    assert refused.status_code == upload.status_code == 422
    assert refused.json()["error"]["code"] == "images_not_supported"
    assert upload.json()["error"]["code"] == "images_not_supported"
    assert llm.chat_requests() == []


async def test_a_personality_can_turn_images_off(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(), clock) as running:
        template = {"name": "Blind", "personalityPrompt": "You see nothing.", "images": False}
        saved = await running.client.post("/api/v1/personalities", json=template)
        assert saved.status_code == 201, saved.text
        sid = await running.create_session("blind")
        refused = await running.send(sid, "Look", attachments=[{"url": data_url(png())}])
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "images_not_supported"
        assert llm.chat_requests() == []


async def test_another_users_attachment_is_unreachable(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    keys = {"auth_mode": "api_key", "user_api_keys": "alice=alice-key,bob=bob-key"}
    alice, bob = ({"Authorization": f"Bearer {who}-key"} for who in ("alice", "bob"))
    async with running_app(make_settings(**keys), clock) as running:
        client = running.client
        mine = (await client.post(API, json={}, headers=alice)).json()["session_id"]
        theirs = (await client.post(API, json={}, headers=bob)).json()["session_id"]
        uploaded = await client.post(
            f"{API}/{mine}/attachments",
            files={"file": ("a.png", png(), "image/png")},
            headers=alice,
        )
        url, attachment_id = uploaded.json()["url"], uploaded.json()["id"]
        assert (await client.get(url, headers=alice)).status_code == 200
        by_url = await client.get(url, headers=bob)  # alice's session: not bob's
        by_own_session = await client.get(
            f"{API}/{theirs}/attachments/{attachment_id}", headers=bob
        )
        in_a_message = await client.post(
            f"{API}/{theirs}/message",
            json={"message": "mine now?", "attachments": [{"id": attachment_id}]},
            headers=bob,
        )
    assert by_url.status_code == 404 and by_url.json()["error"]["code"] == "session_not_found"
    assert by_own_session.status_code == 404
    assert by_own_session.json()["error"]["code"] == "attachment_not_found"
    assert in_a_message.status_code == 404
    assert in_a_message.json()["error"]["code"] == "attachment_not_found"


async def test_deleting_the_user_removes_their_image_files(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, storage_server: StorageServer
) -> None:
    async with running_app(make_settings(), clock) as running:
        doomed = await running.create_session(user_id="erin")
        kept = await running.create_session(user_id="frank")
        for sid in (doomed, kept):
            sent = await running.send(sid, "Look", attachments=[{"url": data_url(png())}])
            assert sent.status_code == 200, sent.text
        upload = await running.client.post(
            f"{API}/{doomed}/attachments", files={"file": ("a.png", png(), "image/png")}
        )
        assert upload.status_code == 201
        before = stored_files(running, storage_server)
        deleted = await running.client.delete("/api/v1/chatbot/users/erin")
        assert deleted.status_code == 200, deleted.text
        after = stored_files(running, storage_server)
        frank = (await running.client.get(f"{API}/{kept}/messages")).json()["messages"]
        still = await running.client.get(frank[0]["attachments"][0]["url"])
    erin, frank_folder = user_folder("erin"), user_folder("frank")
    assert any(erin in name for name in before)
    assert not any(erin in name for name in after)  # gone from the folder or the bucket
    assert after and all(frank_folder in name for name in after)
    assert still.status_code == 200  # frank's images stay


async def test_only_the_last_user_turns_send_their_images(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(attachment_history_turns=2), clock) as running:
        sid = await running.create_session("plain")
        for color in ("red", "green", "blue"):
            image = data_url(png(color=color))
            sent = await running.send(sid, f"A {color} one", attachments=[{"url": image}])
            assert sent.status_code == 200, sent.text
        users = [m for m in llm.chat_requests()[-1]["messages"] if m["role"] == "user"]
    assert users[0]["content"] == "A red one [image]"  # older: a placeholder, no bytes
    for message in users[1:]:
        assert [part["type"] for part in message["content"]] == ["text", "image_url"]


async def test_an_image_reaches_the_model_over_sse(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session()
        body = {"message": "And this?", "attachments": [{"url": data_url(png())}]}
        async with running.client.stream(
            "POST", f"{API}/{sid}/message/stream", json=body
        ) as response:
            assert response.status_code == 200
            events = [line async for line in response.aiter_lines() if line.startswith("event:")]
        assert events[-1] == "event: done"
        assert len(image_parts(llm)) == 1
        history = (await running.client.get(f"{API}/{sid}")).json()["conversation_history"]
        assert history[0]["attachments"][0]["type"] == "image/png"


def test_an_image_costs_what_openai_counts_for_its_tiles() -> None:
    assert Attachment("a", "image/png", 1, 64, 48).tokens == 85 + 170  # one tile
    assert Attachment("a", "image/png", 1, 1024, 1024).tokens == 85 + 170 * 4  # 768² → 2×2
    assert Attachment("a", "image/png", 1, 2048, 4096).tokens == 85 + 170 * 6  # 768×1536 → 2×3


async def test_a_message_with_images_may_pass_the_body_limit_and_nothing_else_may(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    noise = Image.effect_noise((400, 400), 64).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    photo = data_url(buffer.getvalue())
    assert len(photo) > 200_000  # over MAX_REQUEST_BYTES (65536)
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session()
        sent = await running.send(sid, "Noise?", attachments=[{"url": photo}])
        padded = await running.send(sid, "Noise?", padding=photo)  # no images: the usual limit
    assert sent.status_code == 200, sent.text
    assert padded.status_code == 413


async def test_a_token_budget_counts_an_image_at_its_tile_rate(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(), clock) as running:
        # 600 tokens of history: a short exchange fits, its 2048² image (765 tokens) not.
        template = {
            "name": "Budget",
            "personalityPrompt": "Be brief, always.",
            "contextTokens": 600,
        }
        saved = await running.client.post("/api/v1/personalities", json=template)
        assert saved.status_code == 201, saved.text
        with_image, without = (
            await running.create_session("budget"),
            await running.create_session("budget"),
        )
        big = data_url(png(2048, 2048))
        assert (await running.send(with_image, "Look", attachments=[{"url": big}])).is_success
        assert (await running.send(without, "Look")).is_success
        assert (await running.send(with_image, "And now?")).is_success
        dropped = llm.chat_requests()[-1]["messages"]
        assert (await running.send(without, "And now?")).is_success
        kept = llm.chat_requests()[-1]["messages"]
    assert [m["role"] for m in kept[1:]] == ["user", "assistant", "user"]
    assert [m["role"] for m in dropped[1:]] == ["assistant", "user"]  # the image message left


async def test_a_regenerate_sends_the_messages_images_again(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session()
        sent = await running.send(sid, "What is this?", attachments=[{"url": data_url(png())}])
        assert sent.status_code == 200, sent.text
        again = await running.client.post(f"{API}/{sid}/regenerate", json={})
        assert again.status_code == 200, again.text
        assert len(image_parts(llm)) == 1
        assert (
            again.json()["user_message"]["attachments"]
            == sent.json()["user_message"]["attachments"]
        )


async def test_the_export_of_a_user_carries_their_images(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(), clock) as running:
        sid = await running.create_session(user_id="gina")
        sent = await running.send(sid, "Mine", attachments=[{"url": data_url(png())}])
        assert sent.status_code == 200, sent.text
        exported = await running.client.get("/api/v1/chatbot/users/gina/export")
        assert exported.status_code == 200, exported.text
        first = exported.json()["sessions"][0]["messages"][0]
        image = await running.client.get(first["attachments"][0]["url"])
    assert first["attachments"][0]["id"] == sent.json()["user_message"]["attachments"][0]["id"]
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 48)
