"""The SQLite store's writers in one process take turns through a lock of their own, never
through SQLite's busy handler (which sleeps 1 to 100 ms between tries of a locked file)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from services.store.sqlite import SQLiteStore
from services.store.sqlite.connection import GroupCommit, PoolConnection, transaction
from testkit.stored_turns import append_turn
from tests.services.test_store_contract import make_session, make_turn


async def test_concurrent_writes_of_one_process_never_meet_a_locked_file(tmp_path: Path) -> None:
    # With no busy timeout, a write that found the file locked would fail at once
    # (StoreUnavailable): every write below succeeding shows that none waited on SQLite.
    store = SQLiteStore(tmp_path / "chatify.db", threads=4, busy_timeout=0)
    await store.open()
    try:
        sessions = [make_session(f"u{n}") for n in range(8)]
        await asyncio.gather(*(store.create_session(s) for s in sessions))
        await asyncio.gather(
            *(
                append_turn(store, session, make_turn(n, f"c{n}"))
                for session in sessions
                for n in range(25)
            )
        )
        for session in sessions:
            record = await store.get_session(session.session_id)
            assert record is not None and record.message_count == 25
    finally:
        await store.close()


class Blocked:
    """Holds the store's writer thread inside a write until released, so that the writes
    made meanwhile wait for it together."""

    def __init__(self, store: SQLiteStore) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.done = asyncio.ensure_future(store._write(self._hold))

    def _hold(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        if not self.release.wait(30):
            raise TimeoutError("never released")

    async def __aenter__(self) -> Blocked:
        entered = await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 30)
        assert entered, "the writer thread never took the blocking write"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.done


async def open_store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "chatify.db", threads=2)
    await store.open()
    return store


async def settled(tasks: list[asyncio.Task[None]]) -> None:
    """Lets the tasks run until each has handed its write to the writer thread."""
    for _ in range(5):
        await asyncio.sleep(0)
    assert not any(task.done() for task in tasks), "a write finished while the writer was held"


async def test_a_read_is_answered_while_writes_wait_for_the_writer(tmp_path: Path) -> None:
    # A turn's claim is a read: it must not wait behind a queue of writes (1,000 sessions
    # starting at once held every pool thread and delayed their streams' first deltas).
    store = await open_store(tmp_path)
    try:
        known = make_session("u0")
        await store.create_session(known)
        async with Blocked(store):
            writes = [
                asyncio.create_task(store.create_session(make_session(f"u{n}")))
                for n in range(1, 9)
            ]
            await settled(writes)
            read = await asyncio.wait_for(store.get_session(known.session_id), 30)
            assert read is not None and read.session_id == known.session_id
            assert not any(task.done() for task in writes)
        await asyncio.gather(*writes)
    finally:
        await store.close()


async def test_writes_waiting_together_share_one_commit(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        sessions = [make_session(f"u{n}") for n in range(20)]
        async with Blocked(store):
            before = store.commits
            writes = [asyncio.create_task(store.create_session(s)) for s in sessions]
            await settled(writes)
        await asyncio.gather(*writes)
        assert store.commits - before <= 2  # the held write's own, and one for all twenty
        for session in sessions:
            assert await store.get_session(session.session_id) is not None
    finally:
        await store.close()


async def test_a_failing_write_in_a_group_is_undone_alone(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    first, failing, last = make_session("u1"), make_session("u2"), make_session("u3")

    def half_then_fail(conn: sqlite3.Connection) -> None:
        with transaction(conn):
            conn.execute(
                "UPDATE sessions SET title = 'half' WHERE session_id = ?", (first.session_id,)
            )
            raise ValueError("this write fails after writing")

    try:
        async with Blocked(store):
            writes = [
                asyncio.create_task(store.create_session(first)),
                asyncio.create_task(store._write(half_then_fail)),
                asyncio.create_task(store.create_session(last)),
            ]
            await settled(writes)
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], ValueError)
        stored_first = await store.get_session(first.session_id)
        assert stored_first is not None and stored_first.title is None
        assert await store.get_session(last.session_id) is not None
        assert await store.get_session(failing.session_id) is None
    finally:
        await store.close()


async def test_closing_commits_the_writes_still_waiting(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    sessions = [make_session(f"u{n}") for n in range(5)]
    blocked = Blocked(store)
    async with blocked:
        writes = [asyncio.create_task(store.create_session(s)) for s in sessions]
        await settled(writes)
        closing = asyncio.create_task(store.close())
        await settled([closing])
    await asyncio.gather(*writes)
    await closing
    reopened = await open_store(tmp_path)
    try:
        for session in sessions:
            assert await reopened.get_session(session.session_id) is not None
    finally:
        await reopened.close()


async def test_a_writer_without_its_connection_fails_each_write_and_serves_once_it_has_one(
    tmp_path: Path,
) -> None:
    # The writer thread opens its connection itself: when that fails (a full disk, a file
    # it may not open), each write must get the error, not wait for ever.
    good = SQLiteStore(tmp_path / "chatify.db", threads=1)
    await good.open()
    await good.close()
    attempts = 0

    def connect() -> sqlite3.Connection:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise sqlite3.OperationalError("unable to open database file")
        return sqlite3.connect(
            tmp_path / "chatify.db",
            isolation_level=None,
            check_same_thread=False,
            factory=PoolConnection,
        )

    writer = GroupCommit(connect, threading.Lock())
    try:
        with pytest.raises(sqlite3.OperationalError):
            await asyncio.wait_for(writer.submit(lambda conn: None), 30)
        done = await asyncio.wait_for(
            writer.submit(lambda conn: conn.execute("SELECT 1").fetchone()[0]), 30
        )
        assert done == 1
    finally:
        await asyncio.get_running_loop().run_in_executor(None, writer.stop)


async def test_workers_starting_together_on_a_new_file_all_start(tmp_path: Path) -> None:
    # Several worker processes (WEB_CONCURRENCY > 1) open the same new file at once, and each
    # adds the columns it finds missing: two that both found one missing both added it, and
    # the second failed its start ("duplicate column name"), stopping the whole service.
    # Stores of their own here, each with its own connections, meet in SQLite as processes do.
    for attempt in range(8):
        stores = [SQLiteStore(tmp_path / f"new-{attempt}.db", threads=1) for _ in range(4)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
        finally:
            await asyncio.gather(*(store.close() for store in stores))
        with sqlite3.connect(tmp_path / f"new-{attempt}.db") as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(template_stats)")}
        assert "cost_micros" in columns
