"""The SQLite store's writers in one process take turns through a lock of their own, never
through SQLite's busy handler (which sleeps 1 to 100 ms between tries of a locked file)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.store.sqlite import SQLiteStore
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
