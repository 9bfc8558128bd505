"""The PostgreSQL store's sessions: one row each in ``sessions``, with its usage totals."""

from __future__ import annotations

import json
from typing import Any

from services.core.errors import active_limit
from services.core.records import CallUsage, SessionCursor, SessionRecord, SessionStatus
from services.store.postgres import usage_rows
from services.store.postgres.connection import PostgresConnection
from services.store.postgres.rows import SELECT_TOTALS, SESSION_COLUMNS, fallbacks_json, session_of

USER_LOCK_CLASS = 7001  # advisory locks on one user: (this class, hashtext(user_id))
_COUNT = SESSION_COLUMNS.count(",") + 1
_INSERT = (
    f"INSERT INTO sessions ({SESSION_COLUMNS}) "
    f"VALUES ({', '.join(f'${n}' for n in range(1, _COUNT + 1))})"
)
_SELECT_ONE = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"
_LOCK_USER = f"SELECT pg_advisory_xact_lock({USER_LOCK_CLASS}, hashtext($1))"
_ACTIVE = (
    "SELECT count(*) FROM (SELECT 1 FROM sessions WHERE user_id = $1 AND status = 'active' "
    "LIMIT $2) AS active"
)


class PostgresSessions(PostgresConnection):
    """``SessionStore`` on the ``sessions`` table."""

    async def create_session(
        self, session: SessionRecord, *, max_active: int | None = None
    ) -> None:
        """Insert the session row, the user's active sessions counted in its transaction
        under a lock on the user (exact across replicas)."""
        s, p = session, session.sampling
        async with self._transaction() as conn:
            if max_active is not None:
                await conn.execute(_LOCK_USER, s.user_id)
                if await conn.fetchval(_ACTIVE, s.user_id, max_active) >= max_active:
                    raise active_limit(s.user_id, max_active)
            await conn.execute(
                _INSERT,
                s.session_id, s.user_id, s.template_id, s.status, s.created_at, s.last_activity,
                s.ended_at, s.message_count, s.system_prompt, p.model, p.temperature,
                p.max_tokens, p.presence_penalty, p.frequency_penalty, s.context_messages,
                s.title, s.summary, s.template_version, s.preview, s.welcome_message,
                s.context_tokens, s.memory_mode, s.summary_seq, p.provider,
                fallbacks_json(p.fallbacks), json.dumps(list(p.tools)) if p.tools else None,
            )  # fmt: skip

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session row (with its usage totals and their shares by target), or None."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {SESSION_COLUMNS}, {SELECT_TOTALS} FROM sessions WHERE session_id = $1",
                session_id,
            )
            if row is None:
                return None
            return session_of(row, await usage_rows.session_shares(conn, session_id))

    async def end_session(self, session_id: str, *, at: str) -> SessionRecord | None:
        """Set status ended once; later calls leave it as it is."""
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE sessions SET status = 'ended', ended_at = $2 "
                "WHERE session_id = $1 AND status != 'ended'",
                session_id,
                at,
            )
            row = await conn.fetchrow(_SELECT_ONE, session_id)
        return session_of(row) if row is not None else None

    async def list_user_sessions(
        self,
        user_id: str,
        *,
        status: SessionStatus | None,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """Most recent activity first, optionally only one status, below a cursor: one range
        of the (user_id, last_activity, session_id) index, read backwards."""
        sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1"
        params: list[Any] = [user_id]
        if status is not None:
            params.append(status)
            sql += f" AND status = ${len(params)}"
        if before is not None:
            params += [before.last_activity, before.session_id]
            sql += f" AND (last_activity, session_id) < (${len(params) - 1}, ${len(params)})"
        params.append(limit)
        sql += f" ORDER BY last_activity DESC, session_id DESC LIMIT ${len(params)}"
        return [session_of(row) for row in await self._fetch(sql, *params)]

    async def set_title(
        self,
        session_id: str,
        title: str | None,
        *,
        only_if_unset: bool = False,
        usage: CallUsage | None = None,
    ) -> SessionRecord | None:
        """One conditional update, and the call's counts, in one transaction."""
        sql = "UPDATE sessions SET title = $2 WHERE session_id = $1"
        async with self._transaction() as conn:
            await conn.execute(sql + (" AND title IS NULL" if only_if_unset else ""),
                               session_id, title)  # fmt: skip
            if usage is not None:
                await usage_rows.add_call(conn, session_id, usage)
            row = await conn.fetchrow(_SELECT_ONE, session_id)
        return session_of(row) if row is not None else None

    async def expire_idle_sessions(self, *, idle_before: str, at: str) -> list[str]:
        """Active sessions idle since before ``idle_before`` become expired."""
        rows = await self._fetch(
            "UPDATE sessions SET status = 'expired', ended_at = $2 "
            "WHERE status = 'active' AND last_activity < $1 RETURNING session_id",
            idle_before,
            at,
        )
        return [row[0] for row in rows]
