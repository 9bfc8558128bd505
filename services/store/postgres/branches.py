"""The PostgreSQL store's branches: a regenerated or edited turn replaces the active messages
from a seq on in one transaction that first locks the session row (as a turn's write does, so
the two queue behind each other), the replaced rows moved to ``message_variants`` (one row per
variant: its messages as a JSONB array, named as ``messages``' columns), from where
``select_variant`` swaps them back.
"""

from __future__ import annotations

import json
from typing import Any

from services.core.branch_records import NewBranch, Variant
from services.core.errors import HistoryChanged, SessionEnded, SessionNotFound
from services.core.records import (
    SessionRecord,
    StoredMessage,
    StoredTurn,
    preview_of,
)
from services.store.postgres import usage_rows
from services.store.postgres.connection import PostgresConnection
from services.store.postgres.rows import (
    MESSAGE_COLUMNS,
    MESSAGE_VALUES,
    message_of,
    message_values,
)

_INSERT = f"INSERT INTO messages (session_id, {MESSAGE_COLUMNS}) VALUES ({MESSAGE_VALUES})"


class PostgresBranches(PostgresConnection):
    """``BranchStore`` on the ``messages`` and ``message_variants`` tables."""

    async def write_branch(self, session: SessionRecord, branch: NewBranch) -> StoredTurn:
        """One transaction: the old tail to a variant, the new messages, the counters."""
        sid, turn = session.session_id, branch.turn
        async with self._transaction() as conn:
            summary_seq = _check_active(await _lock(conn, sid), sid, branch.next_seq)
            if branch.seq % 2:  # a regenerate: the user message stays
                row = await conn.fetchrow(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1 AND seq = $2",
                    sid,
                    branch.seq - 1,
                )
                if row is None:
                    raise HistoryChanged("The message to answer again is gone")
                user, reply = branch.messages(message_of(row))
            else:
                user, reply = branch.messages(None)
            number = await conn.fetchval(
                "SELECT coalesce(max(variant), 0) + 1 FROM message_variants "
                "WHERE session_id = $1 AND seq = $2",
                sid,
                branch.seq,
            )
            await _move_tail(conn, sid, branch.seq, number, at=turn.reply_at)
            new = [reply] if branch.seq % 2 else [user, reply]
            await conn.executemany(_INSERT, [message_values(sid, m) for m in new])
            # A memory stored since the caller looked that covers what is replaced goes too.
            reset = branch.reset_memory or summary_seq > branch.seq
            await _set_counters(conn, sid, reply, reset_memory=reset)
            await usage_rows.add(
                conn, session_id=sid, user_id=session.user_id, usage=turn.usage,
                at=turn.reply_at, target=turn.served_by, turns=1,
            )  # fmt: skip
        return StoredTurn(user, reply)

    async def load_variants(self, session_id: str, seq: int) -> list[Variant]:
        """Every variant row of the seq."""
        rows = await self._fetch(
            "SELECT variant, created_at, messages FROM message_variants "
            "WHERE session_id = $1 AND seq = $2 ORDER BY variant",
            session_id,
            seq,
        )
        return [
            Variant(seq, row["variant"], _messages_of(row["messages"]), row["created_at"])
            for row in rows
        ]

    async def select_variant(
        self, session: SessionRecord, seq: int, number: int, *, at: str
    ) -> list[StoredMessage] | None:
        """One transaction: the variant's row taken out, the active tail moved to a row of
        the same number, the variant's messages inserted."""
        sid = session.session_id
        async with self._transaction() as conn:
            locked = await _lock(conn, sid)
            raw = await conn.fetchval(
                "DELETE FROM message_variants WHERE session_id = $1 AND seq = $2 "
                "AND variant = $3 RETURNING messages",
                sid,
                seq,
                number,
            )
            if raw is None:
                return None
            summary_seq = _check_active(locked, sid, None)
            chosen = list(_messages_of(raw))
            await _move_tail(conn, sid, seq, number, at=at)
            await conn.executemany(_INSERT, [message_values(sid, m) for m in chosen])
            await _set_counters(conn, sid, chosen[-1], reset_memory=summary_seq > seq)
        return chosen


async def _lock(conn: Any, sid: str) -> Any:
    """The session row, locked until the transaction ends (None: no such session): the lock
    a turn's ``UPDATE`` takes, so either waits for the other; not one that waits for a
    foreign key's check (inserting a session's messages)."""
    return await conn.fetchrow(
        "SELECT status, message_count, summary_seq FROM sessions WHERE session_id = $1 "
        "FOR NO KEY UPDATE",
        sid,
    )


def _check_active(row: Any, sid: str, next_seq: int | None) -> int:
    """The locked row's ``summary_seq``; raises unless the session is active (and, given
    ``next_seq``, its branch ends there)."""
    if row is None:
        raise SessionNotFound(sid)
    if row["status"] != "active":
        raise SessionEnded(sid, row["status"])
    if next_seq is not None and row["message_count"] * 2 != next_seq:
        raise HistoryChanged("The session's history changed meanwhile; try again")
    summary_seq: int = row["summary_seq"]
    return summary_seq


async def _move_tail(conn: Any, sid: str, seq: int, number: int, *, at: str) -> None:
    """The active messages from ``seq`` on, out of ``messages`` into variant ``number``,
    in one statement."""
    moved = await conn.fetchval(
        "WITH tail AS (DELETE FROM messages WHERE session_id = $1 AND seq >= $2 "
        f"RETURNING {MESSAGE_COLUMNS}), "
        "kept AS (INSERT INTO message_variants (session_id, seq, variant, created_at, messages) "
        "SELECT $1, $2, $3, $4, jsonb_agg(to_jsonb(tail) ORDER BY seq) FROM tail "
        "HAVING count(*) > 0 RETURNING 1) "
        "SELECT count(*) FROM kept",
        sid,
        seq,
        number,
        at,
    )
    if not moved:
        raise HistoryChanged("The session's history changed meanwhile; try again")


async def _set_counters(conn: Any, sid: str, last: StoredMessage, *, reset_memory: bool) -> None:
    """``message_count`` and the rest from the branch's last message (a reply)."""
    memory = ", summary = NULL, summary_seq = 0" if reset_memory else ""
    await conn.execute(
        f"UPDATE sessions SET message_count = $2, last_activity = $3, preview = $4{memory} "
        "WHERE session_id = $1",
        sid,
        last.seq // 2 + 1,
        last.timestamp,
        preview_of(last.content),
    )


def _messages_of(raw: Any) -> tuple[StoredMessage, ...]:
    docs: list[dict[str, Any]] = json.loads(raw) if isinstance(raw, str) else raw
    return tuple(message_of(doc) for doc in docs)
