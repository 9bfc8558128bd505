"""The SQLite store's rolling memory: the ``summary`` and ``summary_seq`` columns of a session
row, written conditionally with the summary call's counts in one transaction."""

from __future__ import annotations

import sqlite3

from services.core.records import CallUsage
from services.store.sqlite import usage_rows
from services.store.sqlite.connection import SQLiteConnection, transaction


class SQLiteMemory(SQLiteConnection):
    """``MemoryStore`` on the session row."""

    async def set_memory(
        self,
        session_id: str,
        text: str,
        *,
        seq: int,
        expected_seq: int,
        at: str,
        usage: CallUsage | None = None,
    ) -> bool:
        """One conditional update of the session row, and the call's counts, in one
        transaction (one commit, so one fsync, per fold)."""

        def update(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                cursor = conn.execute(
                    "UPDATE sessions SET summary = ?, summary_seq = ? "
                    "WHERE session_id = ? AND summary_seq = ?",
                    (text, seq, session_id, expected_seq),
                )
                if usage is not None:
                    usage_rows.add_call(conn, session_id, usage)
            return cursor.rowcount == 1

        return await self._write(update)
