"""What the PostgreSQL store does beyond the contract every store passes: its migrations
(applied once, by one of several instances starting together; a newer database refused),
its start errors, and live document edits surviving a restart of the server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.core.errors import StoreUnavailable
from services.core.settings import Settings
from services.store.postgres import PostgresStore
from services.store.postgres.notify import DocumentListener
from services.store.postgres.schema import migrations
from services.store.versions import DocRef
from testkit.postgres_server import PostgresServer, require_postgres


def store_on(url: str) -> PostgresStore:
    """A store on ``url``, not opened."""
    return PostgresStore(Settings(_env_file=None, store="postgres", database_url=url))


async def test_instances_starting_together_migrate_once(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    stores = [store_on(url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        database = url.rsplit("/", 1)[1]
        applied = postgres_server.psql("SELECT version, name FROM schema_version", database)
        assert applied.split() == [f"{m.version}|{m.name}" for m in migrations()]
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_database_of_a_newer_release_is_refused_and_left_alone(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    database = url.rsplit("/", 1)[1]
    first = store_on(url)
    await first.open()
    await first.close()
    postgres_server.psql("INSERT INTO schema_version (version, name) VALUES (7, '007_x')", database)
    with pytest.raises(StoreUnavailable, match="schema version 7, newer than this release"):
        await store_on(url).open()
    count = postgres_server.psql("SELECT count(*) FROM schema_version", database).strip()
    assert count == str(len(migrations()) + 1)


def test_migration_files_are_numbered_without_a_gap(tmp_path: Path) -> None:
    (tmp_path / "001_first.sql").write_text("SELECT 1;")
    (tmp_path / "003_third.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="without a gap"):
        migrations(tmp_path)
    assert [m.version for m in migrations()] == list(range(1, len(migrations()) + 1))


async def test_a_role_that_may_not_create_tables_fails_the_start_in_one_line(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    database = url.rsplit("/", 1)[1]
    postgres_server.psql(
        "CREATE ROLE reader LOGIN PASSWORD 'reader-pw-77'; "
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        database,
    )
    reader = url.replace("postgres:chatify-test-password@", "reader:reader-pw-77@")
    with pytest.raises(StoreUnavailable) as refused:
        await store_on(reader).open()
    message = str(refused.value)
    assert message.startswith("Cannot prepare the PostgreSQL store at reader@127.0.0.1:")
    assert "permission denied for schema public" in message and "reader-pw-77" not in message


async def test_a_connection_that_cannot_listen_is_not_left_open() -> None:
    """A reconnect that fails half-way (connected, then LISTEN refused while the server shuts
    down) terminates that connection at once: left to the garbage collector, each such attempt
    kept a socket open until then (and asyncpg warned of an unclosed connection)."""

    class RefusesToListen:
        terminated = False

        async def add_listener(self, channel: str, callback: object) -> None:
            raise ConnectionError("the database system is shutting down")

        def terminate(self) -> None:
            self.terminated = True

    conn = RefusesToListen()

    async def connect() -> RefusesToListen:
        return conn

    with pytest.raises(ConnectionError, match="shutting down"):
        await DocumentListener(connect).start()
    assert conn.terminated


@pytest.fixture
async def restartable() -> AsyncIterator[PostgresServer]:
    """A cluster of its own, which the test may restart."""
    with PostgresServer(require_postgres()) as server:
        yield server


async def test_edits_are_heard_again_after_the_server_restarts(
    restartable: PostgresServer,
) -> None:
    url = restartable.create_database()
    writer, listener = store_on(url), store_on(url)
    await writer.open()
    await listener.open()
    heard = asyncio.Event()

    async def changed() -> None:
        heard.set()

    listener.watch_documents(changed)
    try:
        await asyncio.to_thread(restartable.restart)
        heard.clear()  # the listener reloads once on its way back, as it may have missed edits
        ref = DocRef("template", "after-restart")
        for _ in range(200):  # the writer's pooled connection broke: the first call is a 503
            try:
                await writer.write_document(
                    ref, lambda _: {"personalityPrompt": "You are back."},
                    if_match=None, source="api", at="2026-01-01T00:00:00.000Z",
                )  # fmt: skip
                break
            except StoreUnavailable:
                continue
        await asyncio.wait_for(heard.wait(), timeout=10)
    finally:
        await writer.close()
        await listener.close()
