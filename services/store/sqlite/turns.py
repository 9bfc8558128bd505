"""The SQLite store's turns: both messages, ``message_count``, ``last_activity`` and the
turn's usage in one ``BEGIN IMMEDIATE`` transaction, whose seqs it takes itself; the unique
(session, client_message_id) index keeps a turn from being stored twice, also across
processes sharing the file.
"""

from __future__ import annotations

import sqlite3

from services.core.errors import SessionEnded, SessionNotFound
from services.core.records import (
    NewTurn,
    SessionRecord,
    StoredMessage,
    StoredTurn,
    TurnClaim,
    preview_of,
)
from services.store.sqlite import usage_rows
from services.store.sqlite.connection import SQLiteConnection, transaction
from services.store.sqlite.schema import MESSAGE_COLUMNS, MESSAGE_MARKS, message_of, message_row


class SQLiteTurns(SQLiteConnection):
    """``TurnStore`` on the ``messages`` table: a turn is one transaction."""

    async def load_messages(
        self, session_id: str, *, limit: int, before: int | None = None
    ) -> list[StoredMessage]:
        """Newest ``limit`` messages below ``before``, returned oldest first."""
        if limit <= 0:
            return []
        sql = (
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq < ? "
            "ORDER BY seq DESC LIMIT ?"
        )
        upper = before if before is not None else 2**62
        rows = await self._run(
            lambda conn: conn.execute(sql, (session_id, upper, limit)).fetchall()
        )
        return [message_of(row) for row in reversed(rows)]

    async def load_messages_after(
        self, session_id: str, *, after: int, limit: int
    ) -> list[StoredMessage]:
        """Oldest ``limit`` messages above ``after``."""
        sql = (
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?"
        )
        rows = await self._run(
            lambda conn: conn.execute(sql, (session_id, after, limit)).fetchall()
        )
        return [message_of(row) for row in rows]

    async def find_turn(self, session_id: str, client_message_id: str) -> StoredTurn | None:
        """The stored turn started by this client message id."""
        return await self._run(lambda conn: _find_turn(conn, session_id, client_message_id))

    async def load_client_ids(self, session_id: str) -> list[str]:
        """From the messages' unique (session, client_message_id) index."""

        def load(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT client_message_id FROM messages "
                "WHERE session_id = ? AND client_message_id IS NOT NULL AND role = 'user'",
                (session_id,),
            ).fetchall()
            return [row[0] for row in rows]

        return await self._run(load)

    async def claim_turn(
        self,
        session: SessionRecord,
        client_message_id: str | None,
        *,
        known_below: int | None = None,
    ) -> TurnClaim | StoredTurn:
        """Seqs are taken inside the write's transaction. The id is read (a local index
        lookup, beside the model call) whatever the caller knows: other processes may share
        the file, and only the write's transaction is exact."""
        if client_message_id is None:
            return TurnClaim()
        stored = await self.find_turn(session.session_id, client_message_id)
        return stored if stored is not None else TurnClaim()

    async def write_turn(
        self, session: SessionRecord, claim: TurnClaim, turn: NewTurn
    ) -> StoredTurn:
        """Both messages and the counters in one transaction, on the seqs it takes itself
        (the claim reserved nothing); a turn this ``client_message_id`` stored meanwhile is
        returned instead."""
        session_id = session.session_id

        def write(conn: sqlite3.Connection) -> StoredTurn:
            with transaction(conn):
                if turn.client_message_id is not None:
                    existing = _find_turn(conn, session_id, turn.client_message_id)
                    if existing is not None:
                        return existing
                row = conn.execute(
                    "SELECT status, message_count FROM sessions WHERE session_id = ?", (session_id,)
                ).fetchone()
                if row is None:
                    raise SessionNotFound(session_id)
                if row["status"] != "active":
                    raise SessionEnded(session_id, row["status"])
                user = StoredMessage(
                    row["message_count"] * 2, "user", turn.user_text, turn.user_at,
                    turn.client_message_id, attachments=turn.attachments,
                )  # fmt: skip
                reply = StoredMessage(
                    user.seq + 1, "assistant", turn.reply, turn.reply_at, None, turn.usage,
                    turn.provider, turn.model, turn.tools, turn.finish_reason,
                )  # fmt: skip
                conn.executemany(
                    f"INSERT INTO messages (session_id, {MESSAGE_COLUMNS}) "
                    f"VALUES ({MESSAGE_MARKS})",
                    [message_row(session_id, user), message_row(session_id, reply)],
                )
                conn.execute(
                    "UPDATE sessions SET message_count = message_count + 1, last_activity = ?, "
                    "preview = ? WHERE session_id = ?",
                    (turn.reply_at, preview_of(turn.reply), session_id),
                )
                usage_rows.add(
                    conn, user_id=session.user_id, session_id=session_id, usage=turn.usage,
                    at=turn.reply_at, turns=1, target=turn.served_by,
                )  # fmt: skip
                return StoredTurn(user, reply)

        return await self._write(write)

    async def release_turn(
        self, session: SessionRecord, claim: TurnClaim, client_message_id: str | None
    ) -> None:
        """Nothing was reserved."""


def _find_turn(
    conn: sqlite3.Connection, session_id: str, client_message_id: str
) -> StoredTurn | None:
    rows = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq IN ("
        "SELECT seq FROM messages WHERE session_id = ? AND client_message_id = ? AND role = 'user'"
        " UNION SELECT seq + 1 FROM messages"
        " WHERE session_id = ? AND client_message_id = ? AND role = 'user') ORDER BY seq",
        (session_id, session_id, client_message_id, session_id, client_message_id),
    ).fetchall()
    if len(rows) != 2:
        return None
    return StoredTurn(message_of(rows[0]), message_of(rows[1]), created=False)
