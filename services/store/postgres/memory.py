"""The PostgreSQL store's rolling memory: the ``summary`` and ``summary_seq`` columns of a
session row, written conditionally with the summary call's counts in one transaction."""

from __future__ import annotations

from services.core.records import CallUsage
from services.store.postgres import usage_rows
from services.store.postgres.connection import PostgresConnection


class PostgresMemory(PostgresConnection):
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
        transaction."""
        async with self._transaction() as conn:
            status = await conn.execute(
                "UPDATE sessions SET summary = $2, summary_seq = $3 "
                "WHERE session_id = $1 AND summary_seq = $4",
                session_id,
                text,
                seq,
                expected_seq,
            )
            if usage is not None:
                await usage_rows.add_call(conn, session_id, usage)
        return bool(status == "UPDATE 1")
