"""The PostgreSQL store's side of data rights: a user's sessions erased, with every message,
variant and usage share (``ON DELETE CASCADE``), in one transaction."""

from __future__ import annotations

from services.store.postgres.connection import PostgresConnection


class PostgresUserData(PostgresConnection):
    """``UserDataStore``: the session rows deleted, the rest with them."""

    async def delete_sessions(self, user_id: str, session_ids: list[str] | None = None) -> int:
        """One statement; the user's days of usage are kept, as on the other stores. The
        deleted rows' space is reclaimed by (auto)vacuum, docs/operations.md."""
        if session_ids is None:
            rows = await self._fetch(
                "DELETE FROM sessions WHERE user_id = $1 RETURNING session_id", user_id
            )
        else:
            rows = await self._fetch(
                "DELETE FROM sessions WHERE user_id = $1 AND session_id = ANY($2::text[]) "
                "RETURNING session_id",
                user_id,
                session_ids,
            )
        return len(rows)
