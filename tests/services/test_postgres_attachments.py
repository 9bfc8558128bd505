"""Images on the PostgreSQL store beyond the attachment contract: the bytes are kept in the
database, so replicas on one database read each other's images; a database at schema version
1 gains the images' column and table and keeps reading its messages and variants; a start that
fails names the database without its password."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from services.core.attachment_records import Attachment
from services.core.branch_records import NewBranch
from services.core.errors import StoreUnavailable
from services.core.settings import Settings
from services.store import build_attachment_store
from services.store.postgres import PostgresStore
from services.store.postgres.schema import migrations
from testkit.postgres_server import PostgresServer
from testkit.stored_turns import append_turn
from tests.services.test_store_contract import branch_turn, make_session, make_turn

PNG = Attachment("2" * 32, "image/png", 3, 64, 48)


def replica(url: str, folder: Path) -> Settings:
    """A replica's settings: the shared database, a local folder of its own."""
    return Settings(_env_file=None, store="postgres", database_url=url, sqlite_path=folder / "x.db")


async def test_replicas_on_one_database_share_their_images(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    one = build_attachment_store(replica(url, tmp_path / "one"))
    two = build_attachment_store(replica(url, tmp_path / "two"))
    await one.open()
    await two.open()
    try:
        await one.put("alice", PNG, b"png")
        assert await two.get("alice", PNG.id) == (PNG, b"png")
        assert await two.delete_user("alice") == 1
        assert await one.get("alice", PNG.id) is None
    finally:
        await one.close()
        await two.close()
    assert not (tmp_path / "one").exists() and not (tmp_path / "two").exists()


async def test_a_database_at_version_1_gains_images_and_keeps_its_history(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    database = url.rsplit("/", 1)[1]
    store = PostgresStore(Settings(_env_file=None, store="postgres", database_url=url))
    await store.open()
    session = make_session()
    try:
        await store.create_session(session)
        await append_turn(store, session, make_turn(0, "c0"))
        await store.write_branch(session, NewBranch(seq=1, turn=branch_turn("again"), next_seq=2))
    finally:
        await store.close()
    # Back to what release 1 wrote: no column, no table, variants without the field.
    postgres_server.psql(
        "ALTER TABLE messages DROP COLUMN attachments; DROP TABLE attachments; "
        "DROP TABLE push_devices; DROP TABLE push_preferences; "  # release 3's
        "DELETE FROM schema_version WHERE version > 1; "
        "UPDATE message_variants SET messages = (SELECT jsonb_agg(m - 'attachments') "
        "FROM jsonb_array_elements(messages) AS m)",
        database,
    )
    await store.open()
    try:
        applied = postgres_server.psql("SELECT max(version) FROM schema_version", database)
        assert applied.strip() == str(len(migrations()))
        old = await store.load_messages(session.session_id, limit=10)
        assert [(m.content, m.attachments) for m in old] == [("question 0", ()), ("re: again", ())]
        variants = await store.load_variants(session.session_id, 1)
        assert [m.content for m in variants[0].messages] == ["answer 0"]
        turn = dataclasses.replace(make_turn(1, "c1"), attachments=(PNG,))
        assert (await append_turn(store, session, turn)).user.attachments == (PNG,)
        latest = await store.load_messages(session.session_id, limit=2)
        assert latest[0].attachments == (PNG,)
    finally:
        await store.close()


async def test_a_wrong_password_fails_the_start_without_showing_it(
    postgres_server: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = postgres_server.create_database().replace("chatify-test-password", "wrong-pw-4242")
    images = build_attachment_store(replica(url, tmp_path))
    with caplog.at_level(logging.ERROR), pytest.raises(StoreUnavailable) as refused:
        await images.open()
    message = str(refused.value)
    assert message.startswith("Cannot open the PostgreSQL attachments at postgres@127.0.0.1:")
    assert "wrong-pw-4242" not in message and "wrong-pw-4242" not in caplog.text
