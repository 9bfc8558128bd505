"""The SQLite store's branches: a regenerated or edited turn replaces the active messages
from a seq on in one ``BEGIN IMMEDIATE`` transaction, the replaced rows moved to
``message_variants`` (one row per variant: its messages as JSON, named as ``messages``'
columns), from where ``select_variant`` swaps them back.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from services.core.branch_records import NewBranch, Variant
from services.core.errors import HistoryChanged, SessionEnded, SessionNotFound
from services.core.records import (
    SessionRecord,
    StoredMessage,
    StoredTurn,
    preview_of,
)
from services.store.sqlite import usage_rows
from services.store.sqlite.connection import SQLiteConnection, transaction
from services.store.sqlite.schema import MESSAGE_COLUMNS, MESSAGE_MARKS, message_of, message_row

_NAMES = ("session_id", *MESSAGE_COLUMNS.split(", "))


class SQLiteBranches(SQLiteConnection):
    """``BranchStore`` on the ``messages`` and ``message_variants`` tables."""

    async def write_branch(self, session: SessionRecord, branch: NewBranch) -> StoredTurn:
        """One transaction: the old tail to a variant, the new messages, the counters."""
        sid, turn = session.session_id, branch.turn

        def write(conn: sqlite3.Connection) -> StoredTurn:
            with transaction(conn):
                _check_active(conn, sid, branch.next_seq)
                if branch.seq % 2:  # a regenerate: the user message stays
                    row = conn.execute(
                        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq = ?",
                        (sid, branch.seq - 1),
                    ).fetchone()
                    if row is None:
                        raise HistoryChanged("The message to answer again is gone")
                    user, reply = branch.messages(message_of(row))
                else:
                    user, reply = branch.messages(None)
                new = [reply] if branch.seq % 2 else [user, reply]
                _move_tail(
                    conn, sid, branch.seq, _next_number(conn, sid, branch.seq), at=turn.reply_at
                )
                _insert(conn, sid, new)
                # A memory stored since the caller looked (a fold landing meanwhile) that
                # covers what is replaced goes as well.
                covered = conn.execute(
                    "SELECT summary_seq FROM sessions WHERE session_id = ?", (sid,)
                ).fetchone()[0]
                reset = branch.reset_memory or covered > branch.seq
                _set_counters(conn, sid, reply, reset_memory=reset)
                usage_rows.add(
                    conn, user_id=session.user_id, session_id=sid, usage=turn.usage,
                    at=turn.reply_at, turns=1, target=turn.served_by,
                )  # fmt: skip
                return StoredTurn(user, reply)

        return await self._write(write)

    async def load_variants(self, session_id: str, seq: int) -> list[Variant]:
        """Every variant row of the seq."""
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT variant, created_at, messages FROM message_variants "
                "WHERE session_id = ? AND seq = ? ORDER BY variant",
                (session_id, seq),
            ).fetchall()
        )
        return [
            Variant(seq, row["variant"], _messages_of(row["messages"]), row["created_at"])
            for row in rows
        ]

    async def select_variant(
        self, session: SessionRecord, seq: int, number: int, *, at: str
    ) -> list[StoredMessage] | None:
        """One transaction: the variant's row read and deleted, the active tail moved to
        a row of the same number, the variant's messages inserted."""
        sid = session.session_id

        def swap(conn: sqlite3.Connection) -> list[StoredMessage] | None:
            with transaction(conn):
                row = conn.execute(
                    "SELECT messages FROM message_variants "
                    "WHERE session_id = ? AND seq = ? AND variant = ?",
                    (sid, seq, number),
                ).fetchone()
                if row is None:
                    return None
                _check_active(conn, sid, None)
                chosen = list(_messages_of(row["messages"]))
                conn.execute(
                    "DELETE FROM message_variants WHERE session_id = ? AND seq = ? AND variant = ?",
                    (sid, seq, number),
                )
                _move_tail(conn, sid, seq, number, at=at)
                _insert(conn, sid, chosen)
                summary_seq = conn.execute(
                    "SELECT summary_seq FROM sessions WHERE session_id = ?", (sid,)
                ).fetchone()[0]
                _set_counters(conn, sid, chosen[-1], reset_memory=summary_seq > seq)
                return chosen

        return await self._write(swap)


def _check_active(conn: sqlite3.Connection, sid: str, next_seq: int | None) -> None:
    row = conn.execute(
        "SELECT status, message_count FROM sessions WHERE session_id = ?", (sid,)
    ).fetchone()
    if row is None:
        raise SessionNotFound(sid)
    if row["status"] != "active":
        raise SessionEnded(sid, row["status"])
    if next_seq is not None and row["message_count"] * 2 != next_seq:
        raise HistoryChanged("The session's history changed meanwhile; try again")


def _next_number(conn: sqlite3.Connection, sid: str, seq: int) -> int:
    row = conn.execute(
        "SELECT MAX(variant) FROM message_variants WHERE session_id = ? AND seq = ?", (sid, seq)
    ).fetchone()
    return int(row[0] or 0) + 1


def _move_tail(conn: sqlite3.Connection, sid: str, seq: int, number: int, *, at: str) -> None:
    """The active messages from ``seq`` on, out of ``messages`` into variant ``number``."""
    rows = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq >= ? ORDER BY seq",
        (sid, seq),
    ).fetchall()
    if not rows:
        raise HistoryChanged("The session's history changed meanwhile; try again")
    docs = [dict(zip(_NAMES[1:], tuple(row), strict=True)) for row in rows]
    conn.execute(
        "INSERT INTO message_variants (session_id, seq, variant, created_at, messages) "
        "VALUES (?, ?, ?, ?, ?)",
        (sid, seq, number, at, json.dumps(docs)),
    )
    conn.execute("DELETE FROM messages WHERE session_id = ? AND seq >= ?", (sid, seq))


def _insert(conn: sqlite3.Connection, sid: str, messages: list[StoredMessage]) -> None:
    conn.executemany(
        f"INSERT INTO messages (session_id, {MESSAGE_COLUMNS}) VALUES ({MESSAGE_MARKS})",
        [message_row(sid, m) for m in messages],
    )


def _set_counters(
    conn: sqlite3.Connection, sid: str, last: StoredMessage, *, reset_memory: bool
) -> None:
    """``message_count`` and the rest from the branch's last message (a reply)."""
    memory = ", summary = NULL, summary_seq = 0" if reset_memory else ""
    conn.execute(
        f"UPDATE sessions SET message_count = ?, last_activity = ?, preview = ?{memory} "
        "WHERE session_id = ?",
        (last.seq // 2 + 1, last.timestamp, preview_of(last.content), sid),
    )


def _messages_of(text: str) -> tuple[StoredMessage, ...]:
    docs: list[dict[str, Any]] = json.loads(text)
    return tuple(message_of(doc) for doc in docs)
