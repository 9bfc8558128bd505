"""The SQLite store's side of data rights: a user's sessions erased, rows and old pages."""

from __future__ import annotations

import sqlite3

from services.store.sqlite import usage_rows
from services.store.sqlite.connection import SQLiteConnection, transaction


class SQLiteUserData(SQLiteConnection):
    """``UserDataStore``: erased in one transaction, then out of the WAL too."""

    async def delete_sessions(self, user_id: str, session_ids: list[str] | None = None) -> int:
        """One transaction, then a truncating checkpoint, so the old pages leave the WAL too."""

        def delete(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                if session_ids is None:
                    rows = conn.execute(
                        "SELECT session_id FROM sessions WHERE user_id = ?", (user_id,)
                    ).fetchall()
                    targets = [row[0] for row in rows]
                else:
                    targets = session_ids
                for sid in targets:
                    conn.execute("DELETE FROM messages WHERE session_id = ?", (sid,))
                    conn.execute("DELETE FROM message_variants WHERE session_id = ?", (sid,))
                    usage_rows.erase_session(conn, sid)
                erased = sum(
                    conn.execute(
                        "DELETE FROM sessions WHERE session_id = ? AND user_id = ?", (sid, user_id)
                    ).rowcount
                    for sid in targets
                )
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return erased

        return await self._run(delete)  # not grouped: its checkpoint follows its own commit
