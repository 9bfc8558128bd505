"""The PostgreSQL store's turns: a whole turn is ONE statement, so one round trip and one
transaction after the reply: the session row updated (``message_count``, ``last_activity``,
the preview, the usage totals), both messages inserted on the seqs that update yields, and the
usage counted on the user's day and the target's shares (``usage_rows``), all or nothing.

Concurrent writers to one session queue on the session row's lock that the ``UPDATE`` takes,
and each reads the ``message_count`` the one before it committed, so seqs stay contiguous
across replicas. The unique index on (session_id, client_message_id) stores a turn once: a
second write of an id fails on it, whole, and gets the stored turn back.

Before the reply, the claim is one index probe for a ``client_message_id`` (sent beside the
model's request, never ahead of it) and nothing at all for a turn without one.
"""

from __future__ import annotations

import asyncpg

from services.core.attachment_records import attachments_json
from services.core.errors import SessionEnded, SessionNotFound, StoreUnavailable
from services.core.records import (
    NewTurn,
    SessionRecord,
    StoredMessage,
    StoredTurn,
    TurnClaim,
    preview_of,
)
from services.core.usage_counts import counts_of
from services.store.postgres import usage_rows
from services.store.postgres.connection import PostgresConnection
from services.store.postgres.rows import MESSAGE_COLUMNS, message_of, tools_json, usage_json

CLIENT_ID_INDEX = "messages_by_client_id"
_MESSAGE_NAMES = f"session_id, {MESSAGE_COLUMNS}"
# $1–$12 as ``usage_rows.counting`` has them; then the turn's own values.
_WRITE_TURN = (
    "WITH turn AS ("
    "UPDATE sessions SET message_count = message_count + 1, last_activity = $17::text, "
    f"preview = $22::text, {usage_rows.add_to_session(6)} "
    "WHERE session_id = $1 AND status = 'active' RETURNING message_count - 1 AS n), "
    f"written AS (INSERT INTO messages ({_MESSAGE_NAMES}) "
    "SELECT $1, n * 2, 'user', $14::text, $15::text, $13::text, NULL::jsonb, NULL::text, "
    "NULL::text, NULL::jsonb, NULL::text, $24::jsonb FROM turn UNION ALL "
    "SELECT $1, n * 2 + 1, 'assistant', $16::text, $17::text, NULL::text, $18::jsonb, "
    "$19::text, $20::text, $21::jsonb, $23::text, NULL::jsonb FROM turn), "
    f"{usage_rows.counting(session_rows='turn', day_rows='turn')} "
    "SELECT (SELECT n FROM turn) AS n, (SELECT status FROM sessions WHERE session_id = $1) "
    "AS status"
)
_FIND_TURN = (
    f"WITH asked AS (SELECT seq FROM messages WHERE session_id = $1 "
    "AND client_message_id = $2 AND role = 'user') "
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1 "
    "AND seq IN (SELECT seq FROM asked UNION ALL SELECT seq + 1 FROM asked) ORDER BY seq"
)


class PostgresTurns(PostgresConnection):
    """``TurnStore`` on the ``messages`` table: a turn is one statement."""

    async def load_messages(
        self, session_id: str, *, limit: int, before: int | None = None
    ) -> list[StoredMessage]:
        """Newest ``limit`` messages below ``before``, returned oldest first."""
        if limit <= 0:
            return []
        rows = await self._fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1 AND seq < $2 "
            "ORDER BY seq DESC LIMIT $3",
            session_id,
            before if before is not None else 2**31 - 1,
            limit,
        )
        return [message_of(row) for row in reversed(rows)]

    async def load_messages_after(
        self, session_id: str, *, after: int, limit: int
    ) -> list[StoredMessage]:
        """Oldest ``limit`` messages above ``after``."""
        rows = await self._fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3",
            session_id,
            after,
            limit,
        )
        return [message_of(row) for row in rows]

    async def find_turn(self, session_id: str, client_message_id: str) -> StoredTurn | None:
        """The stored turn started by this client message id."""
        return _turn_of(await self._fetch(_FIND_TURN, session_id, client_message_id))

    async def load_client_ids(self, session_id: str) -> list[str]:
        """From the unique (session_id, client_message_id) index."""
        rows = await self._fetch(
            "SELECT client_message_id FROM messages WHERE session_id = $1 "
            "AND client_message_id IS NOT NULL AND role = 'user'",
            session_id,
        )
        return [row[0] for row in rows]

    async def claim_turn(
        self,
        session: SessionRecord,
        client_message_id: str | None,
        *,
        known_below: int | None = None,
    ) -> TurnClaim | StoredTurn:
        """Seqs are taken by the write. An id is probed for on the unique index (another
        replica may have stored it), whatever the caller knows; no id, no round trip."""
        if client_message_id is None:
            return TurnClaim()
        stored = await self.find_turn(session.session_id, client_message_id)
        return stored if stored is not None else TurnClaim()

    async def write_turn(
        self, session: SessionRecord, claim: TurnClaim, turn: NewTurn
    ) -> StoredTurn:
        """The turn's one statement; the turn this ``client_message_id`` stored meanwhile
        instead, when the unique index refuses it."""
        sid, cmid = session.session_id, turn.client_message_id
        counted = usage_rows.counted_args(
            session_id=sid, user_id=session.user_id, at=turn.reply_at, target=turn.served_by,
            counts=counts_of(turn.usage, turns=1),
        )  # fmt: skip
        async with self._connection() as conn:
            try:
                row = await conn.fetchrow(
                    _WRITE_TURN, *counted, cmid, turn.user_text, turn.user_at, turn.reply,
                    turn.reply_at, usage_json(turn.usage), turn.provider, turn.model,
                    tools_json(turn.tools), preview_of(turn.reply), turn.finish_reason,
                    attachments_json(turn.attachments),
                )  # fmt: skip
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != CLIENT_ID_INDEX or cmid is None:
                    raise
                stored = _turn_of(await conn.fetch(_FIND_TURN, sid, cmid))
                if stored is None:  # refused for an id whose turn is gone again: erased
                    raise StoreUnavailable("The session changed meanwhile; try again") from exc
                return stored
        if row["n"] is None:
            if row["status"] is None:
                raise SessionNotFound(sid)
            raise SessionEnded(sid, row["status"])
        seq = int(row["n"]) * 2
        return StoredTurn(
            StoredMessage(
                seq, "user", turn.user_text, turn.user_at, cmid, attachments=turn.attachments
            ),
            StoredMessage(
                seq + 1, "assistant", turn.reply, turn.reply_at, None, turn.usage, turn.provider,
                turn.model, turn.tools, turn.finish_reason,
            ),
        )  # fmt: skip

    async def release_turn(
        self, session: SessionRecord, claim: TurnClaim, client_message_id: str | None
    ) -> None:
        """Nothing was reserved."""


def _turn_of(rows: list[asyncpg.Record]) -> StoredTurn | None:
    if len(rows) != 2:
        return None
    return StoredTurn(message_of(rows[0]), message_of(rows[1]), created=False)
