"""The SQLite store's sessions: one row each in ``sessions``, with its usage totals."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from services.core.errors import active_limit
from services.core.records import CallUsage, SessionCursor, SessionRecord, SessionStatus
from services.store.sqlite import usage_rows
from services.store.sqlite.connection import SQLiteConnection, transaction
from services.store.sqlite.schema import SESSION_COLUMNS, fallbacks_json, session_of

_ACTIVE = (
    "SELECT count(*) FROM (SELECT 1 FROM sessions WHERE user_id = ? AND status = 'active' LIMIT ?)"
)


class SQLiteSessions(SQLiteConnection):
    """``SessionStore`` on the ``sessions`` table."""

    async def create_session(
        self, session: SessionRecord, *, max_active: int | None = None
    ) -> None:
        """Insert the session row, the user's active sessions counted in its transaction
        (exact: this process's writes are one at a time, other processes wait for the file)."""
        s, p = session, session.sampling
        row = (
            s.session_id, s.user_id, s.template_id, s.status, s.created_at, s.last_activity,
            s.ended_at, s.message_count, s.system_prompt, p.model, p.temperature, p.max_tokens,
            p.presence_penalty, p.frequency_penalty, s.context_messages, s.title, s.summary,
            s.template_version, s.preview, s.welcome_message, s.context_tokens, s.memory_mode,
            s.summary_seq, p.provider, fallbacks_json(p.fallbacks),
            json.dumps(list(p.tools)) if p.tools else None,
        )  # fmt: skip
        sql = f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({', '.join('?' * len(row))})"

        def insert(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if max_active is not None:
                    active = conn.execute(_ACTIVE, (session.user_id, max_active)).fetchone()[0]
                    if active >= max_active:
                        raise active_limit(session.user_id, max_active)
                conn.execute(sql, row)

        await self._write(insert)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session row (with its usage totals and their shares by target), or None."""
        sql = f"SELECT {SESSION_COLUMNS}, {usage_rows.SELECT_TOTALS} FROM sessions "
        sql += "WHERE session_id = ?"

        def read(conn: sqlite3.Connection) -> SessionRecord | None:
            row = conn.execute(sql, (session_id,)).fetchone()
            if row is None:
                return None
            return session_of(row, shares=usage_rows.session_shares(conn, session_id))

        return await self._run(read)

    async def end_session(self, session_id: str, *, at: str) -> SessionRecord | None:
        """Set status ended once; later calls leave it as it is."""

        def end(conn: sqlite3.Connection) -> sqlite3.Row | None:
            with transaction(conn):
                conn.execute(
                    "UPDATE sessions SET status = 'ended', ended_at = ? "
                    "WHERE session_id = ? AND status != 'ended'",
                    (at, session_id),
                )
                sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?"
                row: sqlite3.Row | None = conn.execute(sql, (session_id,)).fetchone()
                return row

        row = await self._write(end)
        return session_of(row) if row else None

    async def list_user_sessions(
        self,
        user_id: str,
        *,
        status: SessionStatus | None,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """Most recent activity first, optionally only one status, below a cursor."""
        sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?"
        params: tuple[Any, ...] = (user_id,)
        if status is not None:
            sql += " AND status = ?"
            params += (status,)
        if before is not None:
            sql += " AND (last_activity, session_id) < (?, ?)"
            params += (before.last_activity, before.session_id)
        sql += " ORDER BY last_activity DESC, session_id DESC LIMIT ?"
        rows = await self._run(lambda conn: conn.execute(sql, (*params, limit)).fetchall())
        return [session_of(row) for row in rows]

    async def set_title(
        self,
        session_id: str,
        title: str | None,
        *,
        only_if_unset: bool = False,
        usage: CallUsage | None = None,
    ) -> SessionRecord | None:
        """One conditional update, and the call's counts, in one transaction."""

        def rename(conn: sqlite3.Connection) -> sqlite3.Row | None:
            with transaction(conn):
                sql = "UPDATE sessions SET title = ? WHERE session_id = ?"
                conn.execute(sql + (" AND title IS NULL" if only_if_unset else ""),
                             (title, session_id))  # fmt: skip
                if usage is not None:
                    usage_rows.add_call(conn, session_id, usage)
                found: sqlite3.Row | None = conn.execute(
                    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
                ).fetchone()
                return found

        row = await self._write(rename)
        return session_of(row) if row else None

    async def expire_idle_sessions(self, *, idle_before: str, at: str) -> list[str]:
        """Active sessions idle since before ``idle_before`` become expired."""

        def expire(conn: sqlite3.Connection) -> list[str]:
            with transaction(conn):
                rows = conn.execute(
                    "UPDATE sessions SET status = 'expired', ended_at = ? "
                    "WHERE status = 'active' AND last_activity < ? RETURNING session_id",
                    (at, idle_before),
                ).fetchall()
            return [row[0] for row in rows]

        return await self._write(expire)
