"""The attachment side of the storage contract, on every backend: a message keeps only the
references of its images, and the ``AttachmentStore`` beside the message store keeps their
bytes under their user (a local folder with SQLite, a Cloud Storage bucket with Firebase, the
``attachments`` table with PostgreSQL)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from services.core.attachment_records import Attachment
from services.core.branch_records import NewBranch
from services.store import build_attachment_store, build_store
from services.store.base import AttachmentStore, Store
from testkit.stored_turns import append_turn
from tests.conftest import SettingsFactory
from tests.services.test_store_contract import branch_turn, make_session, make_turn

PNG = Attachment("0" * 32, "image/png", 1234, 640, 480)
JPEG = Attachment("1" * 32, "image/jpeg", 5678, 2048, 1536)


@pytest.fixture
async def store(make_settings: SettingsFactory) -> AsyncIterator[Store]:
    """An open, empty message store of each backend."""
    backend = build_store(make_settings())
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def images(make_settings: SettingsFactory) -> AsyncIterator[AttachmentStore]:
    """The attachment store that goes with each backend."""
    backend = build_attachment_store(make_settings())
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def test_a_user_message_keeps_its_images_references(store: Store) -> None:
    session = make_session()
    await store.create_session(session)
    turn = dataclasses.replace(make_turn(0, "pic"), attachments=(PNG, JPEG))
    written = await append_turn(store, session, turn)
    assert written.user.attachments == (PNG, JPEG) and written.assistant.attachments == ()
    messages = await store.load_messages(session.session_id, limit=10)
    assert [m.attachments for m in messages] == [(PNG, JPEG), ()]
    found = await store.find_turn(session.session_id, "pic")
    assert found is not None and found.user.attachments == (PNG, JPEG)
    later = await store.load_messages_after(session.session_id, after=-1, limit=10)
    assert later[0].attachments == (PNG, JPEG)


async def test_a_regenerate_keeps_the_user_messages_images(store: Store) -> None:
    session = make_session()
    await store.create_session(session)
    await append_turn(store, session, dataclasses.replace(make_turn(0, "c0"), attachments=(PNG,)))
    stored = await store.write_branch(
        session, NewBranch(seq=1, turn=branch_turn("again", "r1"), next_seq=2)
    )
    assert stored.user.attachments == (PNG,)
    messages = await store.load_messages(session.session_id, limit=10)
    assert messages[0].attachments == (PNG,)


async def test_an_image_is_read_back_by_its_user_only(images: AttachmentStore) -> None:
    await images.put("alice", PNG, b"png bytes")
    assert await images.get("alice", PNG.id) == (PNG, b"png bytes")
    assert await images.get("bob", PNG.id) is None
    assert await images.get("alice", JPEG.id) is None


async def test_erasing_a_user_removes_their_images_and_no_one_elses(
    images: AttachmentStore,
) -> None:
    await images.put("alice", PNG, b"a")
    await images.put("alice", JPEG, b"b")
    await images.put("bob", PNG, b"c")
    assert await images.delete_user("alice") == 2
    assert await images.get("alice", PNG.id) is None
    assert await images.get("alice", JPEG.id) is None
    assert await images.get("bob", PNG.id) == (PNG, b"c")
    assert await images.delete_user("alice") == 0


async def test_a_variant_chosen_again_brings_its_images_back(store: Store) -> None:
    session = make_session()
    await store.create_session(session)
    await append_turn(store, session, dataclasses.replace(make_turn(0, "c0"), attachments=(PNG,)))
    edited = await store.write_branch(
        session, NewBranch(seq=0, turn=branch_turn("no picture"), next_seq=2)
    )
    assert edited.user.attachments == ()
    variants = await store.load_variants(session.session_id, 0)
    assert variants[0].messages[0].attachments == (PNG,)
    chosen = await store.select_variant(
        session, 0, variants[0].number, at="2026-01-01T14:00:00.000Z"
    )
    assert chosen is not None and chosen[0].attachments == (PNG,)
    messages = await store.load_messages(session.session_id, limit=10)
    assert messages[0].attachments == (PNG,)
